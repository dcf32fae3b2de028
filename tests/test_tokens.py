"""Tokens and roles: lifecycle, storage, and who may reach what."""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio

from tests.conftest import ClientFactory


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
