"""A PING loop in a process of its own, so that what it measures is Redis, not the harness.

    python -m bench.pinger --port P

PINGs Redis back to back (a millisecond apart). Each line read on stdin asks for the longest
PING round trip, in milliseconds, since the previous line, the PING in flight then included;
the answer is one line on stdout. A thread in the harness itself would also measure how long
it waited for the harness's GIL (building a large body, parsing a large answer).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from types import TracebackType

import redis

from bench.procs import REPO_ROOT


class _Loop:
    def __init__(self, port: int) -> None:
        self._client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60)
        self._lock = threading.Lock()
        self._longest = 0.0
        self._last_started = 0.0  # when the last finished PING was sent

    def run(self) -> None:
        while True:
            started = time.perf_counter()
            self._ping_through_busy()
            took = time.perf_counter() - started
            with self._lock:
                self._longest = max(self._longest, took)
                self._last_started = started
            time.sleep(0.001)  # a ping storm would slow down what it measures

    def _ping_through_busy(self) -> None:
        # A script past busy-reply-threshold makes Redis answer BUSY to every other call: the
        # stall goes on until a PING is answered.
        while True:
            try:
                self._client.ping()
                return
            except redis.ResponseError as exc:
                if not str(exc).startswith("BUSY"):
                    raise
                time.sleep(0.001)

    def take(self) -> float:
        now = time.perf_counter()
        while True:
            with self._lock:
                if self._last_started > now:
                    longest, self._longest = self._longest, 0.0
                    return longest
            time.sleep(0.001)


def main(argv: list[str] | None = None) -> int:
    """Ping until stdin closes, answering each line with the longest PING (ms) since the last."""
    parser = argparse.ArgumentParser(prog="python -m bench.pinger")
    parser.add_argument("--port", type=int, required=True)
    loop = _Loop(parser.parse_args(argv).port)
    threading.Thread(target=loop.run, daemon=True).start()
    for _ in sys.stdin:
        print(f"{loop.take() * 1000:.3f}", flush=True)
    return 0


class Pinger:
    """`python -m bench.pinger` as a child: `take()` the longest PING (seconds) since the last."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._child: subprocess.Popen[str] | None = None

    def __enter__(self) -> Pinger:
        self._child = subprocess.Popen(
            [sys.executable, "-m", "bench.pinger", "--port", str(self._port)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._child is not None
        self._child.kill()
        self._child.wait()

    def take(self) -> float:
        """The longest PING (seconds) since the last call, the one in flight now included."""
        assert self._child is not None and self._child.stdin and self._child.stdout
        self._child.stdin.write("\n")
        self._child.stdin.flush()
        answer = self._child.stdout.readline()
        if not answer:
            raise RuntimeError("the PING loop stopped; its error is above")
        return float(answer) / 1000


if __name__ == "__main__":
    sys.exit(main())
