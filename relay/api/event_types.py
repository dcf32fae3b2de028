"""/v1/event-types: the catalogue of event types; admins register and change their own."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema
from starlette.requests import Request
from starlette.responses import Response

from relay.api.bodies import listing, ok, read_model
from relay.api.idempotency import commit
from relay.api.routing import ADMIN, ANY_ROLE, Operation, Param
from relay.api.shapes import Shape
from relay.api.trail import Audit
from relay.event_types import (
    NAME_PATTERN,
    RegisteredType,
    apply_change,
    catalog,
    check_registrable,
    check_schema,
    register,
)
from relay.event_types import EventType as BuiltinType
from relay.resources import resources
from relay.tokens import Principal
from relay.validation import Patch

NAME = (Param("name", "path", schema={"type": "string", "pattern": NAME_PATTERN}),)

DataSchema = Annotated[
    dict[str, Any],
    AfterValidator(check_schema),
    WithJsonSchema({"type": "object", "description": "JSON Schema (draft 2020-12) of `data`"}),
]
TypeName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
TypeDescription = Annotated[str, StringConstraints(max_length=1024)]


class EventTypeSpec(BaseModel):
    """`POST /v1/event-types`: a new type, and the JSON Schema its events' data must match."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)

    name: TypeName
    description: TypeDescription = ""
    data_schema: DataSchema = Field(alias="schema")


class EventTypeChange(Patch):
    """`PATCH /v1/event-types/{name}`: only the fields present change."""

    model_config = ConfigDict(extra="forbid", strict=True)

    description: TypeDescription | None = None
    data_schema: DataSchema | None = Field(None, alias="schema")
    deprecated: bool | None = None


class EventType(Shape):
    """An event type relay accepts, and the JSON Schema its events' data must match."""

    source = (BuiltinType, RegisteredType)

    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    description: str
    data_schema: dict[str, Any] = Field(
        alias="schema", description="JSON Schema of the event's data"
    )
    example: dict[str, Any] | None
    deprecated: bool
    builtin: bool = Field(description="Built into relay (fixed) rather than registered")


async def event_types(request: Request, _: Principal) -> Response:
    """The event types relay accepts: the built-in ones, then those registered, with schemas."""
    registered = await resources(request).event_types.all()
    return listing([EventType.read(t) for t in catalog(registered)], None)


async def create_event_type(request: Request, _: Principal) -> Response:
    """Register an event type with the JSON Schema its events' data must match."""
    spec = await read_model(request, EventTypeSpec)
    event_type = register(spec.name, spec.description, spec.data_schema)
    await resources(request).event_types.add(event_type, commit(_registered))
    return _registered(event_type)


async def update_event_type(request: Request, _: Principal) -> Response:
    """Change a registered type's description or schema, or (un)deprecate it."""
    name = request.path_params["name"]
    check_registrable(name)
    changes = (await read_model(request, EventTypeChange)).changes()
    event_type = await resources(request).event_types.change(
        name, lambda current: apply_change(current, changes), commit(_shown)
    )
    return _shown(event_type)


def _registered(event_type: RegisteredType) -> Response:
    return ok(EventType.read(event_type), 201)


def _shown(event_type: RegisteredType) -> Response:
    return ok(EventType.read(event_type))


OPERATIONS = [
    Operation(
        "GET",
        "/v1/event-types",
        event_types,
        "List event types and their schemas",
        ANY_ROLE,
        "events",
        answers=EventType,
        list_of=True,
    ),
    Operation(
        "POST",
        "/v1/event-types",
        create_event_type,
        "Register an event type",
        ADMIN,
        "events",
        answers=EventType,
        body=EventTypeSpec,
        status=201,
        audit=Audit("event_type.create", object_field="name"),
    ),
    Operation(
        "PATCH",
        "/v1/event-types/{name}",
        update_event_type,
        "Change or deprecate a registered event type",
        ADMIN,
        "events",
        answers=EventType,
        body=EventTypeChange,
        params=NAME,
        audit=Audit("event_type.update", object_field="name"),
    ),
]
