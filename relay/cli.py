"""The `relay` command: dev, api, worker, token, keys, config, and the operator commands."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from relay import __version__
from relay.errors import RelayError
from relay.operator import UsageError
from relay.operator import add_commands as add_operator_commands
from relay.roles import Role

if TYPE_CHECKING:
    from relay.config import Settings

# Each command imports what it needs when it runs: an operator command is one HTTP call and
# should not pay for loading the settings, Redis, the web framework or tracing (see operator.py).
log = logging.getLogger("relay.cli")

T = TypeVar("T")


class CliError(Exception):
    """A problem to report in one line, exit status 2."""


def _warn(warning: str) -> None:
    print(f"relay: warning: {warning}", file=sys.stderr)


def _log_warning(warning: str) -> None:
    log.warning("%s", warning)


def _settings(warn: Callable[[str], None] = _log_warning, **overrides: Any) -> Settings:
    """The settings, or CliError naming each bad variable; what is only suspicious goes to
    `warn` (the log, or for a check the terminal)."""
    from relay import logs
    from relay.config import ConfigError, load_settings, unknown_variables

    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    logs.configure(settings.log_format or logs.LogFormat.JSON, settings.log_level)
    for warning in unknown_variables():
        warn(warning)
    return settings


def _required(settings: Settings, need: Callable[[Settings], T]) -> T:
    """What `need` takes from the settings, or a CliError naming the missing variable."""
    from relay.resources import MissingSetting

    try:
        return need(settings)
    except MissingSetting as exc:
        raise CliError(str(exc)) from None


def _server_settings(warn: Callable[[str], None] = _log_warning) -> Settings:
    """Settings for `api` and `worker`, with what they cannot run without checked up front."""
    from relay.resources import keyring, require_database_url, require_redis_url

    settings = _settings(warn)
    for need in (require_redis_url, require_database_url, keyring):
        _required(settings, need)
    return settings


def _refuse_eviction(risk: str | None, settings: Settings) -> str | None:
    """A Redis that may evict relay's keys stops the command (CliError), unless the operator
    allowed it; then the warning to give."""
    if risk is None:
        return None
    if not settings.allow_eviction:
        raise CliError(f"{risk}; or set RELAY_ALLOW_EVICTION=true to run anyway")
    return f"{risk}; running anyway (RELAY_ALLOW_EVICTION=true)"


def _redis_keeps_keys(settings: Settings) -> None:
    """Before `api` or `worker` starts: wait for Redis to answer, then refuse one that may
    evict relay's keys."""
    from relay.config import redacted_url
    from relay.delivery.outage import REDIS_AWAY, Backoff
    from relay.resources import require_redis_url
    from relay.store.connect import connect_redis
    from relay.store.memory import eviction_risk, policy

    async def read_policy() -> str | None:
        client = connect_redis(_required(settings, require_redis_url))
        backoff = Backoff()
        try:
            while True:
                try:
                    return await policy(client)
                except REDIS_AWAY as exc:
                    url = redacted_url(settings.redis_url)
                    log.warning("waiting for redis at %s: %s", url, exc)
                    await backoff.wait()
        finally:
            await client.aclose()

    if warning := _refuse_eviction(eviction_risk(asyncio.run(read_policy())), settings):
        log.warning("%s", warning)


def _redis_url(settings: Settings) -> str:
    """RELAY_REDIS_URL, or the embedded Redis of a `relay dev` running on this data dir."""
    from relay.runtime import StaleRuntime, running

    if settings.redis_url:
        return settings.redis_url
    try:
        dev = running(settings.data_dir)
    except StaleRuntime as exc:
        raise CliError(str(exc)) from None
    if dev is not None:
        return dev.redis_url
    raise CliError("RELAY_REDIS_URL is not set (and no `relay dev` is running on this data dir).")


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    from relay.processes import die_with_parent

    return subprocess.Popen(
        [sys.executable, "-m", "relay", *args], env=env, preexec_fn=die_with_parent
    )


