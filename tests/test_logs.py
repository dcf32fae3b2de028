"""Log lines and request ids as an operator sees them: a real `relay api`, its stderr read back."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import relay
from relay import logs
from tests.fixtures import ClientFactory
from tests.receivers import Receiver
from tests.support import RedisServer, free_port, relay_env, spawn_relay, wait_http

ADMIN = "rly_admin_token_for_the_log_test_0123456789"


async def test_a_request_id_is_returned_on_every_response(make_client: ClientFactory) -> None:
    client = await make_client(max_body_bytes="2048")
    given = await client.get("/v1/tokens", headers={"x-request-id": "upstream-42.a:b"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "upstream-42.a:b"

    made = [await client.get("/healthz"), await client.get("/healthz")]
    ids = [r.headers["x-request-id"] for r in made]
    assert all(i.startswith("req_") for i in ids) and ids[0] != ids[1]

    # Ids that could smuggle text into headers or logs are replaced, not echoed.
    for bad in ("has space", "x" * 129, "line\tbreak"):
        replaced = await client.get("/healthz", headers={"x-request-id": bad})
        assert replaced.headers["x-request-id"].startswith("req_")

    # Problems carry it too: unknown path, no token, a body over the limit.
    anonymous = await make_client(token=None)
    problems = [
        await client.get("/v1/nowhere"),
        await anonymous.get("/v1/tokens"),
        await client.post("/v1/tokens", content=b"x" * 4096),
    ]
    assert [r.status_code for r in problems] == [404, 401, 413]
    assert all(r.headers["x-request-id"].startswith("req_") for r in problems)


class LoggedApi:
    """A `relay api` whose stderr goes to a file, read once the API has stopped."""

    def __init__(self, redis_url: str, log_path: Path, **env: str) -> None:
        self.base = f"http://127.0.0.1:{free_port()}"
        self.log_path = log_path
        self._file = log_path.open("wb")
        port = self.base.rsplit(":", 1)[1]
        self._process = spawn_relay(
            ["api", "--port", port], relay_env(redis_url, **env), stderr=self._file
        )
        wait_http(self.base + "/healthz")

    def stop(self) -> str:
        """Stop the API (SIGTERM, as an orchestrator would) and return everything it logged."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait(15)
        self._file.close()
        return self.log_path.read_text()


@pytest.fixture
def logged_api(redis_server: RedisServer, tmp_path: Path) -> Iterator[LoggedApi]:
    api = LoggedApi(redis_server.url, tmp_path / "api.log", RELAY_ADMIN_TOKEN=ADMIN)
    yield api
    api.stop()


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_api_logs_one_json_line_per_request_and_no_secret(logged_api: LoggedApi) -> None:
    base = logged_api.base
    admin = httpx.Client(base_url=base, headers={"authorization": f"Bearer {ADMIN}"})
    issued = admin.post("/v1/tokens", json={"role": "ingest"}, headers={"x-request-id": "rq-1"})
    token = issued.json()["data"]["token"]
    created = admin.post(
        "/v1/webhooks", json={"url": "https://example.com/hook", "tenant_id": "space_42"}
    )
    secret = created.json()["data"]["secret"]
    refused = httpx.get(base + "/v1/tokens", headers={"authorization": "Bearer rly_wrong_token"})
    assert (issued.status_code, created.status_code, refused.status_code) == (201, 201, 401)
    admin.close()
    text = logged_api.stop()
    lines = _lines(text)  # every line is one JSON object (JSON is the default format)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's own lines too

    requests = [line for line in lines if line["logger"] == "relay.http"]
    first = next(line for line in requests if line["request_id"] == "rq-1")
    assert first["method"] == "POST" and first["path"] == "/v1/tokens"
    assert first["status_code"] == 201 and first["duration_ms"] >= 0
    webhook_line = next(line for line in requests if line["path"] == "/v1/webhooks")
    assert webhook_line["request_id"] == created.headers["x-request-id"]
    assert any(line["status_code"] == 401 for line in requests)

    for secret_text in (ADMIN, token, secret, "rly_wrong_token"):
        assert secret_text not in text


def test_text_format_is_for_people(redis_server: RedisServer, tmp_path: Path) -> None:
    api = LoggedApi(
        redis_server.url, tmp_path / "api.log", RELAY_LOG_FORMAT="TEXT", RELAY_LOG_LEVEL="debug"
    )
    try:
        httpx.get(api.base + "/healthz", headers={"x-request-id": "rq-text"})
    finally:
        text = api.stop()
    assert not text.lstrip().startswith("{")
    # Health checks are logged only at debug level, which this process asked for.
    assert any("GET /healthz 200" in ln and "request_id=rq-text" in ln for ln in text.splitlines())


