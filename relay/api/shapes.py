"""What every answer shares: the Shape base, the types fields are built from, Problem, and the
envelopes (One, Page, Each) answers are sent in.

Each resource's module under relay/api/ declares its answers' models beside its handlers;
every operation names its answer's model (`Operation.answers`), /openapi.json is generated
from these models and every answer is checked against its model before it leaves (routing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic_core import core_schema

from relay.ids import pattern as id_pattern


@dataclass(frozen=True, slots=True)
class OneOf:
    """A string that is one of `names`: an enum whose members are data (registry keys)."""

    names: tuple[str, ...]

    def __get_pydantic_core_schema__(
        self, _source: Any, _handler: pydantic.GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.literal_schema(list(self.names))


# RFC 3339 `date-time` with each part in its range (not a day past its month's end): the form
# relay.timefmt writes. Matched by pydantic-core, not in Python: an answer is built and checked
# on every call, the ingest answer on the hot path.
_RFC3339 = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)

# Domain objects hold timestamps as the RFC 3339 strings relay.timefmt makes, and answers pass
# them on as they are (a datetime would be re-rendered in another form): checked, not parsed.
Timestamp = Annotated[
    str,
    StringConstraints(pattern=_RFC3339),
    WithJsonSchema({"format": "date-time", "type": "string"}),
]
Count = Annotated[int, Field(ge=0)]
HttpStatus = Annotated[int, Field(ge=100, le=599)]
Headers = dict[str, str]
WebhookId = Annotated[str, StringConstraints(pattern=id_pattern("wh"))]
EventId = Annotated[str, StringConstraints(pattern=id_pattern("evt"))]
DeliveryId = Annotated[str, StringConstraints(pattern=id_pattern("dlv"))]


class Shape(BaseModel):
    """An object relay answers with: closed, so an undeclared field is an error, not news.

    An answer is built from its domain object, of class `source` (or of one of the classes
    when it is a tuple): `model_validate(obj)` reads its attributes, and every field is one of
    them (tests/test_shapes.py).
    """

    model_config = ConfigDict(extra="forbid", from_attributes=True)
    source: ClassVar[type | tuple[type, ...] | None] = None
    # Set when `source` is a dataclass of exactly this answer's fields, in its order, sent as it
    # is (orjson writes it): no model is built, for answers on the hot path (POST /v1/events).
    # The answer is still held to this model before it leaves (relay.api.routing).
    as_is: ClassVar[bool] = False
    # Fields `source` does not hold, given beside it to `read` (a plaintext shown once).
    added: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def read(cls, obj: object, **added: object) -> Self:
        """The answer for the domain object `obj`, with the fields it does not hold."""
        if set(added) != cls.added:
            raise TypeError(f"{cls.__name__} takes {sorted(cls.added)} beside its object")
        return cls.model_validate(_Beside(obj, added) if added else obj)


@dataclass(frozen=True, slots=True)
class _Beside:
    """A domain object with more attributes beside its own, for an answer to read."""

    obj: object
    added: dict[str, object]

    def __getattr__(self, name: str) -> object:
        return self.added[name] if name in self.added else getattr(self.obj, name)


class Deleted(Shape):
    """The last view of an object that no longer exists."""

    deleted: Literal[True]


class Problem(Shape):
    """An RFC 9457 problem: what went wrong, and for invalid input which fields and why."""

    type: str
    title: str
    status: Annotated[int, Field(ge=400, le=599)]
    detail: str
    code: str
    errors: dict[str, list[str]] = Field(default_factory=dict)


T = TypeVar("T", bound=BaseModel)


class One(Shape, Generic[T]):
    """An answer of one object: `{"data": {...}}`."""

    data: T


class Page(Shape, Generic[T]):
    """An answer of a list: one page of it, and where the next starts."""

    data: list[T]
    next_cursor: str | None


class Each(Shape, Generic[T]):
    """An answer of one result per item of the request, in its order: `{"data": [...]}`."""

    data: list[T]


def envelope(answers: type[BaseModel], list_of: bool, per_item: bool = False) -> type[BaseModel]:
    """The whole body of an operation's success: its `answers` in `One`, `Page` or `Each`."""
    if per_item:
        return Each[answers]  # type: ignore[valid-type]
    return Page[answers] if list_of else One[answers]  # type: ignore[valid-type]


class OffShape(Exception):
    """An answer that its model does not describe: a bug in relay, never sent."""


def check(answer: type[BaseModel], body: bytes) -> None:
    """Raise OffShape naming each field of `body` (JSON) that `answer` does not allow.

    Strict: the JSON as it is sent, with no coercion. The message names fields and rules,
    never values: an answer can hold a secret, and this ends up in the log.
    """
    try:
        answer.model_validate_json(body, strict=True)
    except pydantic.ValidationError as exc:
        wrong = "; ".join(
            f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        )
        raise OffShape(f"An answer is not a {answer.__name__}: {wrong}") from None
