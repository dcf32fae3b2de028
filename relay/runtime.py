"""What a running `relay dev` leaves in its data dir: a lock, a record of where it listens, and
the admin token and master key it made on its first start.

The lock is an `flock` held for the life of the `relay dev` process. The kernel drops it when the
process dies, however it dies, so a `runtime.json` without a held lock is known to be stale.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from relay.store import codec

_LOCK = "dev.lock"
_RUNTIME = "runtime.json"
_SECRETS = "dev-secrets.json"


class DataDirBusy(RuntimeError):
    """Another `relay dev` runs on this data dir; the message names its PID and URL."""


class StaleRuntime(RuntimeError):
    """runtime.json names a `relay dev` that is no longer running."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """Where a running `relay dev` serves: its PID, API URL, and the stores it uses."""

    pid: int
    api_url: str
    redis_url: str
    database_url: str

    def describe(self) -> str:
        """PID and URL, for messages."""
        return f"PID {self.pid}, {self.api_url}"


def _read(data_dir: Path) -> Runtime | None:
    try:
        saved = codec.loads((data_dir / _RUNTIME).read_bytes())
        return Runtime(
            int(saved["pid"]),
            str(saved["api_url"]),
            str(saved["redis_url"]),
            # Absent from the record of a relay dev older than history.
            str(saved.get("database_url", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _held_by_someone(data_dir: Path) -> bool:
    """Whether a live process holds the data dir's lock (tested without keeping it)."""
    try:
        with open(data_dir / _LOCK, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


class DevClaim:
    """The data dir taken by one `relay dev`: locked, then described in runtime.json."""

    def __init__(self, data_dir: Path) -> None:
        self._dir = data_dir
        self._handle: IO[bytes] | None = None
        self.stale: Runtime | None = None

    def acquire(self) -> None:
        """Take the lock, or raise DataDirBusy naming the `relay dev` that holds it."""
        handle = open(self._dir / _LOCK, "a+b")  # noqa: SIM115  (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            running = _read(self._dir)
            where = f" ({running.describe()})" if running else ""
            raise DataDirBusy(
                f"relay dev is already running on {self._dir}{where}; stop it first, or give "
                "this one another RELAY_DATA_DIR."
            ) from None
        self._handle = handle
        # A record left by a relay dev that was killed (kill -9, power loss) is replaced.
        self.stale = _read(self._dir)

    def publish(self, runtime: Runtime) -> None:
        """Write runtime.json (readable by the owner only: the store URLs hold passwords)."""
        path = self._dir / _RUNTIME
        path.touch(mode=0o600)
        path.write_bytes(
            codec.dumps(
                {
                    "pid": runtime.pid,
                    "api_url": runtime.api_url,
                    "redis_url": runtime.redis_url,
                    "database_url": runtime.database_url,
                }
            )
        )

    def release(self) -> None:
        """Remove runtime.json and drop the lock."""
        (self._dir / _RUNTIME).unlink(missing_ok=True)
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def running(data_dir: Path) -> Runtime | None:
    """The `relay dev` running on `data_dir`, None if there is none; StaleRuntime if it died."""
    runtime = _read(data_dir)
    if runtime is None:
        return None
    if not _held_by_someone(data_dir):
        raise StaleRuntime(
            f"{data_dir / _RUNTIME} is left over from a relay dev (PID {runtime.pid}) that is no "
            "longer running; start `relay dev` again (it cleans up), or set RELAY_REDIS_URL."
        )
    return runtime


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """The admin token and master key of a dev install: made on first start, then reused."""
    from relay.secrets import generate_master_key
    from relay.tokens import new_secret_token

    path = data_dir / _SECRETS
    if path.exists():
        saved: dict[str, str] = codec.loads(path.read_bytes())
        return saved
    made = {"admin_token": new_secret_token(), "secret_key": generate_master_key()}
    path.touch(mode=0o600)
    path.write_bytes(codec.dumps(made))
    return made


def dev_admin_token(data_dir: Path) -> str | None:
    """The admin token a dev install made, if it made one (None when unreadable)."""
    try:
        token = codec.loads((data_dir / _SECRETS).read_bytes())["admin_token"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return token if isinstance(token, str) else None
