"""Request bodies in, `{"data": ...}` out: one object as `{"data": {...}}`, a list as
`{"data": [...], "next_cursor": ...}` (the README's API section)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
import pydantic
from starlette.requests import Request
from starlette.responses import Response

from relay.errors import Invalid, UnsupportedMediaType
from relay.validation import MAX_JSON_DEPTH, check_depth, parse_object, too_deep

M = TypeVar("M", bound=pydantic.BaseModel)


async def read_json(request: Request) -> Any:
    """The JSON body, `{}` when empty; 415 for another media type, 422 when malformed."""
    raw = await request.body()
    if not raw.strip():
        return {}
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType("Send the body as application/json.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):  # orjson's own ceiling, far above relay's
            raise too_deep() from None
        raise Invalid("The body is not valid JSON.", {"body": [str(exc)]}) from None
    # A body with no more brackets than the limit cannot nest deeper: counting them in the raw
    # bytes costs far less than walking what they parsed to.
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH:
        check_depth(body)
    return body


async def read_model(request: Request, model: type[M], context: dict[str, Any] | None = None) -> M:
    """The JSON body validated against `model` (errors name each field)."""
    return parse_object(model, await read_json(request), context=context)


def _answer(value: object) -> object:
    # Answer models (relay.api.shapes.Shape) under their JSON names, with the fields their domain
    # object or record has (an optional one it lacks stays absent); everything else is plain
    # JSON, dataclasses included (orjson writes their fields in order).
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(by_alias=True, exclude_unset=True)
    raise TypeError(f"{type(value).__name__} is not an answer")


def ok(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A single object: `{"data": {...}}`."""
    body = orjson.dumps({"data": data}, default=_answer)
    return Response(body, status, headers, "application/json")


def listing(items: list[Any], next_cursor: str | None) -> Response:
    """A page: `{"data": [...], "next_cursor": ...}`."""
    body = orjson.dumps({"data": items, "next_cursor": next_cursor}, default=_answer)
    return Response(body, 200, media_type="application/json")
