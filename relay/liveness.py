"""A worker's liveness: its claim loop beats at every turn, and a small HTTP server answers
`GET /healthz` 200 while the last beat is recent, 503 once the loop is stuck.

The loop turns at least once a second when idle, after each backoff while Redis is away, and
whenever an attempt in flight ends when all its slots are taken: a Redis or PostgreSQL outage
keeps it turning, so only a worker that is truly stuck fails the check and is restarted. Until
the loop first turns (the worker still waits for Redis and PostgreSQL, logging each try) it
counts as alive.
"""

from __future__ import annotations

import asyncio
import json
import time

# What a probe may send before its request line and headers are read in full.
_REQUEST_LIMIT = 8192
_READ_SECONDS = 2.0


class Heartbeat:
    """When the claim loop last turned, and how long it may go without turning."""

    __slots__ = ("_last", "stuck_after")

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after
        self._last: float | None = None

    def beat(self) -> None:
        """The loop turned."""
        self._last = time.monotonic()

    def silent_for(self) -> float:
        """Seconds since the loop last turned (0 before it first did)."""
        return 0.0 if self._last is None else time.monotonic() - self._last

    def stuck(self) -> bool:
        """Whether the loop has not turned for longer than it ever should."""
        return self.silent_for() > self.stuck_after


def _answer(heartbeat: Heartbeat, request_line: bytes) -> tuple[str, dict[str, object]]:
    method, _, rest = request_line.decode("latin-1").partition(" ")
    path = rest.partition(" ")[0]
    if method != "GET" or path != "/healthz":
        return "404 Not Found", {"status": "not_found", "detail": "Only GET /healthz is served."}
    silent = round(heartbeat.silent_for(), 1)
    if heartbeat.stuck():
        detail = f"the claim loop has not turned for {silent} s (limit {heartbeat.stuck_after} s)"
        return "503 Service Unavailable", {"status": "stuck", "detail": detail}
    return "200 OK", {"status": "ok", "claim_loop_silent_seconds": silent}


async def serve(heartbeat: Heartbeat, port: int) -> asyncio.Server:
    """Answer `GET /healthz` on `port`, on every interface, until the server is closed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body = _answer(heartbeat, head.partition(b"\r\n")[0])
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a probe that hung up or sent no request: nothing to answer
        finally:
            writer.close()

    return await asyncio.start_server(handle, host=None, port=port, limit=_REQUEST_LIMIT)
