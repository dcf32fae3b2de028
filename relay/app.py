"""The Starlette application, built explicitly from settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from relay import tasks, tracing
from relay.api import audit, deliveries, event_types, events, ops, stats, tokens, webhooks
from relay.api.console import console_routes
from relay.api.docs import docs_routes
from relay.api.errors import EXCEPTION_HANDLERS
from relay.api.limits import BodyLimit
from relay.api.openapi import build as build_openapi
from relay.api.request_log import RequestLog
from relay.api.routing import Operation, routes
from relay.config import Settings
from relay.presence import flush, keep_announcing
from relay.resources import Resources

OPERATIONS: list[Operation] = [
    *tokens.OPERATIONS,
    *audit.OPERATIONS,
    *event_types.OPERATIONS,
    *events.OPERATIONS,
    *webhooks.OPERATIONS,
    *deliveries.OPERATIONS,
    *stats.OPERATIONS,
]


class _Relay(Starlette):
    """Starlette with the request id and trace outside its error middleware.

    Starlette's outermost layer renders unhandled errors; wrapping it puts the request id (and
    the span) on every response, a 500 included.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return tracing.asgi(RequestLog(super().build_middleware_stack(), self))


def create_app(settings: Settings) -> Starlette:
    """The API app; its lifespan opens and closes the process's resources."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.resources = Resources.open(settings)
        # Like the worker: start serving once PostgreSQL answers with the schema this release
        # knows; another version stops the start-up, naming `relay migrate`.
        await app.state.resources.database.wait()
        counting = asyncio.create_task(
            keep_announcing(app.state.resources.redis, None, app.state.resources.counts)
        )
        try:
            yield
        finally:
            await tasks.cancel([counting])
            await flush(app.state.resources.redis, None, app.state.resources.counts)
            await app.state.resources.aclose()

    app = _Relay(
        routes=[
            # Starlette tries each route's pattern in turn until one matches: the routes most
            # requests take go first (the paths of the others overlap none of them).
            *routes(sorted(OPERATIONS, key=lambda op: (op.method, op.path) not in events.INGEST)),
            *ops.ops_routes(),
            *console_routes(settings.console_frame_ancestors),
            *docs_routes(),
        ],
        middleware=[
            Middleware(
                BodyLimit,
                max_bytes=settings.max_body_bytes,
                larger={events.BATCH_PATH: settings.max_batch_body_bytes},
            )
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # Starlette answers `/v1/webhooks/` with a 307 to `/v1/webhooks`: a client that does not
    # follow it with its body gets no problem+json, and one that does may post twice. A path
    # that is not a route is a 404 like any other unknown path.
    app.router.redirect_slashes = False
    app.state.openapi = build_openapi(OPERATIONS)
    return app