def _stop_all(children: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _wait_until_serving(url: str, children: list[subprocess.Popen[bytes]]) -> bool:
    """Wait until the API answers (True), or until a child exits or 60 s pass (False)."""
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and all(c.poll() is None for c in children):
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _dev_environment(settings: Settings, secrets: dict[str, str]) -> dict[str, str]:
    from relay import logs

    env = dict(os.environ)
    admin = settings.admin_token
    env["RELAY_ADMIN_TOKEN"] = admin.get_secret_value() if admin else secrets["admin_token"]
    if not settings.secret_keys:
        env["RELAY_SECRET_KEYS"] = secrets["secret_key"]
    # Trying relay means sending to a receiver on this machine; an explicit setting still wins.
    explicit = "allow_private_targets" in settings.model_fields_set
    allow = settings.allow_private_targets or not explicit
    env["RELAY_ALLOW_PRIVATE_TARGETS"] = "true" if allow else "false"
    if settings.log_format is None:  # a person reads dev's lines at a terminal
        env["RELAY_LOG_FORMAT"] = logs.LogFormat.TEXT
    return env


def _migrate(url: str) -> None:
    """Bring the database to this release's schema, as `relay dev` does before its children."""
    import asyncpg

    from relay.config import redacted_url
    from relay.history import migrations

    try:
        applied = asyncio.run(migrations.apply(url))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CliError(f"could not migrate the database at {redacted_url(url)}: {exc}") from None
    if applied:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        print(f"relay dev: applied database migrations {names}", flush=True)


def cmd_dev(args: argparse.Namespace) -> int:
    """The stores (embedded unless their URLs are set), the API and one worker, until Ctrl-C."""
    from relay import logs
    from relay.embedded import (
        EmbeddedPostgres,
        EmbeddedPostgresError,
        EmbeddedRedis,
        EmbeddedRedisError,
        data_dir_ready,
    )
    from relay.runtime import DataDirBusy, DevClaim, Runtime, dev_secrets

    settings = _settings()
    if settings.redis_min_replicas and not settings.redis_url:
        raise CliError(
            "RELAY_REDIS_MIN_REPLICAS: the embedded Redis has no replicas, so every event would "
            "be answered 503; unset it, or set RELAY_REDIS_URL to a Redis that has replicas."
        )
    data_dir = data_dir_ready(settings.data_dir)
    claim = DevClaim(data_dir)
    try:
        claim.acquire()
    except DataDirBusy as exc:
        raise CliError(str(exc)) from None
    if claim.stale is not None:
        print(
            f"relay dev: PID {claim.stale.pid} did not stop cleanly on this data dir; taking over",
            flush=True,
        )
    env = _dev_environment(settings, dev_secrets(data_dir))
    logs.configure(settings.log_format or logs.LogFormat.TEXT, settings.log_level)

    stopping = False

    def on_signal(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    shown_host = "localhost" if args.host in {"127.0.0.1", "0.0.0.0"} else args.host
    url = f"http://{shown_host}:{args.port}"
    redis = EmbeddedRedis(data_dir)
    database = EmbeddedPostgres(data_dir)
    embedded: list[str] = []
    children: list[subprocess.Popen[bytes]] = []
    status = 0
    try:
        if settings.redis_url:
            env["RELAY_REDIS_URL"] = settings.redis_url
        else:
            try:
                env["RELAY_REDIS_URL"] = redis.start()
            except EmbeddedRedisError as exc:
                raise CliError(str(exc)) from None
            embedded.append("Redis")
        if settings.database_url:
            env["RELAY_DATABASE_URL"] = settings.database_url
        else:
            try:
                env["RELAY_DATABASE_URL"] = database.start()
            except EmbeddedPostgresError as exc:
                raise CliError(str(exc)) from None
            embedded.append("PostgreSQL")
        # An external database too: `api` and `worker` refuse a schema they do not know.
        _migrate(env["RELAY_DATABASE_URL"])
        claim.publish(Runtime(os.getpid(), url, env["RELAY_REDIS_URL"], env["RELAY_DATABASE_URL"]))
        children += [
            _spawn(["api", "--host", args.host, "--port", str(args.port)], env),
            _spawn(["worker"], env),
        ]
        probe = f"http://127.0.0.1:{args.port}" if shown_host == "localhost" else url
        if _wait_until_serving(probe, children):
            _banner(url, env, embedded)
        while not stopping:
            exited = [c for c in children if c.poll() is not None]
            if exited:
                print(
                    f"relay dev: a child exited with {exited[0].returncode}; stopping", flush=True
                )
                status = 1
                break
            time.sleep(0.2)
    finally:
        # The children first: they write to the stores until they exit.
        _stop_all(children)
        database.stop()
        redis.stop()
        claim.release()
    print("relay dev: stopped", flush=True)
    return status


def _banner(url: str, env: dict[str, str], embedded: list[str]) -> None:
    print(f"relay {__version__} dev: {url}  (console: {url}/console, docs: /docs)", flush=True)
    print(f"admin token: {env['RELAY_ADMIN_TOKEN']}", flush=True)
    if env["RELAY_ALLOW_PRIVATE_TARGETS"] == "true":
        print(
            "private and loopback webhook targets are allowed (dev mode; "
            "`relay api` and `relay worker` refuse them unless RELAY_ALLOW_PRIVATE_TARGETS=true)",
            flush=True,
        )
    print(
        f"operator CLI: RELAY_URL={url} RELAY_TOKEN=<admin token> .venv/bin/relay deliveries list",
        flush=True,
    )
    stopped = ["the API", "the worker", *embedded]
    print(f"Ctrl-C stops {', '.join(stopped[:-1])} and {stopped[-1]}.", flush=True)


def cmd_api(args: argparse.Namespace) -> int:
    """The HTTP API under uvicorn."""
    import uvicorn

    from relay import tracing
    from relay.app import create_app

    settings = _server_settings()
    _redis_keeps_keys(settings)
    tracing.configure("relay-api")
    app = create_app(settings)
    # What is alive now (modules, the app, its routes and models) lives as long as the
    # process: out of the collector's sight, a full collection walks only what requests made,
    # not all of this again and again. And a request allocates thousands of objects that
    # refcounting frees anyway: collecting every 700 allocations (the default) walked them
    # while still alive. Together these took about a third of a batch's CPU.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # relay.http logs each request, with its id
        log_config=None,  # keep the format `relay` set up
        proxy_headers=True,
        server_header=False,  # which server software answers is no caller's business
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_worker(_: argparse.Namespace) -> int:
    """One delivery worker."""
    import uvloop

    from relay import tracing, worker

    settings = _server_settings()
    _redis_keeps_keys(settings)
    tracing.configure("relay-worker")
    # Each attempt is a couple of Redis calls and one HTTP exchange: the worker spends much of
    # its time in the event loop's socket calls, which uvloop makes cheaper.
    uvloop.run(worker.run(settings))
    return 0


def cmd_keys_generate(_: argparse.Namespace) -> int:
    """Print a new master key for RELAY_SECRET_KEYS."""
    from relay.secrets import generate_master_key

    print(generate_master_key())
    return 0


def cmd_keys_reencrypt(_: argparse.Namespace) -> int:
    """Re-encrypt every secret at rest under the first RELAY_SECRET_KEYS key."""
    from relay.resources import keyring
    from relay.store.connect import connect_redis
    from relay.store.idempotency import IdempotencyStore
    from relay.store.webhooks import WebhookStore
    from relay.webhooks import Webhook, reencrypt

    settings = _settings()
    ring = _required(settings, keyring)

    async def run() -> tuple[int, int, tuple[int, int]]:
        redis = connect_redis(_redis_url(settings))
        store = WebhookStore(redis, settings.max_webhooks_per_tenant)
        changed: set[str] = set()

        def edit(webhook: Webhook) -> Webhook:
            if reencrypt(webhook, ring):
                changed.add(webhook.id)
            return webhook

        try:
            ids = await store.all_ids()
            for webhook_id in ids:
                await store.change(webhook_id, edit)
            # Stored idempotent responses can hold a secret or token shown once.
            responses = await IdempotencyStore(redis, ring).reencrypt()
        finally:
            await redis.aclose()
        return len(changed), len(ids), responses

    changed, total, (responses_changed, responses) = asyncio.run(run())
    print(
        f"re-encrypted the secrets and custom header values of {changed} of {total} webhooks "
        "under the first key"
    )
    print(f"re-encrypted {responses_changed} of {responses} stored idempotent responses")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    """Issue an API token and print it (it is shown only this once)."""
    from relay.store.connect import connect_redis
    from relay.store.tokens import TokenStore
    from relay.tokens import TokenSpec
    from relay.validation import parse

    settings = _settings()
    spec = parse(TokenSpec, {"role": args.role, "tenant_id": args.tenant, "name": args.name or ""})

    async def issue() -> str:
        redis = connect_redis(_redis_url(settings))
        try:
            _, plaintext = await TokenStore(redis).issue(spec)
        finally:
            await redis.aclose()
        return plaintext

    print(asyncio.run(issue()))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the environment as `api` and `worker` would; print what is in force, masked."""
    from relay import tracing
    from relay.config import effective

    settings = _server_settings(_warn)
    for name, value in effective(settings):
        print(f"{name}={value}")
    print(f"tracing: {tracing.describe()}")
    if args.connect:
        for line in asyncio.run(_connect(settings)):
            print(line)
    print("relay config check: ok")
    return 0


async def _connect(settings: Settings) -> list[str]:
    """Reach Redis and PostgreSQL as the processes would; what each said, or CliError naming
    the variable."""
    import asyncpg
    import redis.exceptions

    from relay.history import migrations
    from relay.history.db import POSTGRES_AWAY
    from relay.store.connect import connect_redis
    from relay.store.memory import eviction_risk, policy

    assert settings.redis_url and settings.database_url
    client = connect_redis(settings.redis_url)
    try:
        info = await client.info("server")
        evicts = await policy(client)
        replication = await client.info("replication")
    except (redis.exceptions.RedisError, OSError) as exc:
        raise CliError(f"RELAY_REDIS_URL: cannot reach Redis: {exc}") from None
    finally:
        await client.aclose()
    version = str(info.get("redis_version", "?"))
    if int(version.split(".")[0]) < 7:
        raise CliError(f"RELAY_REDIS_URL: Redis {version} is too old; relay needs Redis 7")
    if warning := _refuse_eviction(eviction_risk(evicts), settings):
        _warn(warning)
    if replication.get("role") != "master":
        raise CliError("RELAY_REDIS_URL: that Redis is a replica; relay writes to the primary")
    replicas = int(replication.get("connected_slaves", 0))
    if replicas < settings.redis_min_replicas:
        raise CliError(
            f"RELAY_REDIS_MIN_REPLICAS: it is {settings.redis_min_replicas}, but the primary has "
            f"{replicas} replicas connected; every event would be answered 503"
        )
    port = info.get("tcp_port", "?")
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=5)
    except (*POSTGRES_AWAY, asyncpg.PostgresError) as exc:
        raise CliError(f"RELAY_DATABASE_URL: cannot reach PostgreSQL: {exc}") from None
    try:
        server = conn.get_server_version()
        await migrations.check(conn)
    except migrations.SchemaMismatch as exc:
        raise CliError(f"RELAY_DATABASE_URL: {exc}") from None
    finally:
        await conn.close()
    return [
        f"redis: {version}, maxmemory-policy {evicts or 'unknown'}, primary on port {port}, "
        f"replicas connected: {replicas}",
        f"postgresql: {server.major}.{server.minor}, schema at version {migrations.latest()}",
    ]


def cmd_migrate(_: argparse.Namespace) -> int:
    """Bring the PostgreSQL schema to this release's version."""
    import asyncpg

    from relay.history import migrations
    from relay.history.db import POSTGRES_AWAY
    from relay.resources import require_database_url

    settings = _settings()
    url = _required(settings, require_database_url)
    try:
        applied = asyncio.run(migrations.apply(url))
    except (*POSTGRES_AWAY, asyncpg.PostgresError) as exc:
        raise CliError(f"cannot migrate the database: {exc}") from None
    for migration in applied:
        print(f"applied {migration.version:04d} {migration.name}")
    print(f"relay migrate: schema at version {migrations.latest()}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Webhook relay and delivery retry.")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, text in (
        (
            "dev",
            cmd_dev,
            "Redis, PostgreSQL, the API and a worker in one process tree, for one machine "
            "(Ctrl-C stops them all)",
        ),
        ("api", cmd_api, "the HTTP API"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.set_defaults(func=func)

    sub.add_parser("worker", help="one delivery worker").set_defaults(func=cmd_worker)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="issue a token and print it once")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--tenant", help="the tenant a tenant token is bound to")
    create.add_argument("--name", help="a label for the token")
    create.set_defaults(func=cmd_token_create)

    keys = sub.add_parser("keys", help="master keys for secrets at rest").add_subparsers(
        dest="action", required=True
    )
    keys.add_parser("generate", help="print a new master key").set_defaults(func=cmd_keys_generate)
    keys.add_parser(
        "reencrypt", help="re-encrypt all secrets at rest under the first key"
    ).set_defaults(func=cmd_keys_reencrypt)

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="action", required=True
    )
    check = config.add_parser(
        "check", help="validate the environment and print the settings in force"
    )
    check.add_argument(
        "--connect", action="store_true", help="also reach Redis and PostgreSQL, as they are"
    )
    check.set_defaults(func=cmd_config_check)
    sub.add_parser("migrate", help="apply the PostgreSQL schema (numbered SQL files)").set_defaults(
        func=cmd_migrate
    )
    add_operator_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `relay` console script."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except (CliError, UsageError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except RelayError as exc:  # e.g. a bad --tenant, reported like the API would
        fields = "; ".join(f"{k}: {', '.join(v)}" for k, v in exc.errors.items())
        print(f"relay: {exc.detail} {fields}".strip(), file=sys.stderr)
        return 2
    return status
