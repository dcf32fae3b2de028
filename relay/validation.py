"""Turning untrusted JSON into typed objects, with errors keyed by field path."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, TypeVar

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


def parse(model: type[M], data: Any, prefix: str = "", context: dict[str, Any] | None = None) -> M:
    """Validate `data` against `model` or raise `Invalid` naming every failing field."""
    try:
        return model.model_validate(data, context=context)
    except pydantic.ValidationError as exc:
        raise Invalid("The request has invalid fields.", field_errors(exc, prefix)) from exc


def parse_object(model: type[M], data: Any, context: dict[str, Any] | None = None) -> M:
    """`data`, which must be a JSON object, validated against `model` (see `parse`)."""
    if not isinstance(data, dict):
        raise Invalid("The body must be a JSON object.", {"body": ["must be an object"]})
    return parse(model, data, context=context)


def _patch_schema(schema: dict[str, Any], model: type[Any]) -> None:
    # A field left out of a PATCH keeps its value, so there are no defaults; null is refused
    # everywhere but in NULLABLE, so it is no part of the other fields' schemas.
    for name, field in schema.get("properties", {}).items():
        field.pop("default", None)
        branches = field.get("anyOf", [])
        if name not in model.NULLABLE and {"type": "null"} in branches:
            (kept,) = [b for b in branches if b != {"type": "null"}]
            del field["anyOf"]
            field.update({**kept, **field})


class Patch(pydantic.BaseModel):
    """A PATCH body: only the fields present change, and null only where it is a value."""

    model_config = pydantic.ConfigDict(json_schema_extra=_patch_schema)

    # Fields for which null is a value ("none"); anywhere else null would erase a setting.
    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: object, info: pydantic.ValidationInfo) -> object:
        if value is None and info.field_name not in cls.NULLABLE:
            raise ValueError("Must not be null; leave the field out to keep its value.")
        return value

    def changes(self) -> dict[str, Any]:
        """Return the fields this update sets, with their new values."""
        return self.model_dump(exclude_unset=True)


# How deeply a request body may nest objects and arrays. Each layer a stored body passes through
# has a ceiling of its own: pydantic's JSON reader, which checks every answer against its shape,
# stops at 200 levels; orjson encodes at most 254 (and answers wrap a stored event or schema in a
# few more levels); jsonschema spends about eight Python frames on each level of a registered
# schema, so 1000 frames hold about 120 levels. A body refused at the door at 64 levels is held
# well inside all of them, so whatever relay accepts it can store, serve and check again.
MAX_JSON_DEPTH = 64


def check_depth(value: object) -> None:
    """Raise Invalid if `value` nests objects and arrays more than MAX_JSON_DEPTH deep."""
    # Level by level, not recursively: the check must not meet the recursion it guards against.
    level: list[dict[str, Any] | list[Any]] = [value] if isinstance(value, dict | list) else []
    for _ in range(MAX_JSON_DEPTH):
        if not level:
            return
        below: list[dict[str, Any] | list[Any]] = []
        for node in level:
            children = node.values() if isinstance(node, dict) else node
            below.extend(c for c in children if isinstance(c, dict | list))
        level = below
    if level:
        raise too_deep()


def too_deep() -> Invalid:
    """The 422 for a body nested deeper than MAX_JSON_DEPTH."""
    return Invalid(
        f"The body nests objects and arrays more than {MAX_JSON_DEPTH} levels deep.",
        {"body": [f"must nest at most {MAX_JSON_DEPTH} levels deep"]},
    )


# Tenant ids come from upstream systems; kept to a charset safe in keys, logs and URLs.
TenantId = Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]


# orjson reads integer literals in this range as ints, and larger ones as (inexact) floats: it
# is the range of integers a request can carry exactly.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
# Floats hold every integer up to 2**53 exactly; beyond, 2**53 + 1 would silently become 2**53.
_EXACT_IN_FLOAT = 2**53


def integral(value: object) -> object:
    """A float with no fraction (and exactly an integer) as that int; anything else unchanged."""
    # JSON has one number type: to JSON Schema (and JavaScript) 3.0 is the integer 3, so it is
    # read as one; 3.5 is still refused.
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_IN_FLOAT:
        return int(value)
    return value


# Annotates a strict int to read JSON's 3.0 as 3 (and still refuse "3" and true). It goes after
# the field's constraints: before them, pydantic leaves them out of the JSON Schema.
JSON_INT = pydantic.BeforeValidator(integral)
