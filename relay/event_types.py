"""The event-type catalog: each type's data model, JSON Schema and sample, declared once."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from types import MappingProxyType
from typing import Annotated, Any
from urllib.parse import unquote

import jsonschema
import orjson
from jsonschema import Draft202012Validator
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
)

from relay.errors import Conflict, Invalid
from relay.timefmt import now, read_rfc3339, rfc3339
from relay.validation import JSON_INT, MAX_INT, MIN_INT, integral, parse

# RFC 6838 type/subtype, optionally followed by parameters such as `; charset=utf-8`. Python and
# JSON Schema (ECMA-262) regexes must read it alike, so no `\s` or `.`: their meanings differ.
_MIME = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*([ \t]*;[\t -~]*)?$"


def _id(value: object) -> str | int:
    # Upstreams key their objects by database integers or by opaque strings; both are delivered
    # as sent. One check instead of a pydantic union keeps the error at `data.<field>`.
    value = integral(value)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValueError("Must be a non-empty string or an integer.")
    if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
        raise ValueError(f"An integer must be from {MIN_INT} to {MAX_INT}.")
    return value


def _timestamp(value: str) -> str:
    # Checked, never converted: subscribers receive the upstream's own string.
    if read_rfc3339(value) is None:
        raise ValueError("Must be an RFC 3339 timestamp, e.g. 2024-05-01T12:00:00Z.")
    return value


def _mime(value: str) -> str:
    if not re.fullmatch(_MIME, value):
        raise ValueError("Must be a media type such as image/jpeg.")
    return value


_Text = Annotated[str, StringConstraints(min_length=1)]
_Id = Annotated[
    str | int,
    PlainValidator(_id),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "integer", "minimum": MIN_INT, "maximum": MAX_INT},
            ]
        }
    ),
]
_Timestamp = Annotated[
    str, AfterValidator(_timestamp), WithJsonSchema({"type": "string", "format": "date-time"})
]
_Mime = Annotated[str, AfterValidator(_mime), WithJsonSchema({"type": "string", "pattern": _MIME})]
_Count = Annotated[int, Field(ge=0, le=MAX_INT), JSON_INT]


class _Data(BaseModel):
    # Extra fields are the upstream's to add and the subscriber's to read; strict so that the
    # schema's types are the types subscribers actually receive (no "1" accepted as 1).
    model_config = ConfigDict(extra="allow", strict=True)


class PostPublished(_Data):
    """Data of `post.published`."""

    post_id: _Id
    published_at: _Timestamp | None = None
    account_id: _Id | None = None
    platform: _Text | None = None
    url: _Text | None = None


class PostError(_Data):
    """Why a post failed: a human-readable message and an optional machine-readable code."""

    message: str
    code: str | None = None


class PostFailed(_Data):
    """Data of `post.failed`."""

    post_id: _Id
    error: PostError
    platform: _Text | None = None
    failed_at: _Timestamp | None = None


class MediaUploaded(_Data):
    """Data of `media.uploaded`."""

    media_id: _Id
    url: _Text
    mime: _Mime
    size: _Count | None = None
    width: _Count | None = None
    height: _Count | None = None
    alt: str | None = None


@dataclass(frozen=True, slots=True)
class EventType:
    """One kind of event: its name, what it means, the shape of its data and a sample of it."""

    name: str
    description: str
    model: type[BaseModel]
    schema: dict[str, Any]
    sample: dict[str, object]

    @property
    def example(self) -> dict[str, object]:
        """What the catalog shows as an example of its data: the sample."""
        return self.sample

    @property
    def deprecated(self) -> bool:
        """Never: a built-in type is relay's own."""
        return False

    @property
    def builtin(self) -> bool:
        """Always."""
        return True


def _declare(
    name: str, description: str, model: type[BaseModel], sample: dict[str, object]
) -> EventType:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(),
    }
    return EventType(name, description, model, schema, sample)


