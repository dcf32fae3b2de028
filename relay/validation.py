"""Turning untrusted JSON into typed objects, with errors keyed by field path."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import pydantic

from relay.errors import Invalid

M = TypeVar("M", bound=pydantic.BaseModel)


def field_errors(exc: pydantic.ValidationError, prefix: str = "") -> dict[str, list[str]]:
    """Map pydantic's errors to `{"a.b.0": ["message", ...]}` as problem+json's `errors` wants."""
    out: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"]
        # pydantic prefixes custom ValueErrors; the field path already says where.
        msg = msg.removeprefix("Value error, ")
        out.setdefault(path or "body", []).append(msg)
    return out


def parse(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate `data` against `model` or raise `Invalid` naming every failing field."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise Invalid("The request has invalid fields.", field_errors(exc, prefix)) from exc


# Tenant ids come from upstream systems; kept to a charset safe in keys, logs and URLs.
TenantId = Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]
