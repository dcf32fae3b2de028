"""Tokens and roles: lifecycle, storage, and who may reach what."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio

from relay.store import keys
from relay.tokens import token_hash
from tests.fixtures import ClientFactory
from tests.flows import commands_sent_while
from tests.support import RedisServer


async def test_token_lifecycle(admin: httpx.AsyncClient, make_client: ClientFactory) -> None:
    created = await admin.post("/v1/tokens", json={"role": "ingest", "name": "publisher"})
    assert created.status_code == 201
    data = created.json()["data"]
    assert data["id"].startswith("tok_") and data["token"].startswith("rly_")
    assert data["role"] == "ingest" and data["name"] == "publisher"

    listed = (await admin.get("/v1/tokens")).json()
    assert [t["id"] for t in listed["data"]] == [data["id"]]
    assert "token" not in listed["data"][0] and "hash" not in listed["data"][0]

    ingest = await make_client(token=data["token"])
    assert (await ingest.get("/v1/tokens")).status_code == 403

    assert (await admin.delete(f"/v1/tokens/{data['id']}")).status_code == 200
    revoked = await ingest.get("/v1/tokens")
    assert revoked.status_code == 401
    assert revoked.json()["code"] == "unauthorized"
    assert (await admin.delete(f"/v1/tokens/{data['id']}")).status_code == 404


async def test_every_token_reads_its_own_role_tenant_and_expiry(
    admin: httpx.AsyncClient, make_client: ClientFactory, redis_client: redis.asyncio.Redis
) -> None:
    described = await admin.get("/v1/tokens/self")
    assert described.status_code == 200, described.text
    assert described.json()["data"] == {
        "id": "tok_bootstrap",  # RELAY_ADMIN_TOKEN: configured, never issued
        "role": "admin",
        "tenant_id": None,
        "name": None,
        "expires_at": None,
    }

    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    issued = []
    for spec in (
        {"role": "tenant", "tenant_id": "space_self", "name": "dashboard", "expires_at": expires},
        {"role": "ingest", "name": "publisher"},
    ):
        made = await admin.post("/v1/tokens", json=spec)
        assert made.status_code == 201, made.text
        issued.append(made.json()["data"])
    for token in issued:
        own = await make_client(token=token["token"])
        described = await own.get("/v1/tokens/self")
        assert described.status_code == 200, described.text
        shown = ("id", "role", "tenant_id", "name", "expires_at")
        assert described.json()["data"] == {key: token[key] for key in shown}
        # Describing itself is all it may do with tokens.
        assert (await own.get("/v1/tokens")).status_code == 403

    tenant = await make_client(token=issued[0]["token"])
    assert (await admin.delete(f"/v1/tokens/{issued[0]['id']}")).status_code == 200
    assert (await tenant.get("/v1/tokens/self")).status_code == 401
    # Revoked between its authentication and the read of its record (this deletes the one and
    # leaves the other, as a revoke is seen in that moment): unauthorized, not a missing token.
    second = await make_client(token=issued[1]["token"])
    await redis_client.delete(keys.token(issued[1]["id"]))
    answer = await second.get("/v1/tokens/self")
    assert answer.status_code == 401, answer.text
    # `self` names no token: nothing is revoked under that name.
    refused = await admin.delete("/v1/tokens/self")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"


async def test_tokens_are_stored_only_as_hashes(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    plaintext = (await admin.post("/v1/tokens", json={"role": "admin"})).json()["data"]["token"]
    secret_part = plaintext.removeprefix("rly_")
    async for key in redis_client.scan_iter("*"):
        assert secret_part.encode() not in key
        if await redis_client.type(key) == b"string":
            assert secret_part.encode() not in await redis_client.get(key)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "root"}, "role"),
        ({"role": "tenant"}, "body"),
        ({"role": "admin", "tenant_id": "t1"}, "body"),
        ({"role": "tenant", "tenant_id": "has space"}, "tenant_id"),
        ({"role": "admin", "extra": 1}, "extra"),
    ],
)
async def test_bad_token_requests_name_the_field(
    admin: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await admin.post("/v1/tokens", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert field in response.json()["errors"]


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer nope", "Basic dGVzdDp0ZXN0", "bearer  "]
)
async def test_missing_or_unknown_token_is_401(
    make_client: ClientFactory, header: str | None
) -> None:
    client = await make_client(token=None)
    headers = {"authorization": header} if header else {}
    response = await client.get("/v1/tokens", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("role", ["ingest", "tenant"])
async def test_only_admins_manage_tokens(
    make_client: ClientFactory,
    token_for,
    role: str,  # type: ignore[no-untyped-def]
) -> None:
    client = await make_client(token=await token_for(role, "t1" if role == "tenant" else None))
    for method, path in [
        ("GET", "/v1/tokens"),
        ("POST", "/v1/tokens"),
        ("DELETE", "/v1/tokens/tok_x"),
    ]:
        response = await client.request(
            method, path, json={"role": "admin"} if method == "POST" else None
        )
        assert response.status_code == 403, (method, path)
        assert response.json()["code"] == "forbidden"


async def test_token_list_pages_newest_first(admin: httpx.AsyncClient) -> None:
    made = [
        (await admin.post("/v1/tokens", json={"role": "admin", "name": str(i)})).json()["data"][
            "id"
        ]
        for i in range(7)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await admin.get("/v1/tokens", params=params)).json()
        seen += [t["id"] for t in page["data"]]
        # A token made while paging must not disturb the pages still to come.
        await admin.post("/v1/tokens", json={"role": "admin", "name": "late"})
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 101}, {"limit": "x"}, {"cursor": "bogus"}]
)
async def test_bad_paging_is_422(admin: httpx.AsyncClient, params: dict[str, object]) -> None:
    response = await admin.get("/v1/tokens", params=params)
    assert response.status_code == 422
    assert set(response.json()["errors"]) <= {"limit", "cursor"}


async def _issue(admin: httpx.AsyncClient, **fields: object) -> dict[str, Any]:
    response = await admin.post("/v1/tokens", json={"role": "admin", **fields})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_a_token_stops_at_its_expiry_with_a_clear_401(
    admin: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    ends = datetime.now(UTC) + timedelta(seconds=1.5)
    made = await _issue(admin, expires_at=ends.isoformat())
    assert made["expires_at"].endswith("Z")
    client = await make_client(token=made["token"])
    assert (await client.get("/v1/tokens")).status_code == 200

    async def refused() -> httpx.Response | None:
        response = await client.get("/v1/tokens")
        return response if response.status_code != 200 else None

    response = None
    while response is None:
        await asyncio.sleep(0.1)
        response = await refused()
    assert datetime.now(UTC) >= ends
    assert response.status_code == 401
    assert response.json()["detail"] == (
        f"This token expired at {made['expires_at']}; ask for a new one."
    )
    listed = (await admin.get("/v1/tokens")).json()["data"]
    assert [t["expires_at"] for t in listed if t["id"] == made["id"]] == [made["expires_at"]]


@pytest.mark.parametrize(
    "expires_at", ["2020-01-01T00:00:00Z", "tomorrow", "2030-01-01", 1_900_000_000]
)
async def test_expiry_must_be_a_future_rfc3339_time(
    admin: httpx.AsyncClient, expires_at: object
) -> None:
    response = await admin.post("/v1/tokens", json={"role": "admin", "expires_at": expires_at})
    assert response.status_code == 422
    assert "expires_at" in response.json()["errors"]


async def test_last_used_at_is_kept_to_the_minute_without_a_write_per_request(
    admin: httpx.AsyncClient, make_client: ClientFactory, redis_client: redis.asyncio.Redis
) -> None:
    made = await _issue(admin)

    def last_used(tokens: list[dict[str, Any]]) -> str | None:
        [found] = [t["last_used_at"] for t in tokens if t["id"] == made["id"]]
        return found

    assert last_used((await admin.get("/v1/tokens")).json()["data"]) is None
    client = await make_client(token=made["token"])
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = last_used((await client.get("/v1/tokens")).json()["data"])
    assert first is not None and before <= datetime.fromisoformat(first) <= datetime.now(UTC)

    async def sets() -> int:
        stats = await redis_client.info("commandstats")
        return int(stats.get("cmdstat_set", {}).get("calls", 0))

    before_sets = await sets()
    for _ in range(5):
        assert (await client.get("/v1/tokens")).status_code == 200
    assert await sets() == before_sets  # no write per request
    assert last_used((await client.get("/v1/tokens")).json()["data"]) == first


async def test_revocation_holds_at_once_on_every_replica(
    admin: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    made = await _issue(admin)
    replicas = [await make_client(token=made["token"]) for _ in range(2)]
    for replica in replicas:
        assert (await replica.get("/v1/tokens")).status_code == 200
    assert (await admin.delete(f"/v1/tokens/{made['id']}")).status_code == 200
    for replica in replicas:
        response = await replica.get("/v1/tokens")
        assert response.status_code == 401
        assert response.json()["detail"] == "This token is unknown or has been revoked."


async def test_portal_session_is_a_short_lived_tenant_sign_in(
    admin: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    response = await admin.post("/v1/portal-sessions", json={"tenant_id": "t1"})
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    base, _, fragment = data["url"].partition("#")
    assert base == "http://relay.test/console"
    assert fragment.startswith("token=rly_")
    expires = datetime.fromisoformat(data["expires_at"])
    assert 3590 < (expires - datetime.now(UTC)).total_seconds() <= 3600
    assert data["tenant_id"] == "t1" and data["token_id"].startswith("tok_")

    portal = await make_client(token=fragment.removeprefix("token="))
    mine = await portal.post(
        "/v1/webhooks", json={"url": "https://a.example.com/", "tenant_id": "t1"}
    )
    assert mine.status_code == 201
    other = await admin.post(
        "/v1/webhooks", json={"url": "https://b.example.com/", "tenant_id": "t2"}
    )
    assert (await portal.get(f"/v1/webhooks/{other.json()['data']['id']}")).status_code == 404
    assert (await portal.post("/v1/tokens", json={"role": "admin"})).status_code == 403
    assert (await portal.post("/v1/portal-sessions", json={"tenant_id": "t1"})).status_code == 403

    listed = (await admin.get("/v1/tokens")).json()["data"]
    [session] = [t for t in listed if t["id"] == data["token_id"]]
    assert session["role"] == "tenant" and session["expires_at"] == data["expires_at"]


async def test_a_portal_link_points_at_the_public_url_whatever_host_was_asked(
    admin: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    # Unset, the link follows the request (as uvicorn read it, forwarded headers included).
    asked = await admin.post(
        "/v1/portal-sessions", json={"tenant_id": "t1"}, headers={"host": "other.test:8080"}
    )
    assert asked.json()["data"]["url"].startswith("http://other.test:8080/console#token=rly_")

    public = await make_client(public_url="https://relay.example.com/hooks/")
    for host in ("relay.test", "attacker.example", "10.0.0.7:8000"):
        response = await public.post(
            "/v1/portal-sessions", json={"tenant_id": "t1"}, headers={"host": host}
        )
        assert response.status_code == 201, response.text
        url = response.json()["data"]["url"]
        assert url.startswith("https://relay.example.com/hooks/console#token=rly_"), url


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"tenant_id": "t1", "ttl_seconds": 86_401},
        {"tenant_id": "t1", "ttl_seconds": 0},
        {"tenant_id": "t1", "ttl_seconds": "60"},
        {"tenant_id": "has space"},
    ],
)
async def test_bad_portal_sessions_are_422(
    admin: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await admin.post("/v1/portal-sessions", json=body)
    assert response.status_code == 422


async def test_portal_session_lasts_at_most_a_day(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/v1/portal-sessions", json={"tenant_id": "t1", "ttl_seconds": 86_400}
    )
    expires = datetime.fromisoformat(response.json()["data"]["expires_at"])
    assert 86_390 < (expires - datetime.now(UTC)).total_seconds() <= 86_400


async def test_failed_authentications_from_one_address_are_limited_before_any_lookup(
    make_client: ClientFactory, token_for: Any
) -> None:
    guesser = await make_client(token="rly_guessed_token", auth_failures_per_minute=3)
    answers = [await guesser.get("/v1/events") for _ in range(5)]
    assert [r.status_code for r in answers] == [401, 401, 401, 429, 429]
    limited = answers[-1]
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # Refused before its token is looked up: from that address, a valid token waits too.
    valid = {"authorization": f"Bearer {await token_for('ingest')}"}
    assert (await guesser.get("/v1/events", headers=valid)).status_code == 429


async def test_with_the_failure_limit_off_every_guess_is_a_401(make_client: ClientFactory) -> None:
    guesser = await make_client(token="rly_guessed_token", auth_failures_per_minute=0)
    answers = [await guesser.get("/v1/events") for _ in range(40)]
    assert {r.status_code for r in answers} == {401}


def _event(post_id: str, **fields: object) -> dict[str, object]:
    return {"type": "post.published", "tenant_id": "t1", "data": {"post_id": post_id}, **fields}


async def _posted(admin: httpx.AsyncClient) -> list[object]:
    listed = await admin.get("/v1/events", params={"tenant_id": "t1"})
    assert listed.status_code == 200, listed.text
    return [e["data"]["post_id"] for e in listed.json()["data"]]


async def test_an_ingest_token_posts_events_without_a_token_read_per_request(
    make_client: ClientFactory, own_redis: RedisServer
) -> None:
    admin = await make_client(redis_url=own_redis.url)
    made = await _issue(admin, role="ingest")
    ingest = await make_client(token=made["token"], redis_url=own_redis.url)
    assert (await ingest.post("/v1/events", json=_event("p_1"))).status_code == 202

    sent = await commands_sent_while(own_redis, ingest.post("/v1/events", json=_event("p_2")))

    # The token's rate limit, then the accept script, which checks the token's record itself.
    assert sent == ["EVALSHA", "EVALSHA"], sent


async def test_a_revoked_ingest_token_is_refused_at_once_whatever_it_posts(
    admin: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    made = await _issue(admin, role="ingest")
    # Whether it would write, repeat an upstream id (no write), be refused as invalid, or post
    # a batch: each on a replica of its own (not the admin's) that has just accepted the token.
    attempts: list[tuple[str, dict[str, object]]] = [
        ("/v1/events", _event("p_2")),
        ("/v1/events", _event("p_1", id="up_1")),
        ("/v1/events", {"type": "post.published"}),
        ("/v1/events/batch", {"events": [_event("p_3")]}),
    ]
    replicas = [await make_client(token=made["token"]) for _ in attempts]
    for n, replica in enumerate(replicas):
        posted = await replica.post("/v1/events", json=_event("p_1", id="up_1"))
        assert posted.status_code == (202 if n == 0 else 200), posted.text
    assert (await admin.delete(f"/v1/tokens/{made['id']}")).status_code == 200

    for replica, (path, body) in zip(replicas, attempts, strict=True):
        response = await replica.post(path, json=body)
        assert response.status_code == 401, (body, response.text)
        assert response.json()["detail"] == "This token is unknown or has been revoked."
    assert await _posted(admin) == ["p_1"]


async def test_a_change_to_a_tokens_record_holds_at_once_for_ingest(
    admin: httpx.AsyncClient, make_client: ClientFactory, redis_client: redis.asyncio.Redis
) -> None:
    made = await _issue(admin, role="ingest")
    ingest = await make_client(token=made["token"])
    assert (await ingest.post("/v1/events", json=_event("p_1"))).status_code == 202

    # The record as another replica might rewrite it: now a tenant token, which may not post.
    stored = keys.token_by_hash(token_hash(made["token"]))
    record = orjson.loads(await redis_client.get(stored))
    await redis_client.set(stored, orjson.dumps({**record, "role": "tenant", "tenant_id": "t1"}))

    refused = await ingest.post("/v1/events", json=_event("p_2"))
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"] == "A tenant token may not do this."
    assert await _posted(admin) == ["p_1"]


async def test_a_revoked_token_refused_for_its_role_is_then_refused_as_revoked(
    admin: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    made = await _issue(admin, role="tenant", tenant_id="t1")
    tenant = await make_client(token=made["token"])
    assert (await tenant.post("/v1/events", json=_event("p_1"))).status_code == 403
    assert (await admin.delete(f"/v1/tokens/{made['id']}")).status_code == 200

    refused = await tenant.post("/v1/events", json=_event("p_1"))
    assert refused.status_code == 401, refused.text
