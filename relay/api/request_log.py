"""Every request gets an id (the caller's `X-Request-Id`, or a new one) and one closing log line."""

from __future__ import annotations

import logging
import re
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay import logs, tracing
from relay.ids import new_id

HEADER = "x-request-id"
# A caller's id is echoed into headers and logs: only short, plain tokens are taken as they are.
_ACCEPTABLE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# Probes and scrapes arrive every few seconds from every replica's neighbours: not news.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

log = logging.getLogger("relay.http")


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == HEADER.encode() and _ACCEPTABLE.fullmatch(value):
            text: str = value.decode()
            return text
    return None


class RequestLog:
    """Pure ASGI middleware: sets the request id, returns it, and logs the finished request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = _incoming_id(scope) or new_id("req")
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(HEADER, rid)
            await send(message)

        with logs.scope(request_id=rid, trace_id=tracing.trace_id()):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                path: str = scope["path"]
                log.log(
                    logging.DEBUG if path in _QUIET_PATHS else logging.INFO,
                    "%s %s %d",
                    scope["method"],
                    path,
                    status,
                    extra={
                        "method": scope["method"],
                        "path": path,
                        "status_code": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    },
                )
