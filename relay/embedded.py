"""The stores `relay dev` runs as children: redis-server unless RELAY_REDIS_URL is given, and
PostgreSQL unless RELAY_DATABASE_URL is."""

from __future__ import annotations

import asyncio
import functools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypedDict

import redis

from relay.processes import die_with_parent
from relay.store.connect import connect_redis

MISSING = (
    "relay dev needs Redis: install redis-server (Debian/Ubuntu: sudo apt-get install "
    "redis-server) or point RELAY_REDIS_URL at a Redis 7 server."
)


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started."""


def free_port() -> int:
    """An unused loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class EmbeddedRedis:
    """A redis-server on loopback with AOF on, its data and config under `data_dir/redis`."""

    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self, timeout: float = 10.0) -> str:
        """Start it, wait until it answers, and return its URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(MISSING)
        directory = (self.data_dir / "redis").resolve()
        directory.mkdir(parents=True, exist_ok=True)
        # Its AOF files are world-readable; when root lets PostgreSQL's user into the data dir,
        # that user must still not reach them.
        directory.chmod(0o700)
        port = free_port()
        password = secrets.token_urlsafe(24)
        config = directory / "redis.conf"
        # A password as well as loopback: other local users must not read webhook data.
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    f"dir {directory}",
                    f"requirepass {password}",
                    "appendonly yes",
                    "appendfsync everysec",
                    "save 3600 1 300 100 60 10000",
                    "daemonize no",
                    "logfile redis.log",
                    "protected-mode yes",
                ]
            )
            + "\n"
        )
        config.chmod(0o600)
        self.process = subprocess.Popen(
            [binary, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        self.url = f"redis://:{password}@127.0.0.1:{port}/0"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {self.process.returncode}; see {directory}/redis.log"
                )
            if _answers(self.url):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError("redis-server did not answer within 10 s")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask Redis to shut down (it flushes the AOF), then make sure it is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _answers(url: str) -> bool:
    async def ping() -> bool:
        client = connect_redis(url, timeout=0.5)
        try:
            return bool(await client.ping())
        except redis.RedisError:  # refused, or still loading its AOF
            return False
        finally:
            await client.aclose()

    return asyncio.run(ping())


def data_dir_ready(path: Path) -> Path:
    """Create the data dir, readable by its owner only (it holds keys and tokens)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


PG_MISSING = (
    "relay dev needs PostgreSQL: install it (Debian/Ubuntu: sudo apt-get install postgresql) "
    "or point RELAY_DATABASE_URL at a PostgreSQL server."
)

