"""The SSRF guard where connections are made: no request ever reaches a private canary."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from relay.sender import Sender, _CheckedResolver
from relay.ssrf import AddressPolicy
from tests.receivers import Receiver, Reply

GUARD = AddressPolicy(allow_private=False, allowed_cidrs=())


def _spellings(port: int) -> list[str]:
    hosts = [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "0x7f000001",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "2130706433",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "[64:ff9b::7f00:1]",
        "[::127.0.0.1]",
        "[2002:7f00:1::]",
        "localhost",
        "LOCALHOST.",
        "api.localhost",
        "0.0.0.0",
        "0",
    ]
    return [f"http://{host}:{port}/hook" for host in hosts]


async def test_no_spelling_of_loopback_gets_a_connection() -> None:
    async with Receiver() as canary, Sender(2.0, 8, "relay/test", GUARD.allows) as sender:
        targets = _spellings(canary.port)
        results = [await sender.send(url, b"{}", {}) for url in targets]
    print(f"SSRF matrix: {len(targets)} targets tried, {canary.connections} connections reached")
    assert canary.connections == 0
    for url, result in zip(targets, results, strict=True):
        assert result.status_code is None and result.error, url


class _RebindingResolver(AbstractResolver):
    """A DNS answer with a public address first and loopback second."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        def answer(ip: str) -> ResolveResult:
            return {
                "hostname": host,
                "host": ip,
                "port": port,
                "family": family,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }

        return [answer("93.184.216.34"), answer("127.0.0.1")]

    async def close(self) -> None: ...


async def test_a_name_answering_public_then_loopback_is_refused() -> None:
    # Judged at the resolver the sender's connector uses, so that not even the public answer
    # is ever dialled from a test: one disallowed answer refuses the whole host.
    resolver = _CheckedResolver(_RebindingResolver(), GUARD.allows)
    with pytest.raises(Exception, match=r"blocked: rebind\.example resolves to a disallowed"):
        await resolver.resolve("rebind.example", 443)


async def test_a_redirect_to_loopback_is_never_followed() -> None:
    async with Receiver() as allowed, Receiver() as canary:
        allowed.answer(Reply(302, headers={"location": canary.url("/metadata")}))
        trusted = AddressPolicy(False, (ipaddress.ip_network("127.0.0.1/32"),))
        async with Sender(2.0, 8, "relay/test", trusted.allows) as sender:
            result = await sender.send(allowed.url("/hook"), b"{}", {})
    assert result.status_code == 302
    assert canary.connections == 0
