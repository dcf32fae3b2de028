"""The redis-server child that `relay dev` runs when no RELAY_REDIS_URL is given."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from relay.processes import die_with_parent

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
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:  # refused, or still loading its AOF
        return False
    finally:
        client.close()


def data_dir_ready(path: Path) -> Path:
    """Create the data dir, readable by its owner only (it holds keys and tokens)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
