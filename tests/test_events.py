"""The event-type catalog: what upstreams may send, what subscribers receive, what the API lists."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.api.event_types import EventType
from relay.errors import Invalid
from relay.event_types import EVENT_TYPES, catalog, matches, validate_event

REQUIRED = {
    "post.published": ["post_id"],
    "post.failed": ["post_id", "error"],
    "media.uploaded": ["media_id", "url", "mime"],
}
OPTIONAL = {
    "post.published": ["published_at", "account_id", "platform", "url"],
    "post.failed": ["platform", "failed_at"],
    "media.uploaded": ["size", "width", "height", "alt"],
}
MINIMAL: dict[str, dict[str, object]] = {
    "post.published": {"post_id": "p_1"},
    "post.failed": {"post_id": "p_1", "error": {"message": "token expired"}},
    "media.uploaded": {
        "media_id": "m_1",
        "url": "https://cdn.example.com/m_1.png",
        "mime": "image/png",
    },
}


def errors_of(type_name: str, data: object) -> dict[str, list[str]]:
    with pytest.raises(Invalid) as caught:
        validate_event(type_name, data)
    return caught.value.errors


def listed() -> list[dict[str, Any]]:
    """The catalog as `GET /v1/event-types` answers with it."""
    return [EventType.read(t).model_dump(by_alias=True) for t in catalog()]


def test_the_catalog_declares_exactly_the_contract_types() -> None:
    assert set(EVENT_TYPES) == set(REQUIRED)
    assert [entry["name"] for entry in listed()] == list(EVENT_TYPES)


@pytest.mark.parametrize(
    ("type_name", "field"), [(t, f) for t, fields in REQUIRED.items() for f in fields]
)
def test_a_missing_required_field_is_named_under_data(type_name: str, field: str) -> None:
    data = {k: v for k, v in MINIMAL[type_name].items() if k != field}
    assert errors_of(type_name, data) == {f"data.{field}": ["Field required"]}


@pytest.mark.parametrize("type_name", list(REQUIRED))
def test_the_minimal_data_of_each_type_is_accepted(type_name: str) -> None:
    assert validate_event(type_name, MINIMAL[type_name]) == MINIMAL[type_name]


def test_an_error_without_a_message_is_named_by_its_nested_path() -> None:
    data = {"post_id": "p_1", "error": {"code": "token_expired"}}
    assert set(errors_of("post.failed", data)) == {"data.error.message"}


def test_an_error_that_is_not_an_object_is_refused() -> None:
    data = {"post_id": "p_1", "error": "token expired"}
    assert set(errors_of("post.failed", data)) == {"data.error"}


@pytest.mark.parametrize("post_id", ["p_1", "1", 1, 0, 2**63])
def test_post_id_may_be_a_string_or_an_integer_and_is_kept_as_sent(post_id: object) -> None:
    stored = validate_event("post.published", {"post_id": post_id})
    assert stored["post_id"] == post_id
    assert type(stored["post_id"]) is type(post_id)


@pytest.mark.parametrize("post_id", ["", None, True, 1.5, ["p_1"], {"id": 1}])
def test_post_id_of_another_kind_is_refused_with_one_message(post_id: object) -> None:
    assert errors_of("post.published", {"post_id": post_id}) == {
        "data.post_id": ["Must be a non-empty string or an integer."]
    }


def test_extra_fields_pass_through_unchanged_and_in_order() -> None:
    data = {
        "zeta": {"nested": [1, "2", None, {"deep": True}]},
        "post_id": "1",
        "count": "7",
        "platform": "x",
        "alpha": 1.25,
    }
    original = copy.deepcopy(data)
    stored = validate_event("post.published", data)
    assert stored == original
    assert list(stored) == list(original)
    assert stored["count"] == "7"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(
    type_name=st.sampled_from(list(REQUIRED)),
    extra=st.dictionaries(st.text(min_size=1).map(lambda k: "x_" + k), json_values, max_size=5),
)
def test_any_extra_json_is_delivered_exactly_as_sent(
    type_name: str, extra: dict[str, object]
) -> None:
    data = {**MINIMAL[type_name], **extra}
    original = copy.deepcopy(data)
    assert validate_event(type_name, data) == original


@pytest.mark.parametrize(
    ("type_name", "field", "value"),
    [
        ("post.published", "published_at", "yesterday"),
        ("post.published", "published_at", 1714564800),
        ("post.published", "platform", ""),
        ("post.published", "account_id", False),
        ("post.failed", "failed_at", "2024-13-01T00:00:00Z"),
        ("media.uploaded", "mime", "jpeg"),
        ("media.uploaded", "mime", "image/jpeg\n"),
        ("media.uploaded", "size", -1),
        ("media.uploaded", "size", "1024"),
        ("media.uploaded", "width", 10.5),
        ("media.uploaded", "height", -1),
        ("media.uploaded", "alt", 3),
    ],
)
def test_a_badly_typed_optional_field_is_named(type_name: str, field: str, value: object) -> None:
    data = {**MINIMAL[type_name], field: value}
    assert set(errors_of(type_name, data)) == {f"data.{field}"}


@pytest.mark.parametrize(
    ("type_name", "field", "value"),
    [
        ("post.published", "published_at", "2024-05-01T12:00:00Z"),
        ("post.published", "published_at", "2024-05-01T14:00:00.123+02:00"),
        ("post.published", "account_id", 42),
        ("post.published", "url", None),
        ("post.failed", "failed_at", "2024-05-01T12:00:03Z"),
        ("media.uploaded", "mime", "text/plain; charset=utf-8"),
        ("media.uploaded", "mime", "application/vnd.api+json"),
        ("media.uploaded", "size", 0),
        ("media.uploaded", "alt", ""),
    ],
)
def test_a_well_typed_optional_field_is_accepted(type_name: str, field: str, value: object) -> None:
    data = {**MINIMAL[type_name], field: value}
    assert validate_event(type_name, data) == data


def test_an_unknown_type_is_named_and_the_known_ones_listed() -> None:
    errors = errors_of("post.deleted", {"post_id": "p_1"})
    assert list(errors) == ["type"]
    for name in REQUIRED:
        assert name in errors["type"][0]


@pytest.mark.parametrize("data", [None, [], "post", 1])
def test_data_that_is_not_an_object_is_refused(data: object) -> None:
    assert errors_of("post.published", data) == {"data": ["Must be a JSON object."]}


@pytest.mark.parametrize("type_name", list(REQUIRED))
def test_each_schema_lists_its_properties_and_required_fields(type_name: str) -> None:
    entry = next(e for e in listed() if e["name"] == type_name)
    schema: Any = entry["schema"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is True
    assert schema["required"] == REQUIRED[type_name]
    assert set(schema["properties"]) == {*REQUIRED[type_name], *OPTIONAL[type_name]}
    assert isinstance(entry["description"], str)
    assert entry["description"]


def test_post_id_schema_allows_a_string_or_an_integer() -> None:
    schema: Any = listed()[0]["schema"]
    types = {branch["type"] for branch in schema["properties"]["post_id"]["anyOf"]}
    assert types == {"string", "integer"}


def test_the_post_failed_schema_is_self_contained() -> None:
    schema: Any = next(e for e in listed() if e["name"] == "post.failed")["schema"]
    ref = schema["properties"]["error"]["$ref"]
    assert ref.startswith("#/$defs/")
    error_schema = schema["$defs"][ref.removeprefix("#/$defs/")]
    assert error_schema["required"] == ["message"]
    assert set(error_schema["properties"]) == {"message", "code"}


@pytest.mark.parametrize("entry", listed(), ids=lambda e: str(e["name"]))
def test_each_example_is_valid_data_of_its_type(entry: dict[str, Any]) -> None:
    assert validate_event(entry["name"], entry["example"]) == entry["example"]
    assert set(REQUIRED[entry["name"]]) <= set(entry["example"])


def test_changing_a_catalog_answer_does_not_change_the_catalog() -> None:
    first: Any = listed()
    first[0]["schema"]["required"].append("hacked")
    first[0]["example"]["post_id"] = "hacked"
    again: Any = listed()
    assert "hacked" not in again[0]["schema"]["required"]
    assert again[0]["example"]["post_id"] != "hacked"


@pytest.mark.parametrize(
    ("filters", "type_name", "expected"),
    [
        (["*"], "post.published", True),
        (["*"], "media.uploaded", True),
        (["post.published"], "post.published", True),
        (["post.failed", "media.uploaded"], "media.uploaded", True),
        (["post.published"], "post.failed", False),
        ([], "post.published", False),
        (["post.*"], "post.published", True),
        (["post.*"], "media.uploaded", False),
        (["post.*"], "postal.sent", False),
        (["custom.*"], "custom", False),
        (["custom.*"], "custom.orders.placed", True),
        (["Post.Published"], "post.published", False),
    ],
)
def test_matches_is_a_wildcard_or_the_exact_type(
    filters: list[str], type_name: str, expected: bool
) -> None:
    assert matches(filters, type_name) is expected
