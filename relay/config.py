"""Settings: every RELAY_* variable, read and validated once at start-up, then passed in."""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import pydantic
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relay import tracing
from relay.delivery.concurrency import ConcurrencyRule
from relay.delivery.policy import RetryPolicy
from relay.logs import LogFormat, LogLevel
from relay.store.connect import check_redis_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The largest RELAY_MAX_BODY_BYTES. An event's payload is copied whole by the Redis calls that
# accept it, claim its deliveries and hand it to history, and each holds Redis for every other
# client meanwhile: past this size one such call may hold it for more than 50 ms on a busy
# 2-core machine (README, "Large events").
MAX_BODY_BYTES_CEILING = 4 * 1_048_576

# The largest whole body of a batch of events (POST /v1/events/batch), whatever
# RELAY_MAX_BATCH_EVENTS and RELAY_MAX_BODY_BYTES allow: the API holds a batch's parsed JSON,
# several times its size, while it works on it.
MAX_BATCH_BODY_BYTES = 16 * 1_048_576

# The ceiling of an endpoint's adaptive concurrency when RELAY_ENDPOINT_CONCURRENCY_MAX is unset.
DEFAULT_CONCURRENCY_MAX = 64

# What asyncpg connects to.
_DATABASE_SCHEMES = ("postgresql", "postgres")
# RELAY_* names read by the operator commands rather than by Settings.
_CLIENT_VARIABLES = ("RELAY_URL", "RELAY_TOKEN")


