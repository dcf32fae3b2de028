"""The `relay` command as an operator runs it: real subprocesses, real Redis, real HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from tests.support import (
    RedisServer,
    dev_env,
    free_port,
    relay_env,
    spawn_relay,
    wait_http,
    wait_until,
)

pytestmark = pytest.mark.system


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_dev_runs_redis_api_and_worker_and_stops_them_all(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    dev = spawn_relay(
        ["dev", "--port", str(port)],
        dev_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        children = _descendants(dev.pid)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "redis-server" in names and " api" in names and " worker" in names
        assert (data_dir / "redis" / "appendonlydir").is_dir()  # AOF is on
    finally:
        dev.send_signal(stop_signal)
        output = dev.communicate(timeout=30)[0].decode()
    assert dev.returncode == 0, output
    token = next(line.split()[-1] for line in output.splitlines() if "admin token" in line)
    assert f"http://localhost:{port}" in output
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    # The admin token is kept: a second start prints the same one, and it works.
    dev = spawn_relay(["dev", "--port", str(port)], dev_env(data_dir), stdout=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30)
        listed = httpx.get(
            f"http://127.0.0.1:{port}/v1/tokens", headers={"authorization": f"Bearer {token}"}
        )
        assert listed.status_code == 200
    finally:
        dev.send_signal(signal.SIGINT)
        second = dev.communicate(timeout=30)[0].decode()
    assert f"admin token: {token}" in second


def test_dev_without_redis_says_how_to_get_it(tmp_path: Path) -> None:
    env = dev_env(tmp_path / "data", PATH=str(tmp_path))  # nothing on PATH
    result = subprocess.run(
        [sys.executable, "-m", "relay", "dev", "--port", str(free_port())],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    message = result.stderr.decode().strip()
    assert "\n" not in message
    assert "redis-server" in message and "RELAY_REDIS_URL" in message


@pytest.mark.parametrize("command", [["api"], ["worker"], ["dev"]])
def test_bad_configuration_names_the_variable(tmp_path: Path, command: list[str]) -> None:
    env = dev_env(tmp_path, RELAY_DELIVERY_TIMEOUT="soon")
    result = subprocess.run(
        [sys.executable, "-m", "relay", *command], env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert "RELAY_DELIVERY_TIMEOUT" in result.stderr.decode()


def test_dev_refuses_to_wait_for_replicas_its_embedded_redis_does_not_have(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "dev"],
        env=dev_env(tmp_path / "data", RELAY_REDIS_MIN_REPLICAS="1"),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "RELAY_REDIS_MIN_REPLICAS" in result.stderr.decode()
    assert not (tmp_path / "data").exists()  # it stopped before starting anything


@pytest.mark.parametrize("command", [["api", "--port", "0"], ["worker"]])
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_REDIS_URL", "http://x"),
        ("RELAY_DATABASE_URL", "mysql://db/relay"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not-a-url"),
    ],
)
def test_api_and_worker_refuse_a_url_of_the_wrong_kind_as_config_check_does(
    redis_server: RedisServer, command: list[str], variable: str, value: str
) -> None:
    result = _run(command, relay_env(redis_server.url, **{variable: value}))
    assert result.returncode == 2, result.stdout + result.stderr
    said = result.stderr.strip()
    assert said.startswith("relay: invalid configuration: ") and "\n" not in said, said
    assert f"{variable}: give a" in said


@pytest.mark.parametrize("command", [["api"], ["worker"]])
def test_api_and_worker_need_a_redis_url(tmp_path: Path, command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", *command],
        env=dev_env(tmp_path),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "RELAY_REDIS_URL" in result.stderr.decode()


@pytest.fixture
def api_process(redis_server: RedisServer) -> Iterator[str]:
    port = free_port()
    env = relay_env(redis_server.url, RELAY_MAX_BODY_BYTES="4096")
    api = spawn_relay(["api", "--port", str(port)], env, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz")
        yield base
    finally:
        api.send_signal(signal.SIGTERM)
        log = api.communicate(timeout=15)[1].decode()
    # uvicorn re-raises the signal once it has shut down gracefully.
    assert api.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log


def test_token_create_prints_a_token_the_api_accepts(
    redis_server: RedisServer, api_process: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "token", "create", "--role", "admin", "--name", "ops"],
        env=relay_env(redis_server.url),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.decode().strip()
    assert token.startswith("rly_") and "\n" not in token
    listed = httpx.get(api_process + "/v1/tokens", headers={"authorization": f"Bearer {token}"})
    assert listed.status_code == 200
    assert "ops" in [t["name"] for t in listed.json()["data"]]
    # `relay api` does not name the server software it runs on.
    assert "server" not in listed.headers and listed.headers["x-request-id"]


def test_token_create_refuses_a_tenant_token_without_tenant(redis_server: RedisServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "token", "create", "--role", "tenant"],
        env=relay_env(redis_server.url),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "tenant_id" in result.stderr.decode()


def test_api_refuses_a_chunked_body_over_the_limit(
    redis_server: RedisServer, api_process: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "token", "create", "--role", "admin"],
        env=relay_env(redis_server.url),
        capture_output=True,
        timeout=30,
    )
    token = result.stdout.decode().strip()

    def body() -> Iterator[bytes]:
        yield b'{"role": "admin", "name": "'
        for _ in range(20):
            yield b"y" * 1000
        yield b'"}'

    response = httpx.post(
        api_process + "/v1/tokens",
        content=body(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


def test_worker_starts_connects_and_stops_cleanly(redis_server: RedisServer) -> None:
    worker = spawn_relay(
        ["worker"], relay_env(redis_server.url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    lines: list[str] = []

    def connected() -> bool:
        assert worker.stdout is not None
        line = worker.stdout.readline().decode()
        lines.append(line)
        return "worker connected" in line

    wait_until(connected, timeout=20, interval=0)
    worker.send_signal(signal.SIGTERM)
    worker.wait(15)
    assert worker.returncode == 0, "".join(lines)


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


# A Redis that may evict: relay's keys would vanish when it fills (see README, Durability).
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
@pytest.mark.parametrize(
    "command", [["api", "--port", "0"], ["worker"], ["config", "check", "--connect"]]
)
def test_api_worker_and_connect_check_refuse_a_redis_that_may_evict(
    own_redis: RedisServer, command: list[str], policy: str
) -> None:
    redis.Redis(port=own_redis.port).config_set("maxmemory-policy", policy)
    result = _run(command, relay_env(own_redis.url))
    assert result.returncode == 2, result.stdout + result.stderr
    said = result.stderr.splitlines()[-1]
    assert said.startswith("relay: ") and "maxmemory-policy" in said, said
    assert policy in said and "noeviction" in said and "RELAY_ALLOW_EVICTION" in said, said


def test_a_worker_refuses_a_redis_that_will_not_say_its_policy(own_redis: RedisServer) -> None:
    admin = redis.Redis(port=own_redis.port)
    admin.acl_setuser(
        "relay", enabled=True, passwords=["+pw"], keys="*", commands=["+@all", "-info"]
    )
    result = _run(["worker"], relay_env(own_redis.url.replace("://", "://relay:pw@")))
    assert result.returncode == 2, result.stdout + result.stderr
    said = result.stderr.splitlines()[-1]
    assert "cannot read Redis's maxmemory-policy" in said and "noeviction" in said, said


def test_allow_eviction_runs_anyway_and_says_so(own_redis: RedisServer) -> None:
    redis.Redis(port=own_redis.port).config_set("maxmemory-policy", "volatile-ttl")
    env = relay_env(own_redis.url, RELAY_ALLOW_EVICTION="true")
    checked = _run(["config", "check", "--connect"], env)
    assert checked.returncode == 0, checked.stderr
    assert "RELAY_ALLOW_EVICTION=true" in checked.stdout
    assert "volatile-ttl" in checked.stderr and "maxmemory-policy" in checked.stderr

    worker = spawn_relay(["worker"], env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []

    def connected() -> bool:
        assert worker.stdout is not None
        line = worker.stdout.readline().decode()
        lines.append(line)
        return "worker connected" in line

    try:
        wait_until(connected, timeout=20, interval=0)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(15)
    warned = [line for line in lines if "maxmemory-policy" in line]
    assert warned and '"level":"warning"' in warned[0] and "volatile-ttl" in warned[0], lines
