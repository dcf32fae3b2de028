"""Configuration: every RELAY_* variable, defaults, and errors that name the variable."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from relay.config import MAX_BODY_BYTES_CEILING, ConfigError, load_settings
from relay.store.connect import parse_sentinel_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_follow_the_contract() -> None:
    s = load_settings()
    assert s.redis_url is None and s.data_dir == Path(".relay") and s.admin_token is None
    assert s.retry_schedule.schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert s.delivery_timeout == 15 and s.allow_private_targets is False
    assert s.retention_days == 30 and s.max_body_bytes == 1_048_576
    assert s.allowed_cidrs == () and s.disable_after == 432_000
    assert 1 <= s.endpoint_concurrency <= 16
    assert s.redis_min_replicas == 0
    assert s.test_sends_per_minute == 10 and s.propagate_trace_context is False
    assert s.max_batch_events == 100


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://127.0.0.1:6399/2")
    monkeypatch.setenv("RELAY_RETRY_SCHEDULE", "1, 2,3")
    monkeypatch.setenv("RELAY_ALLOWED_CIDRS", "10.1.0.0/16,fd00::/8")
    monkeypatch.setenv("RELAY_ALLOW_PRIVATE_TARGETS", "true")
    monkeypatch.setenv("RELAY_SECRET_KEYS", "a,b")
    s = load_settings()
    assert s.redis_url == "redis://127.0.0.1:6399/2"
    assert s.retry_schedule.schedule == (1, 2, 3)
    assert s.allowed_cidrs == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert s.allow_private_targets is True
    assert [k.get_secret_value() for k in s.secret_keys] == ["a", "b"]


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RELAY_RETENTION_DAYS=7\n")
    assert load_settings().retention_days == 7


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_DELIVERY_TIMEOUT", "0"),
        ("RELAY_DELIVERY_TIMEOUT", "soon"),
        ("RELAY_RETRY_SCHEDULE", "5,x"),
        ("RELAY_RETRY_SCHEDULE", "5,-1"),
        ("RELAY_RETRY_SCHEDULE", ","),
        ("RELAY_RETENTION_DAYS", "0"),
        ("RELAY_MAX_BODY_BYTES", "ten"),
        ("RELAY_MAX_BODY_BYTES", str(MAX_BODY_BYTES_CEILING + 1)),
        ("RELAY_MAX_BATCH_EVENTS", "0"),
        ("RELAY_MAX_BATCH_EVENTS", "1001"),
        ("RELAY_MAX_BATCH_EVENTS", "many"),
        ("RELAY_ALLOWED_CIDRS", "10.0.0.0/33"),
        ("RELAY_ALLOW_PRIVATE_TARGETS", "perhaps"),
        ("RELAY_ENDPOINT_CONCURRENCY", "0"),
        ("RELAY_DISABLE_AFTER", "-5"),
        ("RELAY_REDIS_URL", "http://redis.example:6379/0"),
        ("RELAY_REDIS_URL", "redis://redis.example:6379/zero"),
        ("RELAY_REDIS_URL", "redis+sentinel://10.0.0.1:26379"),
        ("RELAY_REDIS_URL", "redis+sentinel://10.0.0.1:26379/"),
        ("RELAY_REDIS_URL", "redis+sentinel:///relay"),
        ("RELAY_REDIS_URL", "redis+sentinel://10.0.0.1:port/relay"),
        ("RELAY_REDIS_URL", "redis+sentinel://10.0.0.1:26379,:26380/relay"),
        ("RELAY_REDIS_URL", "redis+sentinel://10.0.0.1:26379/relay/one"),
        ("RELAY_REDIS_URL", "redis+sentinel://10.0.0.1:26379/relay/0/extra"),
        ("RELAY_REDIS_URL", "redis+sentinel://10.0.0.1:26379/relay?db=1"),
        ("RELAY_REDIS_MIN_REPLICAS", "-1"),
        ("RELAY_REDIS_MIN_REPLICAS", "some"),
        ("RELAY_TEST_SENDS_PER_MINUTE", "-1"),
        ("RELAY_TEST_SENDS_PER_MINUTE", "many"),
        ("RELAY_PROPAGATE_TRACE_CONTEXT", "perhaps"),
    ],
)
def test_bad_values_are_reported_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert name in str(caught.value)


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "redis+sentinel://:s%40cret@10.0.0.1:26380,[fd00::2]:26381,sentinel-c/relay-main/2"
    monkeypatch.setenv("RELAY_REDIS_URL", url)
    monkeypatch.setenv("RELAY_REDIS_MIN_REPLICAS", "1")
    s = load_settings()
    assert s.redis_url == url and s.redis_min_replicas == 1
    address = parse_sentinel_url(url)
    assert address.sentinels == (
        ("10.0.0.1", 26380),
        ("fd00::2", 26381),
        ("sentinel-c", 26379),  # Sentinel's own port when none is given
    )
    assert address.service == "relay-main" and address.db == 2
    assert address.password == "s@cret" and address.username is None


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://:hunter2@10.0.0.1:x/relay", "redis://:hunter2@redis.example:x/0"],
)
def test_a_bad_redis_url_is_reported_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("RELAY_REDIS_URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "RELAY_REDIS_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)