class ConfigError(Exception):
    """A RELAY_* variable is missing or malformed; the message names it."""


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """relay's configuration (README, Configuration); field `x` is read from `RELAY_X`."""

    model_config = SettingsConfigDict(
        env_prefix="RELAY_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        arbitrary_types_allowed=True,
    )

    redis_url: str | None = None
    # Replicas that must hold an event before it is answered 202 (Redis WAIT); 0 waits for none.
    redis_min_replicas: int = Field(0, ge=0, le=100)
    database_url: str | None = None
    data_dir: Path = Path(".relay")
    admin_token: SecretStr | None = None
    secret_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    retry_schedule: Annotated[RetryPolicy, NoDecode] = RetryPolicy()
    delivery_timeout: float = Field(15.0, gt=0, le=300)
    allow_private_targets: bool = False
    # Run against a Redis whose maxmemory-policy may evict relay's keys (any but noeviction),
    # which `api`, `worker` and `config check --connect` otherwise refuse.
    allow_eviction: bool = False
    retention_days: int = Field(30, ge=1, le=3650)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # Most events in one POST /v1/events/batch: every item is validated, fanned out and written
    # while the request holds its connection, so the bound keeps one request's work short.
    max_batch_events: int = Field(100, ge=1, le=1000)
    allowed_cidrs: Annotated[tuple[IPNetwork, ...], NoDecode] = ()
    endpoint_concurrency: int = Field(4, ge=1, le=1000)
    # The ceiling of an endpoint's adaptive concurrency (see relay.delivery.concurrency): at
    # 20 ms an answer, 64 attempts in flight are over 3,000 deliveries a second, more than a
    # worker makes, while an endpoint's 64 hanging attempts are still little of a worker's 100.
    # Unset: 64, or RELAY_ENDPOINT_CONCURRENCY if that is higher.
    endpoint_concurrency_max: int = Field(
        default_factory=lambda data: max(DEFAULT_CONCURRENCY_MAX, data["endpoint_concurrency"]),
        ge=1,
        le=10_000,
    )
    # Half of one worker's attempts: a tenant whose endpoints all hang leaves the other half of
    # even a lone worker to everyone else, while 50 attempts in flight are more than a tenant
    # with answering endpoints needs to keep a worker busy (see README, Fairness).
    tenant_concurrency: int = Field(50, ge=1, le=100_000)
    disable_after: int = Field(432_000, ge=1)
    # Who may embed the console in a frame (CSP `frame-ancestors` sources), e.g. a platform's
    # settings page showing a portal link.
    console_frame_ancestors: str = "'none'"
    # The base of every absolute link relay makes (portal links); unset, the request's own
    # scheme and Host, which behind a proxy are only right when uvicorn trusts its headers.
    public_url: str | None = None
    max_webhooks_per_tenant: int = Field(100, ge=1, le=100_000)
    capture_response_bytes: int = Field(4096, ge=0, le=1_048_576)
    # Not in the contract's list: API requests per second per token; 0 turns the limit off.
    api_rate_limit: int = Field(1000, ge=0)
    # Each test send makes relay POST to a tenant-chosen host at once: per tenant, 0 = no limit.
    test_sends_per_minute: int = Field(10, ge=0)
    # Send the W3C trace context to receivers: it carries the upstream's trace id to customers.
    propagate_trace_context: bool = False
    # Failed authentications per client address per minute before that address gets 429s
    # without any token being looked up; 0 turns the limit off.
    auth_failures_per_minute: int = Field(30, ge=0)
    # Unset: /metrics is open to whoever reaches the port (it shows counts, never payloads).
    metrics_token: SecretStr | None = None
    # `relay worker` answers GET /healthz on this port (every interface) for liveness probes:
    # 503 once its claim loop is stuck. 0: no server (several workers may share a host).
    worker_health_port: int = Field(0, ge=0, le=65535)
    # Unset means `json`, except under `relay dev`, which a person reads at a terminal.
    log_format: LogFormat | None = None
    log_level: LogLevel = LogLevel.INFO

    _split_lists = field_validator("secret_keys", "retry_schedule", mode="before")(_split)

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        return RetryPolicy.parse(value) if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value:  # unset or empty: `relay dev` runs its own, `api` and `worker` refuse
            check_redis_url(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        # Unset or empty: `relay dev` runs its own, `api` and `worker` refuse.
        if value and urlsplit(value).scheme not in _DATABASE_SCHEMES:
            raise ValueError("give a postgresql:// (or postgres://) URL")
        return value

    @field_validator("endpoint_concurrency_max")
    @classmethod
    def _check_concurrency_max(cls, value: int, info: pydantic.ValidationInfo) -> int:
        start = info.data.get("endpoint_concurrency")
        if start is not None and value < start:
            raise ValueError(
                f"{value} is below RELAY_ENDPOINT_CONCURRENCY ({start}), where an endpoint's "
                "concurrency starts; set it to that for a fixed concurrency"
            )
        return value

    @field_validator("max_body_bytes")
    @classmethod
    def _check_body_ceiling(cls, value: int) -> int:
        if value > MAX_BODY_BYTES_CEILING:
            raise ValueError(
                f"{value} is above the ceiling of {MAX_BODY_BYTES_CEILING} bytes "
                f"({MAX_BODY_BYTES_CEILING // 1_048_576} MiB): a larger event would hold Redis "
                "up for every other client while it is accepted and delivered"
            )
        return value

    @field_validator("console_frame_ancestors")
    @classmethod
    def _check_sources(cls, value: str) -> str:
        # One directive's source list: a `;` or `,` would smuggle in another directive or
        # policy, and a line break would end the header.
        value = value.strip()
        if not value or any(c in value for c in ";,\r\n"):
            raise ValueError(
                "give CSP sources separated by spaces, e.g. 'self' https://app.example"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if not value:
            return None
        example = "e.g. https://relay.example.com"
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(f"give a base URL without whitespace or control characters, {example}")
        if "?" in value or "#" in value or "@" in value:
            raise ValueError(f"give a base URL without a query, fragment or credentials, {example}")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises on a malformed port)
        except ValueError:
            raise ValueError(f"give a well-formed base URL, {example}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"give an absolute http:// or https:// URL, {example}")
        # Links append `/console…` to it: a trailing slash would double theirs.
        return value.rstrip("/")

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("allowed_cidrs", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        value = _split(value)
        if not isinstance(value, list):
            return value
        networks = []
        for item in value:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not a CIDR such as 10.0.0.0/8") from None
        return networks

    @property
    def max_batch_body_bytes(self) -> int:
        """The largest body of a batch of events: RELAY_MAX_BATCH_EVENTS events of
        RELAY_MAX_BODY_BYTES each, up to MAX_BATCH_BODY_BYTES."""
        return min(self.max_batch_events * self.max_body_bytes, MAX_BATCH_BODY_BYTES)

    @property
    def endpoint_concurrency_rule(self) -> ConcurrencyRule:
        """Where an endpoint's concurrency starts and how far it may grow."""
        return ConcurrencyRule(self.endpoint_concurrency, self.endpoint_concurrency_max)

    @property
    def retention_seconds(self) -> int:
        """How long events, deliveries and attempts are kept, in seconds."""
        return self.retention_days * 86_400


_MASK = "********"
# Fields whose values are credentials even when typed as plain strings.
_SECRET_WORDS = ("token", "secret", "password", "key")


def redacted_url(url: str | None) -> str | None:
    """A URL safe to show or log: its password, if any, masked."""
    return None if url is None else _without_password(url)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{_MASK}@{host}"))


def _shown(name: str, value: object) -> str:
    if name == "log_format" and value is None:
        return LogFormat.JSON.value  # what `api` and `worker` use when it is unset
    if value is None or value == ():
        return "(unset)"
    if isinstance(value, SecretStr) or any(word in name for word in _SECRET_WORDS):
        count = len(value) if isinstance(value, tuple) else 1
        return _MASK if count == 1 else f"{_MASK} ({count} values)"
    if isinstance(value, RetryPolicy):
        value = value.schedule
    if isinstance(value, tuple):
        return ",".join(_shown(name, item) for item in value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if name in {"redis_url", "database_url"}:
        return _without_password(str(value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def effective(settings: Settings) -> list[tuple[str, str]]:
    """Every RELAY_* variable with the value in force, credentials masked."""
    return [
        (f"RELAY_{name.upper()}", _shown(name, getattr(settings, name)))
        for name in type(settings).model_fields
    ]


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and `.env`); raise ConfigError naming each bad variable."""
    problems = []
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            if err["type"] == "default_factory_not_called":
                continue  # a default made from another setting, whose own error is reported
            name = "RELAY_" + str(err["loc"][0]).upper() if err["loc"] else "RELAY_*"
            problems.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
    except ValueError as exc:  # e.g. a malformed CIDR raised before pydantic wraps it
        problems.append(str(exc))
    problems += tracing.endpoint_problems()
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return settings


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """A warning for each RELAY_* name that nothing in relay reads, naming the closest that is
    read: a misspelled setting is otherwise silently left at its default."""
    known = [*(f"RELAY_{name.upper()}" for name in Settings.model_fields), *_CLIENT_VARIABLES]
    warnings = []
    for name in sorted(n for n in environ if n.startswith("RELAY_") and n not in known):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a relay setting and is ignored{hint}")
    return warnings