@pytest.mark.system
async def test_a_webhooks_change_and_an_events_attempts_are_logged_with_their_ids(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"RELAY_ADMIN_TOKEN": ADMIN, "RELAY_ALLOW_PRIVATE_TARGETS": "true"}
    api = LoggedApi(redis_server.url, tmp_path / "api.log", **env)
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as sink:
        worker = spawn_relay(["worker"], relay_env(redis_server.url, **env), stderr=sink)
    try:
        async with (
            Receiver() as rx,
            httpx.AsyncClient(
                base_url=api.base, headers={"authorization": f"Bearer {ADMIN}"}
            ) as admin,
        ):
            made = await admin.post(
                "/v1/webhooks",
                json={"url": rx.url("/hook"), "tenant_id": "space_logs"},
                headers={"x-request-id": "rq-hook"},
            )
            assert made.status_code == 201, made.text
            hook_id = made.json()["data"]["id"]
            posted = await admin.post(
                "/v1/events",
                json={"type": "post.published", "tenant_id": "space_logs", "data": {"post_id": 1}},
                headers={"x-request-id": "upstream-7f3a"},
            )
            assert posted.status_code == 202, posted.text
            event_id = posted.json()["data"]["id"]
            await rx.wait_for(1, timeout=15)

            def attempts() -> list[dict[str, Any]]:
                lines = _lines(worker_log.read_text())
                return [line for line in lines if line.get("event_id") == event_id]

            for _ in range(100):  # the line follows the attempt's settlement
                if attempts():
                    break
                await asyncio.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(15)
        text = api.stop()

    hook_line = next(line for line in _lines(text) if line.get("request_id") == "rq-hook")
    assert hook_line["path"] == "/v1/webhooks" and hook_line["status_code"] == 201
    assert hook_line["webhook_id"] == hook_id and hook_line["tenant_id"] == "space_logs"
    (attempt,) = attempts()
    assert attempt["logger"] == "relay.delivery" and attempt["status_code"] == 200
    assert attempt["request_id"] == "upstream-7f3a"
    assert attempt["webhook_id"] == hook_id and attempt["attempt"] == 1
    logged = _lines(text) + _lines(worker_log.read_text())
    assert [line for line in logged if logs.UNDECLARED in line] == []


def test_a_text_line_cannot_be_forged_with_a_line_break(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    api = LoggedApi(redis_server.url, tmp_path / "api.log", RELAY_LOG_FORMAT="text")
    forged = "2026-01-01 00:00:00,000 ERROR relay.http forged"
    try:
        for raw in ("%0a", "%0d%0a", "%0b", "%1b[31m", "%e2%80%a8"):
            httpx.get(f"{api.base}/v1/x{raw}{forged.replace(' ', '%20')}")
    finally:
        text = api.stop()
    lines = text.splitlines()
    assert not any(line.startswith(forged) for line in lines)
    # Every record is one line, its control characters written as escapes.
    assert "/v1/x\\n2026-01-01" in text and "/v1/x\\x1b[31m" in text
    assert all(line[:1].isdigit() or line.startswith("  ") for line in lines), text


_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def test_every_extra_key_relay_logs_with_is_declared() -> None:
    # A key that FIELDS does not declare (a typo: `statuscode`) is caught here, not found
    # missing from production logs. Only a literal dict can be read before it runs.
    root = Path(relay.__file__).parent
    passed: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr not in _LOG_METHODS:
                continue
            for keyword in node.keywords:
                if keyword.arg != "extra":
                    continue
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                assert isinstance(keyword.value, ast.Dict), f"{where}: extra= is not a dict literal"
                for key in keyword.value.keys:
                    assert isinstance(key, ast.Constant) and isinstance(key.value, str), where
                    passed[key.value] = where
    assert {"method", "path", "status_code", "duration_ms"} <= passed.keys()  # relay's calls found
    assert {key: where for key, where in passed.items() if key not in logs.FIELDS} == {}


@pytest.mark.parametrize("formatter", [logs.JsonFormatter(), logs.TextFormatter()])
def test_an_undeclared_key_is_named_on_its_line_never_dropped_or_shown(
    formatter: logging.Formatter,
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    relay_log, library_log = logging.Logger("relay.delivery"), logging.Logger("uvicorn.error")
    for logger in (relay_log, library_log):
        logger.addHandler(handler)

    relay_log.info("sent", extra={"status_code": 200, "statuscode": "rly_not_for_logs"})
    library_log.info("started", extra={"color_message": "\x1b[1mstarted\x1b[0m"})
    relay_line, library_line = stream.getvalue().splitlines()

    assert "rly_not_for_logs" not in relay_line  # an unvetted value is never written
    if isinstance(formatter, logs.JsonFormatter):
        line = json.loads(relay_line)
        assert line["status_code"] == 200 and line[logs.UNDECLARED] == ["statuscode"]
        assert logs.UNDECLARED not in json.loads(library_line)  # a library's extras are its own
    else:
        assert "status_code=200" in relay_line and "undeclared_fields=['statuscode']" in relay_line
        assert logs.UNDECLARED not in library_line
