"""The HTTP sender: one shared client per process that POSTs a body and reports what happened.

httpx's API over aiohttp's connection pool (`_Transport`): httpx's own pool collapses under
concurrency (about 1,100 sends/s at 4 in flight falling to 320/s at 64), aiohttp's does not.
Every address a hostname resolves to passes `address_check` before any connection is made, which
is where the SSRF guard plugs in; TLS still verifies the hostname, not the checked IP.

A receiver is untrusted: whatever it answers, one attempt holds at most the capture limit of
its body (raw bytes, never decompressed), within the attempt's timeout.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.http_exceptions import HttpProcessingError

from relay import tracing

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressCheck = Callable[[IPAddress], bool]

_MAX_HEAD_LINE_BYTES = 8190  # the status line, and each header of an answer
_MAX_RESPONSE_HEADERS = 128
_PARSED_URLS = 4096  # the webhooks a process sends to often enough to keep their URLs parsed


@dataclass(slots=True, frozen=True)
class SendResult:
    """What one POST produced.

    `error` says why no response arrived (then `status_code` is None), or why reading the
    captured start of its body was cut short (then the status stands: a 2xx in time is a delivery).
    """

    status_code: int | None
    duration_ms: int
    error: str | None
    response_body: str
    retry_after: str | None

    @property
    def ok(self) -> bool:
        """Tell whether the receiver answered with a 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


class _Refused(Exception):
    """The target is not one we may connect to; the message is the attempt's error."""


