"""The chaos run, shortened: faults of every kind under load, nothing lost or stuck, and the
history in PostgreSQL whole."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

# Every kind of fault the chaos run promises to inject (see bench/chaos.py), by what it hurts.
FAULT_KINDS = [
    *("kill_worker", "term_worker", "skew_worker"),
    *("kill_redis", "stop_redis", "failover_redis"),
    *("kill_postgres", "stop_postgres"),
]

pytestmark = pytest.mark.system


def _figure(report: str, label: str) -> int:
    match = re.search(rf"^{re.escape(label)}\s+([\d,]+)", report, re.M)
    assert match, f"no {label!r} in:\n{report}"
    return int(match[1].replace(",", ""))


def test_a_short_chaos_run_loses_nothing_and_strands_nothing() -> None:
    run = subprocess.run(
        # Long enough for one round of every kind, pauses of Redis and PostgreSQL included,
        # and for a primary paused past its failover to be made a replica before the next Redis
        # fault (Sentinel notices it within 10 s).
        [sys.executable, "-m", "bench.chaos", "--seconds", "40", "--fault-every", "1,1.5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    start = run.stdout.find("chaos run:")
    report = run.stdout[start:] if start >= 0 else ""
    # The report (figures, verdict, then the errors relay logged) says why a run failed; what
    # came before it, how far the run got.
    assert run.returncode == 0, (report[:8000] or run.stdout[-3000:]) + run.stderr[-3000:]
    accepted = _figure(report, "events accepted")
    assert accepted > 0
    assert _figure(report, "deliveries expected") > accepted
    assert _figure(report, "lost (must be 0)") == 0
    assert _figure(report, "stuck non-terminal (must be 0)") == 0
    assert _figure(report, "workers that exited on their own (must be 0)") == 0
    assert _figure(report, "ended, not in PostgreSQL (must be 0)") == 0
    assert _figure(report, "delivered, attempts amiss (must be 0)") == 0
    assert _figure(report, "history entries left (must be 0)") == 0
    delivered = _figure(report, "delivered")
    assert _figure(report, "ended, in PostgreSQL") >= delivered > 0
    assert _figure(report, "attempts in PostgreSQL") >= delivered
    faults = dict(re.findall(r"(\w+_\w+) (\d+)", report.split("faults injected", 1)[1]))
    assert all(int(faults[kind]) >= 1 for kind in FAULT_KINDS), report
    assert "verdict: PASS" in report
