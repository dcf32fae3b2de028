"""`relay dev` as someone trying relay runs it: loopback receivers work, one dev per data dir,
its own PostgreSQL kept across restarts, and a `relay dev` that was killed leaves nothing that
breaks the next command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil
import pytest

from relay.history import migrations
from tests.fixtures import ClientFactory
from tests.receivers import Receiver, Request
from tests.support import Dev, dev_env, free_port, postgres_dir, start_dev, stop_dev

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    running = start_dev(tmp_path / "data")
    yield running
    stop_dev(running)


@pytest.mark.system
def test_the_banner_comes_once_the_api_answers(dev: Dev) -> None:
    # No waiting: whoever reads the banner may use the URL at once.
    assert httpx.get(dev.url + "/healthz", timeout=2).status_code == 200
    assert any(f"http://localhost:{dev.port}" in line for line in dev.banner)


@pytest.mark.system
async def test_dev_delivers_to_a_loopback_receiver_and_says_it_may(dev: Dev) -> None:
    assert any("loopback" in line and "allowed" in line for line in dev.banner), dev.banner
    assert (await _deliver_once(dev)).path == "/hook"


async def _deliver_once(dev: Dev) -> Request:
    """Register a loopback webhook through dev's API, post an event; the request it got."""
    auth = {"authorization": f"Bearer {dev.token}"}
    async with Receiver() as rx, httpx.AsyncClient(base_url=dev.url, headers=auth) as client:
        made = await client.post(
            "/v1/webhooks", json={"url": rx.url("/hook"), "tenant_id": "space_42"}
        )
        assert made.status_code == 201, made.text
        event = {"type": "post.published", "tenant_id": "space_42", "data": {"post_id": "p_1"}}
        assert (await client.post("/v1/events", json=event)).status_code == 202
        [request] = await rx.wait_for(1, timeout=20)
    return request


async def _database(data_dir: Path) -> tuple[str, int, bool]:
    """The URL dev published, the schema version, and whether the marker table is there."""
    url = json.loads((data_dir / "runtime.json").read_bytes())["database_url"]
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SELECT max(version) FROM relay_schema")
        marked = await conn.fetchval("SELECT to_regclass('made_by_the_first_dev') IS NOT NULL")
    finally:
        await conn.close()
    return url, version, marked


@pytest.mark.system
async def test_dev_runs_its_own_postgresql_and_a_restart_keeps_its_data() -> None:
    with postgres_dir() as data_dir:
        first = start_dev(data_dir, own_database=True)
        try:
            assert any("applied database migrations" in line for line in first.banner)
            assert first.banner[-1].endswith("Redis and PostgreSQL."), first.banner
            await _deliver_once(first)
            url, version, _ = await _database(data_dir)
            assert version == migrations.latest()
            conn = await asyncpg.connect(url)
            await conn.execute("CREATE TABLE made_by_the_first_dev ()")
            await conn.close()
            descendants = psutil.Process(first.process.pid).children(recursive=True)
            servers = [p for p in descendants if p.name() == "postgres"]
            assert servers
        finally:
            stop_dev(first)
        assert first.process.returncode == 0
        assert not [p for p in servers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

        second = start_dev(data_dir, own_database=True)
        try:
            assert not any("applied database migrations" in line for line in second.banner)
            again, version, marked = await _database(data_dir)
            assert marked and version == migrations.latest()
            assert urlsplit(again).password == urlsplit(url).password
        finally:
            stop_dev(second)


async def test_a_production_api_refuses_loopback_and_names_the_variable(
    make_client: ClientFactory,
) -> None:
    api = await make_client(allow_private_targets="false")
    response = await api.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9911/hook", "tenant_id": "space_42"}
    )
    assert response.status_code == 422
    [message] = response.json()["errors"]["url"]
    assert "RELAY_ALLOW_PRIVATE_TARGETS" in message


@pytest.mark.system
def test_a_second_dev_on_the_same_data_dir_stops_at_once_naming_the_first(
    tmp_path: Path, dev: Dev
) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "relay", "dev", "--port", str(free_port())],
        env=dev_env(tmp_path / "data"),
        capture_output=True,
        timeout=30,
    )
    assert second.returncode == 2
    message = second.stderr.decode()
    assert str(dev.process.pid) in message and f":{dev.port}" in message, message
    assert "Traceback" not in message
    # The first one is untouched: still serving, its runtime record still there.
    assert httpx.get(dev.url + "/readyz", timeout=2).status_code == 200
    assert (tmp_path / "data" / "runtime.json").exists()


@pytest.mark.system
def test_a_killed_dev_leaves_a_record_that_is_explained_then_replaced(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_dev(data_dir)
    children = psutil.Process(first.process.pid).children(recursive=True)
    first.process.kill()
    first.process.communicate(timeout=30)
    psutil.wait_procs(children, timeout=30)

    token = subprocess.run(
        [sys.executable, "-m", "relay", "token", "create", "--role", "admin"],
        env=dev_env(data_dir),
        capture_output=True,
        timeout=30,
    )
    assert token.returncode == 2
    message = token.stderr.decode()
    assert "Traceback" not in message
    assert "no longer running" in message and str(first.process.pid) in message

    again = start_dev(data_dir)
    try:
        assert any("did not stop cleanly" in line for line in again.banner), again.banner
        listed = httpx.get(
            again.url + "/v1/tokens", headers={"authorization": f"Bearer {again.token}"}
        )
        assert listed.status_code == 200
    finally:
        stop_dev(again)


def test_make_run_passes_its_args_to_relay_dev() -> None:
    planned = subprocess.run(
        ["make", "-n", "run", "ARGS=--port 9000"], cwd=ROOT, capture_output=True, timeout=30
    )
    assert planned.returncode == 0, planned.stderr
    assert "relay dev --port 9000" in planned.stdout.decode()


def test_readme_shows_where_the_relay_command_is() -> None:
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/relay" in readme or "source .venv/bin/activate" in readme
