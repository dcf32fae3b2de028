"""Every error is RFC 9457 problem+json: routing, bodies, limits, bugs and a missing Redis."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from relay.app import OPERATIONS
from relay.store.tokens import TokenStore
from relay.validation import MAX_JSON_DEPTH
from tests.fixtures import ClientFactory
from tests.flows import post_event, webhook
from tests.support import RedisServer, free_port

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status and body["code"] == code
    return body


async def test_unknown_path_is_404_problem(admin: httpx.AsyncClient) -> None:
    assert_problem(await admin.get("/v1/nothing-here"), 404, "not_found")
    assert_problem(await admin.get("/nothing"), 404, "not_found")


async def test_wrong_method_is_405_problem(admin: httpx.AsyncClient) -> None:
    assert_problem(await admin.put("/v1/tokens"), 405, "method_not_allowed")


async def test_malformed_json_is_422(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/v1/tokens", content=b'{"role": ', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422, "validation")
    assert "body" in body["errors"]  # type: ignore[operator]


async def test_json_that_is_not_an_object_is_422(admin: httpx.AsyncClient) -> None:
    assert_problem(await admin.post("/v1/tokens", json=[1, 2]), 422, "validation")


async def test_wrong_content_type_is_415(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/v1/tokens",
        content=b"role=admin",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 415, "unsupported_media_type")


async def test_body_over_limit_with_content_length_is_413(make_client: ClientFactory) -> None:
    client = await make_client(max_body_bytes=2048)
    response = await client.post("/v1/tokens", json={"role": "admin", "name": "x" * 4000})
    assert_problem(response, 413, "payload_too_large")


async def test_streamed_body_over_limit_without_content_length_is_413(
    make_client: ClientFactory,
) -> None:
    client = await make_client(max_body_bytes=2048)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"role": "admin", "name": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    request = client.build_request(
        "POST", "/v1/tokens", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in request.headers
    assert_problem(await client.send(request), 413, "payload_too_large")
    assert (await client.get("/v1/tokens")).json()["data"] == []


async def test_body_under_limit_is_accepted(make_client: ClientFactory) -> None:
    client = await make_client(max_body_bytes=2048)
    response = await client.post("/v1/tokens", json={"role": "admin", "name": "x" * 100})
    assert response.status_code == 201


async def test_unexpected_error_is_a_generic_problem_without_traceback(
    admin: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(TokenStore, "page", broken)
    response = await admin.get("/v1/tokens")
    body = assert_problem(response, 500, "internal")
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert body["detail"] == "An unexpected error occurred; it has been logged."
    assert "secret internals" in caplog.text


async def test_health_and_readiness(admin: httpx.AsyncClient) -> None:
    assert (await admin.get("/healthz")).json() == {"status": "ok"}
    assert (await admin.get("/readyz")).status_code == 200


async def test_readyz_and_api_answer_503_when_redis_is_down(
    make_client: ClientFactory, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    gone = RedisServer(tmp_path / "gone").start()
    client = await make_client(redis_url=gone.url)
    assert (await client.get("/readyz")).status_code == 200
    gone.stop()
    assert_problem(await client.get("/readyz"), 503, "unavailable")
    assert (await client.get("/healthz")).status_code == 200
    response = await client.post("/v1/tokens", json={"role": "admin"})
    assert_problem(response, 503, "unavailable")
    assert response.headers["retry-after"] == "1"


async def test_redis_never_there_is_503_not_500(make_client: ClientFactory) -> None:
    client = await make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert_problem(await client.get("/v1/tokens"), 503, "unavailable")


async def test_openapi_describes_every_route(admin: httpx.AsyncClient) -> None:
    spec = (await admin.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    assert {"get", "post"} <= spec["paths"]["/v1/tokens"].keys()
    assert "delete" in spec["paths"]["/v1/tokens/{id}"]
    assert {"/healthz", "/readyz", "/docs"} <= spec["paths"].keys()
    schema = spec["components"]["schemas"]["TokenSpec"]
    assert "role" in schema["required"]


async def test_docs_page_is_served_with_its_assets(admin: httpx.AsyncClient) -> None:
    page = await admin.get("/docs")
    assert page.status_code == 200
    script = await admin.get("/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    start = await admin.get("/docs/docs.js")
    assert start.status_code == 200 and "/openapi.json" in start.text
    # The console's policy: scripts from this origin only, and the page has none inline.
    for response in (page, script, start):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", page.text))


def _event_nested(depth: int) -> bytes:
    """An event whose body nests objects exactly `depth` levels deep (the body is level 1)."""
    inner = '{"a":' * (depth - 3) + "{}" + "}" * (depth - 3)
    data = f'{{"post_id":"p","x":{inner}}}'
    return f'{{"type":"post.published","tenant_id":"t1","data":{data}}}'.encode()


async def test_a_body_nested_past_the_limit_is_refused_and_reads_still_work(
    admin: httpx.AsyncClient, make_client: ClientFactory, token_for: Callable[..., Awaitable[str]]
) -> None:
    tenant = await make_client(token=await token_for("tenant", "t1"))
    json = {"content-type": "application/json"}
    # Past the limit, up to past every parser's own ceiling: a 422 naming the limit, never a
    # 500 (an upstream retrying a 500 would post the event again).
    for depth in (MAX_JSON_DEPTH + 1, 199, 230, 256, 2000):
        response = await admin.post("/v1/events", content=_event_nested(depth), headers=json)
        body = assert_problem(response, 422, "validation")
        assert f"{MAX_JSON_DEPTH} levels" in str(body["detail"]), body
    assert (await admin.get("/v1/events")).json()["data"] == []

    # At the limit it is accepted, and every read of it answers.
    response = await admin.post("/v1/events", content=_event_nested(MAX_JSON_DEPTH), headers=json)
    assert response.status_code == 202, response.text
    event_id = response.json()["data"]["id"]
    for client in (admin, tenant):
        assert (await client.get(f"/v1/events/{event_id}")).status_code == 200
        [listed] = (await client.get("/v1/events")).json()["data"]
        assert listed["id"] == event_id


async def test_a_malformed_id_in_any_path_is_a_404_problem(admin: httpx.AsyncClient) -> None:
    made = await webhook(admin, "http://127.0.0.1:9/never", tenant="t1")
    accepted = await post_event(admin, tenant="t1")
    assert accepted.status_code == 202, accepted.text
    [delivery] = accepted.json()["data"]["deliveries"]
    token = (await admin.post("/v1/tokens", json={"role": "ingest"})).json()["data"]
    # Objects that exist, so that a value one step off one of them reaches whatever store
    # the route reads (`dlv_…:att` is another Redis key of that very delivery).
    real = {
        "wh": made["id"],
        "evt": accepted.json()["data"]["id"],
        "dlv": delivery["id"],
        "tok": token["id"],
        "rcv": "rcv_01jd0000000000000000000000",
        "name": "custom.ordered",
    }
    checked = 0
    for op in OPERATIONS:
        # The kind each path parameter holds, read from its documented pattern (`^wh_…`).
        kinds = {
            p.name: re.match(r"\^(\w+)_", p.schema["pattern"])
            for p in op.params
            if p.where == "path"
        }
        values = {name: real[m[1] if m else name] for name, m in kinds.items()}
        template = re.sub(r":\w+}", "}", op.path)  # `{id:webhook}` → `{id}`
        for name, good in values.items():
            for bad in (
                f"{good}:att",
                f"{good}%0a",
                f"{good}%00",
                "%2e%2e",
                good.upper(),
                good[:-1],
                good + "0",
                "x" * 300,
                "é",
            ):
                path = template.format(**{**values, name: bad})
                response = await admin.request(op.method, path, json={} if op.body else None)
                assert_problem(response, 404, "not_found")
                checked += 1
    assert checked > 150


async def test_a_trailing_slash_is_a_404_problem_not_a_redirect(admin: httpx.AsyncClient) -> None:
    assert_problem(await admin.post("/v1/webhooks/", json={}), 404, "not_found")
    assert_problem(await admin.get("/v1/tokens/"), 404, "not_found")
    assert_problem(await admin.get("/healthz/"), 404, "not_found")
    # The pages people open still answer; the console sends its own slash home.
    for path in ("/console", "/docs", "/openapi.json", "/healthz"):
        response = await admin.get(path)
        assert response.status_code == 200, path
    assert (await admin.get("/console/")).headers["location"] == "/console"
    for asset in ("/docs/static/swagger-ui.css", "/console/assets/console.css"):
        assert (await admin.get(asset)).status_code == 200, asset