# Debian keeps the server binaries here, one directory per major version, and off PATH.
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_SERVER_USER = "postgres"
_DATABASE = "relay"


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be started."""


def postgres_bindirs() -> list[Path]:
    """Directories holding `initdb` and `postgres`, preferred first: Debian's, PATH, pg_config."""
    candidates: list[Path] = []
    if _DEBIAN_ROOT.is_dir():
        versions = sorted(_DEBIAN_ROOT.iterdir(), key=lambda p: _version_key(p.name), reverse=True)
        candidates += [version / "bin" for version in versions]
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            answer = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            answer = ""
        if answer:
            candidates.append(Path(answer))
    found: list[Path] = []
    for candidate in (c.resolve() for c in candidates):
        # libpq-dev's pg_config names a bindir even where the server is not installed.
        server = (candidate / "initdb").is_file() and (candidate / "postgres").is_file()
        if server and candidate not in found:
            found.append(candidate)
    return found


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def _major(bindir: Path) -> str:
    """The major version of the server in `bindir`, as PG_VERSION spells it ("15", "9.6")."""
    try:
        answer = subprocess.run(
            [bindir / "postgres", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    matched = re.search(r"(\d+)\.(\d+)", answer)
    if matched is None:
        return ""
    first, second = matched.groups()
    return first if int(first) >= 10 else f"{first}.{second}"


def _server_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when relay runs as root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SERVER_USER)
    except KeyError:
        raise EmbeddedPostgresError(
            "relay dev runs as root, so PostgreSQL must run as the `postgres` user, which does "
            "not exist: install Debian's postgresql package (it creates the user), run relay dev "
            "as an ordinary user, or set RELAY_DATABASE_URL."
        ) from None


def _searchable_by(path: Path, user: pwd.struct_passwd) -> bool:
    # Its primary group only: the server runs without supplementary groups.
    info = path.stat()
    if info.st_uid == user.pw_uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == user.pw_gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _open_to_server(data_dir: Path, user: pwd.struct_passwd) -> None:
    """Let the server's user through the data dir, and only that user: the data dir holds the
    Redis files and relay's secrets, and other local users must not list it."""
    for parent in data_dir.parents:
        if not _searchable_by(parent, user):
            raise EmbeddedPostgresError(
                f"relay dev runs as root, so PostgreSQL runs as the `postgres` user, which cannot "
                f"reach {data_dir}: {parent} is closed to it. Set RELAY_DATA_DIR to a directory "
                "under one it can pass through (such as /srv or /var/lib), run relay dev as an "
                "ordinary user, or set RELAY_DATABASE_URL."
            )
    os.chown(data_dir, -1, user.pw_gid)
    data_dir.chmod(0o710)


@dataclass(slots=True)
class EmbeddedPostgres:
    """A PostgreSQL on loopback, its cluster under `data_dir/postgres`, made on first start.

    `settings` are extra server settings for this run (tests turn fsync off with them). The
    password is made with the cluster and kept beside it, so each start serves the same data.
    """

    data_dir: Path
    settings: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    # 0: a free one, chosen at the first start; a restart of the same object listens there
    # again, so clients holding its URL find it.
    port: int = 0

    @property
    def cluster(self) -> Path:
        """The cluster's directory (PGDATA)."""
        return self.data_dir.resolve() / "postgres"

    @property
    def log_path(self) -> Path:
        """Where initdb's and the server's output goes."""
        return self.data_dir.resolve() / "postgres.log"

    @property
    def password_path(self) -> Path:
        """The password of the `relay` role, readable by relay's user only."""
        return self.data_dir.resolve() / "postgres.password"

    def start(self, timeout: float = 30.0) -> str:
        """Make the cluster if there is none, start it, wait until it is ready; its URL."""
        data_dir = self.data_dir.resolve()
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        user = _server_user()
        if user is not None:
            _open_to_server(data_dir, user)
        made = (self.cluster / "PG_VERSION").is_file()
        bindir = self._bindir((self.cluster / "PG_VERSION").read_text().strip() if made else "")
        password = self._password(made)
        if not made:
            self._make_cluster(bindir, user, password)
        self.port = self.port or free_port()
        port = self.port
        command = [
            str(bindir / "postgres"),
            "-D",
            str(self.cluster),
            "-p",
            str(port),
            # Set here rather than in postgresql.conf so that every start enforces them.
            *self._options(listen_addresses="127.0.0.1"),
        ]
        with self._log() as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_as_server(user),
                # Its own process group: a Ctrl-C at the terminal reaches `relay dev`, which
                # stops PostgreSQL after the API and worker that use it.
                start_new_session=True,
                # A fast shutdown (SIGINT) if relay dev dies: the default would wait on clients.
                preexec_fn=functools.partial(die_with_parent, signal.SIGINT),
            )
        self.url = f"postgresql://{_DATABASE}:{password}@127.0.0.1:{port}/{_DATABASE}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedPostgresError(
                    f"postgres exited with {self.process.returncode}; see {self.log_path}"
                )
            if self._ready():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedPostgresError(
            f"postgres was not ready within {timeout:.0f} s; see {self.log_path}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """A fast shutdown (clients disconnected, a checkpoint), then make sure it is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _options(self, **fixed: str) -> list[str]:
        """`-c` options: no Unix socket (TCP with a password is the one way in), SCRAM hashes."""
        values = {
            **fixed,
            "unix_socket_directories": "",
            "password_encryption": "scram-sha-256",
            **self.settings,
        }
        return [option for name, value in values.items() for option in ("-c", f"{name}={value}")]

    def _bindir(self, major: str) -> Path:
        found = postgres_bindirs()
        if not found:
            raise EmbeddedPostgresError(PG_MISSING)
        if not major:
            return found[0]
        for bindir in found:
            if _major(bindir) == major:
                return bindir
        raise EmbeddedPostgresError(
            f"the cluster in {self.cluster} was made by PostgreSQL {major}, which is not "
            f"installed: install it (Debian: postgresql-{major}), or move {self.cluster} and "
            f"{self.password_path} aside to start with an empty database."
        )

    def _password(self, made: bool) -> str:
        """The role's password: read back, or made before the cluster that will use it."""
        path = self.password_path
        if path.is_file():
            return path.read_text().strip()
        if made:
            raise EmbeddedPostgresError(
                f"{path} is missing, and {self.cluster} cannot be used without it: restore it, "
                f"or move {self.cluster} aside to start with an empty database."
            )
        password = secrets.token_urlsafe(24)
        staged = path.with_name(path.name + ".new")
        staged.unlink(missing_ok=True)
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password + "\n")
        staged.replace(path)
        return password

    def _make_cluster(self, bindir: Path, user: pwd.struct_passwd | None, password: str) -> None:
        """initdb, the hba rules and the role and database, in a staging directory renamed into
        place at the end: a cluster half made by an interrupted start is never used."""
        staging = self.cluster.with_name("postgres.init")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if user is not None:
            os.chown(staging, user.pw_uid, user.pw_gid)
        initdb = [
            str(bindir / "initdb"),
            "-D",
            str(staging),
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--auth=reject",
        ]
        if self.settings.get("fsync") == "off":  # nothing of it is meant to outlive a crash
            initdb.append("--no-sync")
        self._run(initdb, user, "initdb")
        # TCP from loopback as `relay`, with its password; no other role, address or socket.
        # The superuser `postgres` cannot log in at all: relay needs none of its powers.
        (staging / "pg_hba.conf").write_text(
            f"host {_DATABASE} {_DATABASE} 127.0.0.1/32 scram-sha-256\n"
        )
        setup = (
            f"CREATE ROLE {_DATABASE} LOGIN PASSWORD '{password}';\n"
            f"CREATE DATABASE {_DATABASE} OWNER {_DATABASE};\n"
        )
        single_user = [
            str(bindir / "postgres"),
            "--single",
            "-D",
            str(staging),
            *self._options(),
            "postgres",
        ]
        self._run(single_user, user, "creating the relay role and database", setup)
        staging.rename(self.cluster)

    def _run(
        self, command: list[str], user: pwd.struct_passwd | None, what: str, stdin: str = ""
    ) -> None:
        done = subprocess.run(
            command,
            input=stdin.encode(),
            capture_output=True,
            **_as_server(user),
            preexec_fn=die_with_parent,
            timeout=120,
        )
        output = done.stdout + done.stderr
        with self._log() as log:
            log.write(output)
        # A single-user backend reports a failed statement in its output and still exits 0.
        if done.returncode != 0 or re.search(rb"\b(ERROR|FATAL|PANIC):", output):
            raise EmbeddedPostgresError(f"{what} failed; see {self.log_path}")

    def _log(self) -> IO[bytes]:
        descriptor = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(descriptor, "ab")

    def _ready(self) -> bool:
        """Whether the postmaster we started says it is ready, as `pg_ctl -w` checks."""
        assert self.process is not None
        try:
            lines = (self.cluster / "postmaster.pid").read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return False
        # Line 1 is the PID (a stale file names another), line 8 the status (PostgreSQL 10+).
        return len(lines) >= 8 and lines[0] == str(self.process.pid) and lines[7].strip() == "ready"


class _ServerCredentials(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]
    cwd: str
    env: dict[str, str]


def _as_server(user: pwd.struct_passwd | None) -> _ServerCredentials:
    """Popen arguments running a child as the server's user, in a neutral cwd and environment."""
    # PG* variables would steer initdb and postgres away from what start() asks of them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if user is None:
        return {"cwd": "/", "env": env}
    env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return {
        "user": user.pw_uid,
        "group": user.pw_gid,
        "extra_groups": [],
        "cwd": "/",
        "env": env,
    }