class _CheckedResolver(AbstractResolver):
    """Resolves like `inner`, but refuses a host when any of its addresses fails the check."""

    def __init__(self, inner: AbstractResolver, check: AddressCheck) -> None:
        self._inner = inner
        self._check = check

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host` and return its addresses only if every one of them is allowed."""
        answers = await self._inner.resolve(host, port, family)
        # One bad answer refuses the host: the connector may try any of them, in any order.
        if not all(self._check(ipaddress.ip_address(answer["host"])) for answer in answers):
            raise _Refused(f"blocked: {host} resolves to a disallowed address")
        return answers

    async def close(self) -> None:
        """Release the wrapped resolver."""
        await self._inner.close()


class Sender:
    """POSTs webhook bodies; one per process, shared by every delivery and test send."""

    def __init__(
        self,
        timeout: float,
        max_connections: int,
        user_agent: str,
        address_check: AddressCheck | None = None,
        capture_bytes: int = 4096,
        propagate_trace_context: bool = False,
    ) -> None:
        self._timeout = timeout
        self._capture_bytes = capture_bytes
        self._max_connections = max_connections
        # Built once, not per attempt. Only the start of a response is kept, so compression would
        # buy nothing; identity only asks: an encoded answer is never inflated (`_read_capped`).
        self._own_headers = [("user-agent", user_agent), ("accept-encoding", "identity")]
        self._own_names = frozenset(name for name, _ in self._own_headers)
        self._address_check = address_check
        # The transport calls the factory on first use, inside the loop aiohttp binds to.
        self._transport = _Transport(
            client=self._new_session,
            withheld=frozenset() if propagate_trace_context else tracing.context_headers(),
        )
        # Attempts go to the transport directly, below the client: an attempt wants none of its
        # cookie jar, redirects or auth, which cost CPU on every answer all the same. The client
        # stays as the transport's owner, where tracing instruments it.
        self._client = httpx.AsyncClient(transport=self._transport, trust_env=False)
        tracing.instrument(self._client)  # a client span per request, when tracing

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        """POST exactly `body` to `url`; network failures come back as `error`, never raised."""
        started = time.perf_counter()
        status: int | None = None
        retry_after: str | None = None
        captured = bytearray()
        encoding = "identity"
        error: str | None = None
        try:
            target = self._target(url)
            request = httpx.Request(
                "POST",
                target,
                stream=httpx.ByteStream(body),
                headers=self._headers(target, body, headers),
            )
            # The one bound of the whole attempt (aiohttp keeps no timer of its own here): the
            # pool wait, connecting and every read, so a body dripped byte by byte ends too.
            async with asyncio.timeout(self._timeout):
                response = await self._transport.handle_async_request(request)
                try:
                    status = response.status_code
                    retry_after, encoding = _answer_headers(response)
                    await _read_capped(response, captured, self._capture_bytes)
                finally:
                    await response.aclose()
        except (_Refused, httpx.HTTPError, httpx.InvalidURL, aiohttp.ClientError, OSError) as exc:
            error = _describe(exc, self._timeout, status)
        return SendResult(
            status_code=status,
            duration_ms=round((time.perf_counter() - started) * 1000),
            error=None if error is None else _storable(error),
            response_body=_storable(_shown(captured, encoding)),
            retry_after=retry_after,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _target(self, url: str) -> httpx.URL:
        """Parse `url`, refusing a non-HTTP URL or a disallowed IP literal before any connection.

        The request is built from this parse: the address checked is the address dialled.
        """
        parsed, literal = _parse(url)
        if parsed.scheme not in ("http", "https"):
            raise _Refused(f"unsupported url scheme {parsed.scheme!r}")
        # aiohttp never asks the resolver about IP literals, so they are checked here; a name's
        # addresses are checked as it resolves.
        if (
            literal is not None
            and self._address_check is not None
            and not self._address_check(literal)
        ):
            raise _Refused(f"blocked: {parsed.host} is a disallowed address")
        return parsed

    def _headers(
        self, target: httpx.URL, body: bytes, headers: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """The caller's headers, with the sender's own in place of any of the same names, after
        the two httpx would add from the URL and the body (given here, httpx's own preparing of
        a request took two thirds of building it)."""
        framing = [("host", target.netloc.decode("ascii")), ("content-length", str(len(body)))]
        return [
            *framing,
            *(
                (name, value)
                for name, value in headers.items()
                if name.lower() not in self._own_names
            ),
            *self._own_headers,
        ]

    def _new_session(self) -> aiohttp.ClientSession:
        resolver = (
            None
            if self._address_check is None
            else _CheckedResolver(aiohttp.ThreadedResolver(), self._address_check)
        )
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_connections,
            resolver=resolver,
            # The same CA bundle plain httpx uses, so TLS trust does not depend on the OS image.
            ssl=httpx.create_ssl_context(trust_env=False),
        )
        return aiohttp.ClientSession(
            connector=connector,
            # A receiver's cookie is never parsed, kept or sent: none reaches another receiver.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            # A receiver's answer head is bounded too (aiohttp's defaults, pinned here): longer
            # lines or more headers are a malformed response, refused before any is kept.
            max_line_size=_MAX_HEAD_LINE_BYTES,
            max_field_size=_MAX_HEAD_LINE_BYTES,
            max_headers=_MAX_RESPONSE_HEADERS,
        )


class _Transport(httpx.AsyncBaseTransport):
    """httpx's transport interface over an aiohttp session, as lean as one attempt allows.

    httpx-aiohttp's transport did the same with more per request: it converted every header
    through httpx's case-folding mapping, built a timeout object and an exception mapper per
    request, and read the answer in 16 KiB chunks through a wrapper; relay's sender paid about
    twice what plain aiohttp costs per attempt for it (`python -m bench`'s LIMIT). Errors come
    as aiohttp raises them: the sender describes them from the exception chain either way.

    The trace context headers tracing would add are withheld here: the client span's
    instrumentation wraps `handle_async_request` and adds them on the way in, so the span is
    still recorded and the receiver never sees it.
    """

    def __init__(
        self, client: Callable[[], aiohttp.ClientSession], withheld: frozenset[str]
    ) -> None:
        self._new_session = client
        self._session: aiohttp.ClientSession | None = None
        # None of aiohttp's own: the sender bounds the whole attempt (connecting, the pool wait
        # and every read included), which timers per read and per connect would only repeat.
        self._timeout = aiohttp.ClientTimeout()
        self._withheld = frozenset(name.lower().encode() for name in withheld)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            # Made on first use, inside the loop aiohttp binds to.
            self._session = self._new_session()
        # Latin-1 both ways, as HTTP/1.1 puts header bytes on the wire: no name or value changes.
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in self._withheld
        ]
        response = await self._session.request(
            request.method,
            str(request.url),
            headers=headers,
            data=request.read() or None,
            allow_redirects=False,
            auto_decompress=False,
            compress=False,
            timeout=self._timeout,
        )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Body(httpx.AsyncByteStream):
    """An answer's body as aiohttp reads it, in whatever chunks arrive."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def aclose(self) -> None:
        # Released unread, aiohttp closes the connection rather than pool it (see
        # `_read_capped`).
        self._response.release()
        await self._response.wait_for_close()


@functools.lru_cache(maxsize=_PARSED_URLS)
def _parse(url: str) -> tuple[httpx.URL, IPAddress | None]:
    """`url` parsed, and its host as an IP address when it is one.

    A webhook's every attempt goes to the same URL, so each is parsed once, not once per
    attempt; the checks on the result still run on every attempt. httpx.URL is immutable.
    """
    parsed = httpx.URL(url)
    try:
        return parsed, ipaddress.ip_address(parsed.host)
    except ValueError:
        return parsed, None


async def _read_capped(response: httpx.Response, into: bytearray, limit: int) -> None:
    """Append at most `limit` raw bytes of the body; the rest is never read.

    Raw: decoding a Content-Encoding would inflate each chunk whole before any cap applied, and
    a few hundred bytes of stacked gzip inflate to hundreds of megabytes.
    """
    if limit <= 0:
        return  # capture is off: not a byte of the body is read
    # The transport's stream itself: httpx's raw iterator adds only bookkeeping relay never reads.
    assert isinstance(response.stream, httpx.AsyncByteStream)
    async for chunk in response.stream:
        into += chunk[: limit - len(into)]
        if len(into) >= limit:
            # Leaving the stream unfinished makes aiohttp close the connection instead of
            # pooling it, so the unread rest is dropped rather than drained.
            return


def _answer_headers(response: httpx.Response) -> tuple[str | None, str]:
    """The answer's Retry-After (if any) and Content-Encoding, in one pass over its raw header
    lines (each by-name lookup of httpx's would decode them all again). A header sent more than
    once is its values joined by commas, as httpx reads it: `gzip` then `identity` is still an
    encoded body."""
    found: dict[bytes, list[str]] = {b"retry-after": [], b"content-encoding": []}
    for name, value in response.headers.raw:
        if (values := found.get(name.lower())) is not None:
            values.append(value.decode("latin-1"))
    retry_after = ", ".join(found[b"retry-after"]) or None
    return retry_after, ", ".join(found[b"content-encoding"]).strip() or "identity"


def _shown(captured: bytearray, encoding: str) -> str:
    """The captured body as the attempt log shows it: text, or a note that it is encoded."""
    if encoding.lower() not in ("", "identity") and captured:
        return f"[{len(captured)} bytes with content-encoding {encoding!r}, not decoded]"
    return bytes(captured).decode("utf-8", errors="replace")


def _storable(text: str) -> str:
    """`text` as history can keep it: PostgreSQL's text holds no NUL, which a receiver may
    answer (or an error may quote), so each becomes U+FFFD, as undecodable bytes do. Kept
    as it came, one such attempt would stop its writer's every batch from reaching history."""
    return text.replace("\x00", "\ufffd")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _describe(exc: BaseException, timeout: float, status: int | None) -> str:
    """A short reason for a failed attempt, found in the exception chain.

    aiohttp wraps what went wrong (a refused connection in `ClientConnectorError`, a timeout in
    its own class): the OS or parser error it chains, or the first class that says more, names it.
    """
    suffix = "" if status is None else " reading the response body"
    for cause in _causes(exc):
        if isinstance(cause, _Refused):
            return str(cause)
        if isinstance(cause, TimeoutError):
            return f"timeout after {timeout:g}s{suffix}"
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"tls certificate rejected: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"tls error: {cause.reason or cause}"
        if isinstance(cause, socket.gaierror):
            return f"dns lookup failed: {cause.strerror}"
        if isinstance(cause, HttpProcessingError):
            # aiohttp's parser refused the answer (status line, header sizes or count, framing);
            # its message's first phrase says which, the rest quotes the receiver's bytes.
            phrase = cause.message.split(":", 1)[0].strip() or "not HTTP/1.x"
            return f"malformed response: {phrase[:1].lower()}{phrase[1:]}{suffix}"
        if isinstance(cause, aiohttp.ServerDisconnectedError):
            return f"server disconnected{suffix}"
        if isinstance(cause, httpx.InvalidURL | aiohttp.InvalidURL):
            # Not the URL itself: this reason is logged, and a path or query may hold a secret.
            return "invalid url"
    *_, root = _causes(exc)
    return f"connection error: {str(root) or type(root).__name__}{suffix}"
