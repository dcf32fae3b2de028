"""The console at /console: static files from the package, under a strict Content-Security-Policy.

The page is plain ES modules that call the JSON API with a bearer token, so it needs no build
step, no CDN and no server-side rendering; CSP allows scripts and styles from this origin only
(no inline script, no eval) and lets only RELAY_CONSOLE_FRAME_ANCESTORS embed it.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

ASSETS = Path(__file__).resolve().parent.parent / "console"


def policy(frame_ancestors: str, img_src: str = "'self'") -> dict[str, str]:
    """The headers every console response carries."""
    csp = (
        f"default-src 'none'; script-src 'self'; style-src 'self'; img-src {img_src}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; "
        f"frame-ancestors {frame_ancestors}"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


class Secured:
    """Adds the console's headers to every response of the wrapped ASGI app."""

    def __init__(self, app: StaticFiles, headers: dict[str, str]) -> None:
        self._app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self._headers]
            await send(message)

        await self._app(scope, receive, send_secured)


def console_routes(frame_ancestors: str) -> list[BaseRoute]:
    """/console (the page) and /console/assets (its scripts and styles)."""
    headers = policy(frame_ancestors)

    async def page(_: Request) -> Response:
        return FileResponse(ASSETS / "index.html", headers=headers, media_type="text/html")

    async def slash(_: Request) -> Response:
        return RedirectResponse("/console", 308)

    return [
        Route("/console", page),
        Route("/console/", slash),
        Mount("/console/assets", Secured(StaticFiles(directory=ASSETS), headers)),
    ]
