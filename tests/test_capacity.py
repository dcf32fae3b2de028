"""The capacity harness, shrunk: it runs its parts end to end and reports each figure."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.system


def test_a_tiny_capacity_run_reports_memory_queries_and_the_drop() -> None:
    run = subprocess.run(
        [
            *(sys.executable, "-m", "bench.capacity", "--only", "memory,queries,drop"),
            *("--deliveries", "200", "--sample-seconds", "1", "--seed-deliveries", "2000"),
            *("--tenants", "5", "--repeats", "3", "--drop-deliveries", "1000"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    report = run.stdout[run.stdout.find("MEMORY under steady load") :]
    assert "delivered 200 (0 duplicates, 0 events refused)" in report, report
    assert "the stream empty: yes" in report
    assert "Redis used_memory: empty" in report and "bytes per delivery" in report
    assert "history writer lag (1 s samples): p50" in report
    for query in ("failed deliveries", "in 6 hours", "of a type", "upstream id", "attempts"):
        assert query in report
    assert "drop_before took" in report and "5 partitions" in report
    assert "Redis after all is written within 20 MB of empty" in report
