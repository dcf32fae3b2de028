"""Every request gets an id (the caller's `X-Request-Id`, or a new one), one closing log line,
and is counted for /metrics under its route."""

from __future__ import annotations

import logging
import re
import time

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay import logs, tracing
from relay.ids import new_id
from relay.metrics import count_request

HEADER = "x-request-id"
# A caller's id is echoed into headers and logs: only short, plain tokens are taken as they are.
_ACCEPTABLE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# Probes and scrapes arrive every few seconds from every replica's neighbours: not news.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

# The route of a request that matched none (a 404): one label for every such path.
UNMATCHED = "unmatched"

log = logging.getLogger("relay.http")


_HEADER = HEADER.encode()


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _HEADER and _ACCEPTABLE.fullmatch(value):
            text: str = value.decode()
            return text
    return None


def _templates(routes: list[BaseRoute]) -> dict[object, str]:
    """Each route's path template without convertors (`/v1/webhooks/{id}`), by the endpoint the
    router puts in the scope of its requests."""
    found: dict[object, str] = {}
    for route in routes:
        if isinstance(route, Route):
            found[route.endpoint] = route.path_format
        elif isinstance(route, Mount):
            found[route.app] = route.path_format + "/{path}"
    return found


class RequestLog:
    """Pure ASGI middleware: sets the request id, returns it, logs the finished request and
    counts it (the app's resources count it, once its lifespan has opened them)."""

    def __init__(self, app: ASGIApp, relay: Starlette) -> None:
        self.app = app
        self._relay = relay
        self._routes: dict[object, str] | None = None

    def _route(self, scope: Scope) -> str:
        if self._routes is None:
            self._routes = _templates(self._relay.routes)
        if "endpoint" not in scope:  # answered before routing (a body too large): match it now
            matched = (r.matches(scope) for r in self._relay.routes)
            scope = next((found for match, found in matched if match != Match.NONE), scope)
        return self._routes.get(scope.get("endpoint"), UNMATCHED)

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
                # As MutableHeaders.append would, without making one for each response.
                message["headers"] = [*message.get("headers", ()), (_HEADER, rid.encode())]
            await send(message)

        with logs.scope(request_id=rid, trace_id=tracing.trace_id()):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                path: str = scope["path"]
                seconds = time.perf_counter() - started
                svc = getattr(self._relay.state, "resources", None)
                if svc is not None:
                    count_request(svc.counts, scope["method"], self._route(scope), status, seconds)
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
                        "duration_ms": round(seconds * 1000, 1),
                    },
                )
