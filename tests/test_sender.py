"""The sender against real HTTP receivers on loopback: what it sends, and what it reports back."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from relay.sender import IPAddress, Sender, _CheckedResolver
from tests.receivers import Receiver, Reply, closed_port

UA = "relay/test"


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    async with Receiver() as receiver:
        yield receiver


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    async with Sender(timeout=5, max_connections=8, user_agent=UA) as s:
        yield s


def _deny_all(ip: IPAddress) -> bool:
    return False


async def test_posts_the_exact_body_and_headers(rx: Receiver, sender: Sender) -> None:
    rx.answer(Reply(status=200, body=b"thanks"))
    body = b'{"id": "evt_1", "data": {"n": "\xc3\xa9"}}\x00\xff'
    headers = {"content-type": "application/json", "X-Custom": "v", "webhook-id": "evt_1"}

    result = await sender.send(rx.url("/hook?x=1"), body, headers)

    assert (result.status_code, result.error, result.ok) == (200, None, True)
    assert result.response_body == "thanks"
    [request] = rx.requests
    assert (request.method, request.path, request.body) == ("POST", "/hook?x=1", body)
    assert request.headers["user-agent"] == UA
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-custom"] == "v"
    assert request.headers["webhook-id"] == "evt_1"


async def test_user_agent_cannot_be_replaced_by_caller_headers(
    rx: Receiver, sender: Sender
) -> None:
    await sender.send(rx.url(), b"{}", {"User-Agent": "someone-else/1"})

    [request] = rx.requests
    assert request.headers["user-agent"] == UA


async def test_identity_encoding_is_asked_for_whatever_the_caller_says(
    rx: Receiver, sender: Sender
) -> None:
    await sender.send(rx.url(), b"{}", {"Accept-Encoding": "gzip, br"})

    [request] = rx.requests
    assert request.headers["accept-encoding"] == "identity"


async def test_an_encoded_answer_is_kept_raw_and_said_to_be_encoded(
    rx: Receiver, sender: Sender
) -> None:
    rx.answer(Reply(headers={"content-encoding": "gzip"}, body=gzip.compress(b"a" * 100_000)))

    result = await sender.send(rx.url(), b"{}", {})

    assert result.ok and result.error is None
    kept = len(gzip.compress(b"a" * 100_000))
    assert result.response_body == f"[{kept} bytes with content-encoding 'gzip', not decoded]"


async def test_server_error_is_reported_as_its_status(rx: Receiver, sender: Sender) -> None:
    rx.answer(Reply(status=500, body=b"boom"))

    result = await sender.send(rx.url(), b"{}", {})

    assert (result.status_code, result.ok, result.error) == (500, False, None)
    assert result.response_body == "boom"


async def test_redirect_is_not_followed(rx: Receiver, sender: Sender) -> None:
    rx.answer(Reply(status=302, headers={"location": rx.url("/target")}), path="/hook")
    rx.answer(Reply(status=200), path="/target")

    result = await sender.send(rx.url("/hook"), b"{}", {})
    await asyncio.sleep(0.1)  # room for a follow-up request, if one were coming

    assert (result.status_code, result.ok) == (302, False)
    assert rx.requests_to("/target") == []
    assert len(rx.requests) == 1


async def test_response_body_is_capped_at_4_kib_and_the_rest_dropped(
    rx: Receiver, sender: Sender
) -> None:
    rx.answer(Reply(body=b"x" * (1024 * 1024)))

    first = await sender.send(rx.url(), b"{}", {})
    second = await sender.send(rx.url(), b"{}", {})

    assert first.ok and second.ok
    assert first.response_body == "x" * 4096
    # The unread megabyte made the first connection unusable, so it was closed, not pooled.
    assert rx.connections == 2


async def test_small_responses_reuse_the_connection(rx: Receiver, sender: Sender) -> None:
    rx.answer(Reply(body=b"ok"))

    for _ in range(3):
        assert (await sender.send(rx.url(), b"{}", {})).ok

    assert rx.connections == 1


async def test_capped_body_is_decoded_leniently(rx: Receiver, sender: Sender) -> None:
    rx.answer(Reply(body="é".encode() * 4000))

    result = await sender.send(rx.url(), b"{}", {})

    assert result.response_body == "é" * 2048


async def test_receiver_slower_than_the_timeout_is_a_timeout(rx: Receiver) -> None:
    rx.answer(Reply(delay=3))

    async with Sender(timeout=0.5, max_connections=2, user_agent=UA) as sender:
        result = await sender.send(rx.url(), b"{}", {})

    assert result.status_code is None
    assert result.error == "timeout after 0.5s"
    assert 450 <= result.duration_ms <= 1500


async def test_slowly_dripped_body_cannot_outlast_the_timeout(rx: Receiver) -> None:
    rx.answer(Reply(body=b"y" * 100, drip=0.1))

    async with Sender(timeout=0.5, max_connections=2, user_agent=UA) as sender:
        result = await sender.send(rx.url(), b"{}", {})

    # The 200 arrived in time, so the delivery counts; only the body capture was cut short.
    assert (result.status_code, result.ok) == (200, True)
    assert result.error is not None and "timeout" in result.error
    assert 450 <= result.duration_ms <= 1500
    assert 0 < len(result.response_body) < 100


async def test_closed_port_is_connection_refused(sender: Sender) -> None:
    result = await sender.send(f"http://127.0.0.1:{closed_port()}/", b"{}", {})

    assert (result.status_code, result.ok) == (None, False)
    assert result.error == "connection refused"


async def test_non_http_url_is_an_error_not_an_exception(sender: Sender) -> None:
    result = await sender.send("ftp://127.0.0.1/x", b"{}", {})

    assert result.status_code is None
    assert result.error is not None and "scheme" in result.error


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_disallowed_address_is_never_connected_to(rx: Receiver, host: str) -> None:
    async with Sender(timeout=5, max_connections=2, user_agent=UA, address_check=_deny_all) as s:
        result = await s.send(rx.url(host=host), b"{}", {})
    await asyncio.sleep(0.1)  # room for a late connection, if one were made

    assert result.status_code is None
    assert result.error is not None and result.error.startswith(f"blocked: {host} ")
    assert rx.connections == 0


async def test_allowed_hostname_is_checked_by_its_resolved_address(rx: Receiver) -> None:
    seen: list[IPAddress] = []

    def check(ip: IPAddress) -> bool:
        seen.append(ip)
        return True

    async with Sender(timeout=5, max_connections=2, user_agent=UA, address_check=check) as s:
        result = await s.send(rx.url(host="localhost"), b"{}", {})

    assert result.ok
    assert ipaddress.ip_address("127.0.0.1") in seen


async def test_one_disallowed_answer_refuses_the_whole_host() -> None:
    class TwoAnswers(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return [
                ResolveResult(hostname=host, host=ip, port=port, family=2, proto=6, flags=0)
                for ip in ("127.0.0.1", "127.0.0.2")
            ]

        async def close(self) -> None:
            pass

    resolver = _CheckedResolver(TwoAnswers(), lambda ip: str(ip) != "127.0.0.2")

    with pytest.raises(Exception, match=r"^blocked: rebind\.test resolves to a disallowed"):
        await resolver.resolve("rebind.test", 80)


async def test_retry_after_is_surfaced(rx: Receiver, sender: Sender) -> None:
    rx.answer(Reply(status=429, headers={"Retry-After": "120"}))
    limited = await sender.send(rx.url(), b"{}", {})
    rx.answer(Reply(status=503))
    plain = await sender.send(rx.url(), b"{}", {})

    assert (limited.status_code, limited.retry_after) == (429, "120")
    assert (plain.status_code, plain.retry_after) == (503, None)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_cookies_are_never_carried_between_sends(
    rx: Receiver, sender: Sender, host: str
) -> None:
    rx.answer(Reply(headers={"set-cookie": "session=abc; Path=/"}))

    await sender.send(rx.url(host=host), b"{}", {})
    await sender.send(rx.url(host=host), b"{}", {})

    assert [r.headers.get("cookie") for r in rx.requests] == [None, None]


async def test_many_concurrent_sends_share_a_bounded_pool(rx: Receiver) -> None:
    rx.answer(Reply(delay=0.01))

    async with Sender(timeout=10, max_connections=16, user_agent=UA) as sender:
        results = await asyncio.gather(
            *(sender.send(rx.url(f"/{i}"), b"{}", {}) for i in range(200))
        )

    assert all(r.ok for r in results), {r.error for r in results}
    assert sorted(r.path for r in rx.requests) == sorted(f"/{i}" for i in range(200))
    assert 1 < rx.max_open_connections <= 16
