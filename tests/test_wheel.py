"""The image's recipe without a container runtime: relay's wheel in a clean virtualenv, run as
the image runs it (its own working directory, no bytecode written, nothing but the venv)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.history import migrations
from tests.support import (
    TEST_MASTER_KEY,
    PostgresServer,
    RedisServer,
    free_port,
    wait_http,
    wait_until,
)

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "rly_wheel_test_admin_token_0123456789"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding relay installed from its wheel, as the image's second stage does."""
    where = tmp_path_factory.mktemp("wheel")
    wheels = where / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("relay-*.whl")
    env_dir = where / "venv"
    venv.create(env_dir, with_pip=True)
    subprocess.run(
        [env_dir / "bin" / "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    yield env_dir


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_the_wheel_alone_runs_the_api_and_a_worker(
    installed: Path, redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    relay = str(installed / "bin" / "relay")
    workdir = tmp_path / "srv"
    workdir.mkdir()
    env = {
        "PATH": f"{installed / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "RELAY_REDIS_URL": redis_server.url,
        "RELAY_DATABASE_URL": postgres_server.url,
        "RELAY_SECRET_KEYS": TEST_MASTER_KEY,
        "RELAY_ADMIN_TOKEN": ADMIN,
    }
    where = subprocess.run(
        [installed / "bin" / "python", "-c", "import relay; print(relay.__file__)"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(installed))  # the wheel's copy, not the source tree

    check = subprocess.run(
        [relay, "config", "check"], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert ADMIN not in check.stdout
    # The schema's SQL files ship in the wheel.
    migrate = subprocess.run(
        [relay, "migrate"], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr
    assert f"schema at version {migrations.latest()}" in migrate.stdout

    before = _tree(installed)
    port = free_port()
    logs = tmp_path / "worker.log"
    with logs.open("wb") as worker_log:
        api = subprocess.Popen(
            [relay, "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        worker = subprocess.Popen([relay, "worker"], cwd=workdir, env=env, stderr=worker_log)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30)
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            tokens = httpx.get(
                f"http://127.0.0.1:{port}/v1/tokens", headers={"authorization": f"Bearer {ADMIN}"}
            )
            assert tokens.status_code == 200
            # The API reference's page and script ship in the wheel, Swagger UI with its package.
            for path in ("/docs", "/docs/docs.js", "/docs/static/swagger-ui-bundle.js"):
                assert httpx.get(f"http://127.0.0.1:{port}{path}").status_code == 200, path
            wait_until(lambda: "worker connected" in logs.read_text(), timeout=30)
        finally:
            for process in (api, worker):
                process.send_signal(signal.SIGTERM)
            for process in (api, worker):
                process.wait(30)
    assert api.returncode in (0, -signal.SIGTERM) and worker.returncode == 0
    lines = [json.loads(line) for line in logs.read_text().splitlines()]
    assert any(line["message"] == "worker connected" for line in lines)
    # Nothing was written into the install: a read-only root filesystem will do.
    assert _tree(installed) == before
    assert not list(workdir.iterdir())