EVENT_TYPES: Mapping[str, EventType] = MappingProxyType(
    {
        t.name: t
        for t in (
            _declare(
                "post.published",
                "A post went live on a platform.",
                PostPublished,
                {
                    "post_id": "post_8f3k2q",
                    "published_at": "2024-05-01T12:00:00Z",
                    "account_id": "acct_42",
                    "platform": "instagram",
                    "url": "https://www.instagram.com/p/C6aB3xYz/",
                },
            ),
            _declare(
                "post.failed",
                "A post could not be published; `error` says why.",
                PostFailed,
                {
                    "post_id": "post_8f3k2q",
                    "error": {"message": "The access token has expired.", "code": "token_expired"},
                    "platform": "linkedin",
                    "failed_at": "2024-05-01T12:00:03Z",
                },
            ),
            _declare(
                "media.uploaded",
                "A media file finished uploading and can be attached to posts.",
                MediaUploaded,
                {
                    "media_id": "med_51xk7",
                    "url": "https://cdn.example.com/media/med_51xk7.jpg",
                    "mime": "image/jpeg",
                    "size": 482113,
                    "width": 1080,
                    "height": 1350,
                    "alt": "The team at the spring offsite",
                },
            ),
        )
    }
)


# Registered types are named like the built-in ones: lower-case dotted words.
NAME_PATTERN = r"^[a-z0-9_-]{1,64}(\.[a-z0-9_-]{1,64}){0,7}$"
# A webhook filter `prefix.*` takes every type whose name starts with `prefix.`.
WILDCARD_PATTERN = r"^[a-z0-9_-]{1,64}(\.[a-z0-9_-]{1,64}){0,6}\.\*$"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _local_refs_only(node: object) -> None:
    # A remote $ref would make relay fetch a URL while validating an event: refused up front.
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            raise ValueError("Only local $ref values (starting with '#') are allowed.")
        for value in node.values():
            _local_refs_only(value)
    elif isinstance(node, list):
        for value in node:
            _local_refs_only(value)


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, if it may be registered: valid draft 2020-12, local `$ref`s, no loops."""
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"Not a valid JSON Schema (draft 2020-12): {exc.message}") from None
    _local_refs_only(schema)
    if _loops_in_place(schema):
        raise ValueError("A $ref leads back to itself without going into the data.")
    return schema


# Keywords whose subschemas apply to the same value as their own schema, not to a part of it.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")


def _loops_in_place(schema: dict[str, Any]) -> bool:
    """Whether some `$ref` leads back where it started without going into the data.

    Validating any value that reaches such a loop recurses without end, and where Python's
    recursion limit then strikes (in jsonschema, or in the compiled code its reference registry
    calls) is not something to rely on: the loop is found in the schema itself, before any data
    is checked. Iterative, so that a deep schema cannot meet the recursion it guards against.
    """
    nodes: list[dict[str, Any]] = []
    anchors: dict[str, dict[str, Any]] = {}
    pending: list[object] = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            nodes.append(node)
            for keyword in ("$anchor", "$dynamicAnchor"):
                if isinstance(name := node.get(keyword), str):
                    anchors.setdefault(name, node)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)

    def in_place(node: dict[str, Any]) -> list[dict[str, Any]]:
        found = [node.get(k) for k in _IN_PLACE_ONE]
        found += [s for k in _IN_PLACE_MANY if isinstance(node.get(k), list) for s in node[k]]
        if isinstance(node.get("dependentSchemas"), dict):
            found += node["dependentSchemas"].values()
        found += [_target(schema, anchors, node.get(k)) for k in ("$ref", "$dynamicRef")]
        return [s for s in found if isinstance(s, dict)]

    # Depth-first from every subschema, keeping the path: a subschema met again on it is a loop.
    done: set[int] = set()
    for start in nodes:
        if id(start) in done:
            continue
        on_path = {id(start)}
        stack = [(start, iter(in_place(start)))]
        while stack:
            node, following = stack[-1]
            step = next(following, None)
            if step is None:
                stack.pop()
                on_path.discard(id(node))
                done.add(id(node))
            elif id(step) in on_path:
                return True
            elif id(step) not in done:
                on_path.add(id(step))
                stack.append((step, iter(in_place(step))))
    return False


def _target(schema: dict[str, Any], anchors: dict[str, dict[str, Any]], ref: object) -> object:
    """What a local `$ref` (`#`, `#/a/b`, `#name`) points at in `schema`; None if nothing."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    fragment = unquote(ref[1:])
    if not fragment.startswith("/"):
        return anchors.get(fragment) if fragment else schema
    node: object = schema
    for token in fragment[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(token)
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


@dataclass(frozen=True, slots=True)
class RegisteredType:
    """An event type an operator registered: validated by its JSON Schema, not by a model."""

    name: str
    description: str
    data_schema: dict[str, Any]
    deprecated: bool
    created_at: str
    updated_at: str

    def record(self) -> dict[str, object]:
        """What the store keeps."""
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> RegisteredType:
        """Rebuild from `record()`."""
        return cls(**data)

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON Schema its events' data must match, by the name built-in types give it."""
        return self.data_schema

    @property
    def example(self) -> None:
        """None: an operator registers a schema, not a sample."""
        return None

    @property
    def builtin(self) -> bool:
        """Never: registered."""
        return False


def check_registrable(name: str) -> None:
    """Refuse to register or change a built-in type: its rules are relay's own code."""
    if name in EVENT_TYPES:
        raise Conflict(f"{name} is built in; register a type of another name instead.")


def register(name: str, description: str, data_schema: dict[str, Any]) -> RegisteredType:
    """A new registered type (its schema checked by `check_schema`)."""
    check_registrable(name)
    stamp = rfc3339(now())
    return RegisteredType(name, description, data_schema, False, stamp, stamp)


def apply_change(event_type: RegisteredType, changes: dict[str, Any]) -> RegisteredType:
    """The type with a PATCH applied."""
    return replace(event_type, **changes, updated_at=rfc3339(now()))


@functools.lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Draft202012Validator:
    # Compiled once per distinct schema: a PATCHed schema is a new key, so it applies at once.
    return Draft202012Validator(orjson.loads(schema_json))


def _schema_errors(schema: dict[str, Any], data: object) -> dict[str, list[str]]:
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    errors: dict[str, list[str]] = {}
    try:
        found = list(validator.iter_errors(data))
    except RecursionError:
        # A schema stored before registration looked for `$ref` loops, that loops on this data.
        return {
            "data": ["The type's schema loops ($ref) on data of this shape; it cannot be checked."]
        }
    for err in found:
        path = ["data", *(str(p) for p in err.absolute_path)]
        if err.validator == "required" and isinstance(err.instance, dict):
            # jsonschema reports a missing field at its parent; name the field itself.
            for missing in err.validator_value:
                if missing not in err.instance:
                    errors.setdefault(".".join([*path, missing]), []).append("Field required")
            continue
        errors.setdefault(".".join(path), []).append(err.message)
    return errors


def is_wildcard(name: str) -> bool:
    """Whether a webhook filter is a `prefix.*` wildcard."""
    return re.fullmatch(WILDCARD_PATTERN, name) is not None


def validate_event(
    type_name: str, data: object, registered: RegisteredType | None = None
) -> dict[str, object]:
    """Check `data` against its type and return it as received, or raise `Invalid`.

    A built-in type is checked by its model; `registered`, the type of that name an operator
    registered (if any), by its JSON Schema.
    """
    event_type = EVENT_TYPES.get(type_name)
    if event_type is None and registered is None:
        known = ", ".join(EVENT_TYPES)
        raise Invalid(
            "Unknown event type.",
            {"type": [f"Unknown event type; known: {known} and those registered."]},
        )
    if not isinstance(data, dict):
        raise Invalid("The event data is not an object.", {"data": ["Must be a JSON object."]})
    if event_type is not None:
        parse(event_type.model, data, prefix="data")
    elif registered is not None:
        errors = _schema_errors(registered.data_schema, data)
        if errors:
            raise Invalid("The event data does not match its type's schema.", errors)
    # The model only checks: what is stored and sent is the upstream's JSON, key order, extra
    # fields and all, not the model's re-serialization of it.
    return data


def matches(filters: Sequence[str], type_name: str) -> bool:
    """Tell whether a webhook subscribed to `filters` receives events of `type_name`."""
    return (
        "*" in filters
        or type_name in filters
        or any(f.endswith(".*") and type_name.startswith(f[:-1]) for f in filters)
    )


def catalog(
    registered: Sequence[RegisteredType] = (),
) -> list[EventType | RegisteredType]:
    """Every event type as `GET /v1/event-types` lists it: built-in ones first."""
    return [*EVENT_TYPES.values(), *registered]


def envelope(event_id: str, type_name: str, tenant_id: str, data: object, timestamp: str) -> bytes:
    """The exact body every receiver gets for an event (the README's "What a receiver gets"),
    encoded once."""
    return orjson.dumps(
        {
            "id": event_id,
            "type": type_name,
            "timestamp": timestamp,
            "tenant_id": tenant_id,
            "data": data,
        }
    )
