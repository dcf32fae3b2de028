"""`relay config check`: the environment checked as `api` and `worker` would, secrets masked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from relay.config import MAX_BODY_BYTES_CEILING, Settings
from relay.history import migrations
from tests.support import TEST_MASTER_KEY, PostgresServer, RedisServer, SentinelGroup

pytestmark = pytest.mark.system

ADMIN = "rly_config_check_admin_token_0123456789"
REDIS_PASSWORD = "hunter2-redis-password"
DATABASE_PASSWORD = "hunter3-database-password"


def _check(tmp_path: Path, *options: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-m", "relay", "config", "check", *options],
        env={**clean, **env},
        cwd=tmp_path,  # no stray .env
        capture_output=True,
        text=True,
        timeout=30,
    )


def _good(**extra: str) -> dict[str, str]:
    return {
        "RELAY_REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0",
        "RELAY_DATABASE_URL": f"postgresql://relay:{DATABASE_PASSWORD}@db.internal:5432/relay",
        "RELAY_SECRET_KEYS": TEST_MASTER_KEY,
        "RELAY_ADMIN_TOKEN": ADMIN,
        **extra,
    }


def test_prints_every_setting_with_secrets_masked(tmp_path: Path) -> None:
    result = _check(tmp_path, **_good(RELAY_RETRY_SCHEDULE="1,2", RELAY_LOG_LEVEL="WARNING"))
    assert result.returncode == 0, result.stderr
    shown = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert set(shown) >= {f"RELAY_{name.upper()}" for name in Settings.model_fields}
    assert shown["RELAY_REDIS_URL"] == "redis://:********@redis.internal:6379/0"
    assert shown["RELAY_DATABASE_URL"] == "postgresql://relay:********@db.internal:5432/relay"
    assert DATABASE_PASSWORD not in result.stdout + result.stderr
    assert shown["RELAY_ADMIN_TOKEN"] == "********"
    assert shown["RELAY_SECRET_KEYS"] == "********"
    assert shown["RELAY_RETRY_SCHEDULE"] == "1,2" and shown["RELAY_LOG_LEVEL"] == "warning"
    assert shown["RELAY_LOG_FORMAT"] == "json"
    assert shown["RELAY_PUBLIC_URL"] == "(unset)"
    assert shown["RELAY_MAX_BATCH_EVENTS"] == "100"
    assert "tracing: off" in result.stdout
    for secret in (ADMIN, TEST_MASTER_KEY, REDIS_PASSWORD):
        assert secret not in result.stdout + result.stderr


def test_says_where_traces_go(tmp_path: Path) -> None:
    result = _check(tmp_path, **_good(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318"))
    assert result.returncode == 0, result.stderr
    assert "tracing: on, OTLP/HTTP to http://127.0.0.1:4318" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_DELIVERY_TIMEOUT", "soon"),
        ("RELAY_LOG_FORMAT", "xml"),
        ("RELAY_LOG_LEVEL", "loud"),
        ("RELAY_SECRET_KEYS", "not-a-key"),
        ("RELAY_REDIS_URL", ""),
        ("RELAY_ALLOWED_CIDRS", "10.0.0.0/99"),
        ("RELAY_PUBLIC_URL", "relay.example.com"),
        ("RELAY_PUBLIC_URL", "ftp://relay.example.com"),
        ("RELAY_PUBLIC_URL", "https://relay.example.com/?tenant=1"),
        ("RELAY_PUBLIC_URL", "https://relay.example.com/#console"),
        ("RELAY_PUBLIC_URL", "https://user:pw@relay.example.com"),
        ("RELAY_DATABASE_URL", "mysql://relay@db.internal/relay"),
        ("RELAY_WORKER_HEALTH_PORT", "70000"),
        ("RELAY_WORKER_HEALTH_PORT", "http"),
        ("RELAY_MAX_BATCH_EVENTS", "0"),
        ("RELAY_ENDPOINT_CONCURRENCY_MAX", "0"),
        ("RELAY_ENDPOINT_CONCURRENCY_MAX", "many"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not-a-url"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318"),
    ],
)
def test_a_bad_variable_fails_the_check_by_name(tmp_path: Path, variable: str, value: str) -> None:
    result = _check(tmp_path, **_good(**{variable: value}))
    assert result.returncode != 0
    assert variable in result.stderr
    assert ADMIN not in result.stdout + result.stderr


def test_the_concurrency_ceiling_is_shown_and_may_not_be_below_where_it_starts(
    tmp_path: Path,
) -> None:
    default = _check(tmp_path, **_good())
    raised = _check(tmp_path, **_good(RELAY_ENDPOINT_CONCURRENCY="100"))
    below = _check(
        tmp_path, **_good(RELAY_ENDPOINT_CONCURRENCY="8", RELAY_ENDPOINT_CONCURRENCY_MAX="4")
    )
    assert "RELAY_ENDPOINT_CONCURRENCY_MAX=64" in default.stdout.splitlines()
    # Unset, it is never below where an endpoint starts.
    assert "RELAY_ENDPOINT_CONCURRENCY_MAX=100" in raised.stdout.splitlines()
    assert below.returncode == 2
    assert (
        "RELAY_ENDPOINT_CONCURRENCY_MAX: 4 is below RELAY_ENDPOINT_CONCURRENCY (8)" in below.stderr
    )


def test_a_body_limit_past_its_ceiling_fails_the_check_naming_the_ceiling(
    tmp_path: Path,
) -> None:
    ceiling = MAX_BODY_BYTES_CEILING
    over = _check(tmp_path, **_good(RELAY_MAX_BODY_BYTES=str(ceiling + 1)))
    assert over.returncode != 0
    assert f"RELAY_MAX_BODY_BYTES: {ceiling + 1} is above the ceiling of {ceiling} bytes" in (
        over.stderr
    )
    at = _check(tmp_path, **_good(RELAY_MAX_BODY_BYTES=str(ceiling)))
    assert at.returncode == 0, at.stderr
    assert f"RELAY_MAX_BODY_BYTES={ceiling}" in at.stdout.splitlines()


def test_connect_reaches_redis_and_postgresql_and_names_the_one_that_fails(
    tmp_path: Path, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    env = _good(RELAY_REDIS_URL=redis_server.url, RELAY_DATABASE_URL=postgres_server.url)
    reached = _check(tmp_path, "--connect", **env)
    assert reached.returncode == 0, reached.stderr
    assert "redis: 7." in reached.stdout
    assert f"schema at version {migrations.latest()}" in reached.stdout

    wrong = postgres_server.url.replace("://relay:", "://relay:not-the-password", 1)
    refused = _check(tmp_path, "--connect", **{**env, "RELAY_DATABASE_URL": wrong})
    assert refused.returncode == 2
    assert "RELAY_DATABASE_URL: cannot reach PostgreSQL" in refused.stderr
    assert "not-the-password" not in refused.stderr


def test_a_sentinel_url_is_masked_and_connect_reaches_the_primary_the_sentinels_name(
    tmp_path: Path, sentinel_group: SentinelGroup, postgres_server: PostgresServer
) -> None:
    masked = _check(
        tmp_path,
        **_good(RELAY_REDIS_URL=f"redis+sentinel://:{REDIS_PASSWORD}@s1:26379,s2:26379/relay/0"),
    )
    assert masked.returncode == 0, masked.stderr
    assert "RELAY_REDIS_URL=redis+sentinel://:********@s1:26379,s2:26379/relay/0" in (
        masked.stdout.splitlines()
    )
    assert REDIS_PASSWORD not in masked.stdout + masked.stderr

    env = _good(RELAY_REDIS_URL=sentinel_group.url, RELAY_DATABASE_URL=postgres_server.url)
    reached = _check(tmp_path, "--connect", RELAY_REDIS_MIN_REPLICAS="1", **env)
    assert reached.returncode == 0, reached.stderr
    primary = sentinel_group.primary().port
    assert f"primary on port {primary}, replicas connected: 1" in reached.stdout

    # More replicas than the primary has: every event would be refused, so the check fails.
    short = _check(tmp_path, "--connect", RELAY_REDIS_MIN_REPLICAS="2", **env)
    assert short.returncode == 2
    assert "RELAY_REDIS_MIN_REPLICAS" in short.stderr


@pytest.mark.parametrize(
    ("variable", "value", "wanted"),
    [
        ("RELAY_REDIS_URL", "http://x", "redis://, rediss://, unix:// or redis+sentinel:// URL"),
        ("RELAY_DATABASE_URL", "mysql://db/relay", "postgresql:// (or postgres://) URL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not-a-url", "http:// or https:// URL"),
    ],
)
def test_a_url_of_the_wrong_kind_is_refused_saying_which_kinds_are_right(
    tmp_path: Path, variable: str, value: str, wanted: str
) -> None:
    result = _check(tmp_path, **_good(**{variable: value}))
    assert result.returncode == 2
    assert f"{variable}: give a" in result.stderr and wanted in result.stderr
    assert "Traceback" not in result.stderr


def test_a_misspelled_variable_is_named_with_the_one_meant(tmp_path: Path) -> None:
    result = _check(
        tmp_path,
        **_good(RELAY_RETRY_SCHEDUEL="1,2", RELAY_URL="http://relay:8000", RELAY_TOKEN="rly_x"),
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("relay: warning")]
    assert warnings == [
        "relay: warning: RELAY_RETRY_SCHEDUEL is not a relay setting and is ignored; "
        "did you mean RELAY_RETRY_SCHEDULE?"
    ]


def test_connect_checks_the_redis_password_and_says_version_and_policy(
    tmp_path: Path, own_redis: RedisServer, postgres_server: PostgresServer
) -> None:
    redis.Redis(port=own_redis.port).config_set("requirepass", REDIS_PASSWORD)
    with_password = own_redis.url.replace("://", f"://:{REDIS_PASSWORD}@")
    env = _good(RELAY_REDIS_URL=with_password, RELAY_DATABASE_URL=postgres_server.url)
    reached = _check(tmp_path, "--connect", **env)
    assert reached.returncode == 0, reached.stderr
    said = next(line for line in reached.stdout.splitlines() if line.startswith("redis: "))
    assert said.startswith("redis: 7.") and "maxmemory-policy noeviction" in said

    wrong = own_redis.url.replace("://", "://:not-the-redis-password@")
    refused = _check(tmp_path, "--connect", **{**env, "RELAY_REDIS_URL": wrong})
    assert refused.returncode == 2
    assert "RELAY_REDIS_URL: cannot reach Redis" in refused.stderr
    assert "not-the-redis-password" not in refused.stdout + refused.stderr
