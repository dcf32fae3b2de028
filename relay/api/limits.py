"""Request body limit, enforced on the bytes actually received (streamed bodies included)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.api.errors import problem
from relay.errors import PayloadTooLarge


def _too_large(most: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The body is larger than {most} bytes.")


class BodyLimit:
    """Pure ASGI middleware: 413 when Content-Length or the streamed body exceeds the limit
    (`max_bytes`, or for a path of `larger` its own)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, larger: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = dict(larger or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        most = self.larger.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > most:
                await problem(_too_large(most))(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > most:
                    # Raised into whoever reads the body; the error handlers render it as 413.
                    raise _too_large(most)
            return message

        await self.app(scope, limited, send)
