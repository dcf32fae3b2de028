"""/v1/event-types: the catalogue of event types; admins register and change their own."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from relay import events
from relay.api import shapes
from relay.api.bodies import listing, ok, read_model
from relay.api.idempotency import commit
from relay.api.routing import ADMIN, ANY_ROLE, Operation, Param
from relay.audit import Audit
from relay.events import EventTypeChange, EventTypeSpec, RegisteredType
from relay.resources import resources
from relay.tokens import Principal

NAME = (Param("name", "path", schema={"type": "string", "pattern": events.NAME_PATTERN}),)


async def event_types(request: Request, _: Principal) -> Response:
    """The event types relay accepts: the built-in ones, then those registered, with schemas."""
    registered = await resources(request).event_types.all()
    return listing(events.catalog(registered), None)


async def create_event_type(request: Request, _: Principal) -> Response:
    """Register an event type with the JSON Schema its events' data must match."""
    spec = await read_model(request, EventTypeSpec)
    event_type = events.register(spec)
    await resources(request).event_types.add(event_type, commit(_registered))
    return _registered(event_type)


async def update_event_type(request: Request, _: Principal) -> Response:
    """Change a registered type's description or schema, or (un)deprecate it."""
    name = request.path_params["name"]
    events.check_registrable(name)
    changes = (await read_model(request, EventTypeChange)).changes()
    event_type = await resources(request).event_types.change(
        name, lambda current: events.apply_change(current, changes), commit(_shown)
    )
    return _shown(event_type)


def _registered(event_type: RegisteredType) -> Response:
    return ok(event_type.public(), 201)


def _shown(event_type: RegisteredType) -> Response:
    return ok(event_type.public())


OPERATIONS = [
    Operation(
        "GET",
        "/v1/event-types",
        event_types,
        "List event types and their schemas",
        ANY_ROLE,
        "events",
        answers=shapes.EventType,
        list_of=True,
    ),
    Operation(
        "POST",
        "/v1/event-types",
        create_event_type,
        "Register an event type",
        ADMIN,
        "events",
        answers=shapes.EventType,
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
        answers=shapes.EventType,
        body=EventTypeChange,
        params=NAME,
        audit=Audit("event_type.update", object_field="name"),
    ),
]
