"""The API reference at /docs: Swagger UI 5 over /openapi.json, under the console's policy.

Swagger UI comes from the swagger-ui-py package (its release is pinned by requirements.lock);
relay serves those files itself, so the page needs no CDN, and its own page and start-up script
are files too, so the console's Content-Security-Policy holds (scripts and styles from this
origin only, no inline script, no eval), with `data:` images besides.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from relay.api.console import Secured, policy

PAGE = Path(__file__).resolve().parent.parent / "docs"


def _swagger_ui() -> Path:
    """Swagger UI's distribution files as swagger-ui-py ships them.

    Found, not imported: the package's framework glue would load jinja2 and PyYAML, and
    serving its files needs neither.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed; reinstall relay")
    return Path(spec.submodule_search_locations[0]) / "static"


def docs_routes() -> list[BaseRoute]:
    """/docs (the page), its start-up script and Swagger UI's files under /docs/static."""
    # Nobody needs to frame the reference, whoever may frame the console. Swagger UI's style
    # sheet draws its small arrows as `data:` SVG images: inert pictures, allowed as such.
    headers = policy("'none'", img_src="'self' data:")

    async def page(_: Request) -> Response:
        return FileResponse(PAGE / "index.html", headers=headers, media_type="text/html")

    async def script(_: Request) -> Response:
        return FileResponse(PAGE / "docs.js", headers=headers, media_type="text/javascript")

    return [
        Route("/docs", page),
        Route("/docs/docs.js", script),
        Mount("/docs/static", Secured(StaticFiles(directory=_swagger_ui()), headers)),
    ]
