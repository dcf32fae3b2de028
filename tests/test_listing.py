"""Every list answers what it was asked: known filters work, anything else is a 422 naming it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from relay.app import OPERATIONS
from tests.flows import post_event, webhook

Issue = Callable[..., Awaitable[str]]
URL = "https://hooks.example.com/relay"
MEDIA = {"type": "media.uploaded", "data": {"media_id": "m", "url": "u", "mime": "a/b"}}
LISTS = [op for op in OPERATIONS if op.method == "GET" and op.list_of]


def _sample(path: str) -> str:
    for name, prefix in (("{id:webhook}", "wh"), ("{id}", "wh")):
        path = path.replace(name, f"{prefix}_{'0' * 26}")
    return path


@pytest.mark.parametrize("path", [op.path for op in LISTS])
async def test_every_list_refuses_an_unknown_parameter_by_name(
    admin: httpx.AsyncClient, path: str
) -> None:
    response = await admin.get(_sample(path), params={"foo": "bar"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert list(response.json()["errors"]) == ["foo"]


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"since": "bogus"}, "since"),
        ({"until": "2026-02-30T00:00:00Z"}, "until"),
        ({"status": "lost"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"webhook_id": "nope"}, "webhook_id"),
        ({"cursor": "evt_x"}, "cursor"),
    ],
)
async def test_a_bad_value_is_a_422_naming_the_parameter(
    admin: httpx.AsyncClient, query: dict[str, str], name: str
) -> None:
    response = await admin.get("/v1/deliveries", params=query)
    assert response.status_code == 422, response.text
    assert list(response.json()["errors"]) == [name]


async def test_a_repeated_parameter_is_named(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/v1/deliveries?status=pending&status=failed")
    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["status"]


async def _deliveries(admin: httpx.AsyncClient) -> tuple[list[dict[str, Any]], str]:
    """Deliveries made a few milliseconds apart, oldest first, and webhook A's id.

    Webhooks A (everything) and B (post.published) of space_42, C of space_43; a media.uploaded
    to space_42 (A), a post.published to space_43 (C), then one to space_42 (A and B), whose
    delivery to A is canceled.
    """
    a = await webhook(admin, URL)
    await webhook(admin, URL, events=["post.published"])
    await webhook(admin, URL, tenant="space_43")
    made: list[dict[str, Any]] = []
    for tenant, body in (("space_42", MEDIA), ("space_43", {}), ("space_42", {})):
        response = await post_event(admin, tenant, **body)
        assert response.status_code == 202, response.text
        for d in response.json()["data"]["deliveries"]:
            made.append((await admin.get(f"/v1/deliveries/{d['id']}")).json()["data"])
        await asyncio.sleep(0.01)
    [last_to_a] = [d for d in made[2:] if d["webhook_id"] == a["id"]]
    response = await admin.post(f"/v1/webhooks/{a['id']}/deliveries/{last_to_a['id']}/cancel")
    assert response.status_code == 200
    last_to_a.update(response.json()["data"])
    assert len(made) == 4
    return made, a["id"]


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [d["id"] for d in response.json()["data"]]


async def test_delivery_filters_each_narrow_the_operator_list(admin: httpx.AsyncClient) -> None:
    made, _ = await _deliveries(admin)
    newest_first = [d["id"] for d in reversed(made)]
    assert _ids(await admin.get("/v1/deliveries")) == newest_first
    middle = made[1]
    cases: list[tuple[dict[str, str], Callable[[dict[str, Any]], bool]]] = [
        ({"status": "canceled"}, lambda d: d["status"] == "canceled"),
        ({"event_type": "media.uploaded"}, lambda d: d["event_type"] == "media.uploaded"),
        ({"tenant_id": "space_43"}, lambda d: d["tenant_id"] == "space_43"),
        ({"webhook_id": middle["webhook_id"]}, lambda d: d["webhook_id"] == middle["webhook_id"]),
        ({"since": middle["created_at"]}, lambda d: d["created_at"] >= middle["created_at"]),
        ({"until": middle["created_at"]}, lambda d: d["created_at"] <= middle["created_at"]),
    ]
    for query, keep in cases:
        expected = [d["id"] for d in reversed(made) if keep(d)]
        assert expected and expected != newest_first, query  # each case filters something out
        assert _ids(await admin.get("/v1/deliveries", params=query)) == expected, query


async def test_delivery_filters_each_narrow_a_webhooks_list(admin: httpx.AsyncClient) -> None:
    made, hook = await _deliveries(admin)
    canceled, media = [d for d in reversed(made) if d["webhook_id"] == hook]
    cases: list[tuple[dict[str, str], list[str]]] = [
        ({}, [canceled["id"], media["id"]]),
        ({"status": "canceled"}, [canceled["id"]]),
        ({"status": "pending"}, [media["id"]]),
        ({"event_type": "media.uploaded"}, [media["id"]]),
        ({"since": canceled["created_at"]}, [canceled["id"]]),
        ({"until": media["created_at"]}, [media["id"]]),
    ]
    for query, expected in cases:
        got = _ids(await admin.get(f"/v1/webhooks/{hook}/deliveries", params=query))
        assert got == expected, query


async def test_a_delivery_is_read_by_its_id_alone(
    admin: httpx.AsyncClient,
    make_client: Callable[..., Awaitable[httpx.AsyncClient]],
    token_for: Issue,
) -> None:
    made, _ = await _deliveries(admin)
    ours = next(d for d in made if d["tenant_id"] == "space_42")
    response = await admin.get(f"/v1/deliveries/{ours['id']}")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["id"] == ours["id"] and data["attempts"] == []
    tenant = await make_client(token=await token_for("tenant", "space_42"))
    assert (await tenant.get(f"/v1/deliveries/{ours['id']}")).status_code == 200
    other = await make_client(token=await token_for("tenant", "space_43"))
    missing = await other.get(f"/v1/deliveries/{ours['id']}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


async def _events(admin: httpx.AsyncClient) -> list[dict[str, Any]]:
    made = []
    for tenant, body in (
        ("space_42", {"id": "up-1"}),
        ("space_43", {"id": "up-2"}),
        ("space_42", MEDIA),
        ("space_42", {"id": "up-2"}),
    ):
        response = await post_event(admin, tenant, **body)
        assert response.status_code == 202, response.text
        made.append(response.json()["data"])
        await asyncio.sleep(0.01)
    return made


async def test_events_are_listed_newest_first_by_each_filter(admin: httpx.AsyncClient) -> None:
    made = await _events(admin)
    newest_first = [e["id"] for e in reversed(made)]
    assert _ids(await admin.get("/v1/events")) == newest_first
    second = made[1]
    cases: list[tuple[dict[str, str], list[str]]] = [
        ({"type": "media.uploaded"}, [made[2]["id"]]),
        ({"id": "up-2"}, [made[3]["id"], made[1]["id"]]),
        ({"id": "up-2", "tenant_id": "space_43"}, [made[1]["id"]]),
        ({"since": second["created_at"]}, newest_first[:3]),
        ({"until": second["created_at"]}, newest_first[2:]),
    ]
    for query, expected in cases:
        assert _ids(await admin.get("/v1/events", params=query)) == expected, query
    listed = (await admin.get("/v1/events", params={"type": "media.uploaded"})).json()["data"]
    assert listed[0]["data"] == {"media_id": "m", "url": "u", "mime": "a/b"}
    assert listed[0]["tenant_id"] == "space_42"


async def test_events_are_paginated(admin: httpx.AsyncClient) -> None:
    made = await _events(admin)
    first = (await admin.get("/v1/events", params={"limit": 3})).json()
    assert [e["id"] for e in first["data"]] == [e["id"] for e in reversed(made)][:3]
    rest = (await admin.get("/v1/events", params={"cursor": first["next_cursor"]})).json()
    assert [e["id"] for e in rest["data"]] == [made[0]["id"]]
    assert rest["next_cursor"] is None


async def test_a_tenant_lists_only_its_own_events(
    admin: httpx.AsyncClient,
    make_client: Callable[..., Awaitable[httpx.AsyncClient]],
    token_for: Issue,
) -> None:
    made = await _events(admin)
    tenant = await make_client(token=await token_for("tenant", "space_43"))
    assert _ids(await tenant.get("/v1/events")) == [made[1]["id"]]
    assert (await tenant.get("/v1/events", params={"tenant_id": "space_42"})).status_code == 404
    ingest = await make_client(token=await token_for("ingest"))
    assert (await ingest.get("/v1/events")).status_code == 403


async def test_a_nul_character_is_refused_where_history_could_not_hold_it(
    admin: httpx.AsyncClient,
) -> None:
    # A filter with one could match nothing PostgreSQL holds; an upstream id with one could
    # never be written to history (and would hold up every record behind it).
    response = await admin.get("/v1/deliveries", params={"tenant_id": "space\x0042"})
    assert response.status_code == 422, response.text
    assert list(response.json()["errors"]) == ["tenant_id"]
    events = await admin.get("/v1/events", params={"id": "up\x00stream"})
    assert list(events.json()["errors"]) == ["id"]
    posted = await post_event(admin, id="up\x00stream")
    assert posted.status_code == 422, posted.text
    assert list(posted.json()["errors"]) == ["id"]


@pytest.mark.parametrize("op", [op for op in LISTS if any(p.name == "until" for p in op.params)])
async def test_a_window_to_the_calendars_last_moment_lists_everything(
    admin: httpx.AsyncClient, op: Any
) -> None:
    await _events(admin)
    last = {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59.999Z"}
    everything = await admin.get(_sample(op.path))
    response = await admin.get(_sample(op.path), params=last)
    assert response.status_code == everything.status_code, response.text
    assert response.json() == everything.json()
