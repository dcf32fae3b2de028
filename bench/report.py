"""The benchmark's output: the machine, a readable table, the targets, the JSON results file."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.phases import (
    DrainFigures,
    E2EFigures,
    IngestFigures,
    LatencyFigures,
    LimitFigures,
    Options,
)
from relay import __version__

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# What the figures are compared against (measured honestly, not tuned for).
TARGET_SHARE_OF_LIMIT = 0.35
TARGET_P50_MS = 25.0
TARGET_P99_MS = 100.0
TARGET_INGEST_PER_SECOND = 1500.0


def machine() -> dict[str, Any]:
    """The CPU, core count, Python and OS the figures were taken on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "relay_version": __version__,
    }


@dataclass(slots=True)
class Results:
    """Everything one run measured."""

    started_at: str
    seconds: float
    options: Options
    machine: dict[str, Any]
    settings: dict[str, str]
    redis: dict[str, Any]  # version, forks (AOF rewrites), memory at the end
    load_average: dict[str, list[float]]  # before and after: the machine is shared
    limit: list[LimitFigures]
    ingest: list[IngestFigures]
    drain: DrainFigures
    e2e: list[E2EFigures]
    latency: LatencyFigures

    def fastest_limit(self) -> LimitFigures:
        """The bare loop that went fastest."""
        return max(self.limit, key=lambda run: run.per_second)

    def e2e_of(self, fan_out: int, workers: int) -> E2EFigures | None:
        """The end-to-end run with this fan-out and worker count, if there was one."""
        found = [r for r in self.e2e if r.fan_out == fan_out and r.workers == workers]
        return found[0] if found else None

    def targets(self) -> list[tuple[str, str, bool]]:
        """(target, what was measured, met) for each target."""
        limit = self.fastest_limit().per_second
        e2e = self.e2e_of(1, self.options.workers)
        share = e2e.per_second / limit if e2e and limit else 0.0
        # Ingest runs before any worker exists: the API and Redis alone.
        slowest = min((r.per_second for r in self.ingest), default=0.0)
        lat = self.latency
        return [
            (
                f"relay e2e ({self.options.workers} workers, fan-out 1) >= "
                f"{TARGET_SHARE_OF_LIMIT:.0%} of the bare loop",
                f"{share:.1%}",
                share >= TARGET_SHARE_OF_LIMIT,
            ),
            (
                f"e2e p50 at {lat.rate:g} events/s <= {TARGET_P50_MS:g} ms",
                f"{lat.p50_ms:.1f} ms",
                lat.p50_ms <= TARGET_P50_MS,
            ),
            (
                f"e2e p99 at {lat.rate:g} events/s <= {TARGET_P99_MS:g} ms",
                f"{lat.p99_ms:.1f} ms",
                lat.p99_ms <= TARGET_P99_MS,
            ),
            (
                f"ingest >= {TARGET_INGEST_PER_SECOND:,.0f} events/s (slowest case, no workers)",
                f"{slowest:,.0f}/s",
                slowest >= TARGET_INGEST_PER_SECOND,
            ),
        ]


# --- shared by every report -------------------------------------------------------------------


def utc(unix: float) -> str:
    """Unix seconds as RFC 3339 UTC, to the second: when a run started."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def headline(what: str, started_at: str, machine: dict[str, Any]) -> str:
    """The start of a report's first line: relay's version, the run, when, and the machine."""
    return (
        f"relay {machine['relay_version']} {what}, {started_at}: {machine['cpu_model']},"
        f" {machine['cores']} cores, Python {machine['python']}"
    )


def load_range(load_average: dict[str, list[float]]) -> str:
    """The machine's 1-minute load average before and after the run: it is shared."""
    return (
        f"load average {load_average['before'][0]:.2f} before, {load_average['after'][0]:.2f} after"
    )


def verdicts(title: str, heading: str, targets: list[tuple[str, str, bool]]) -> list[str]:
    """Each (target, what was measured, met) as a table under `title`."""
    rows: list[tuple[str, ...]] = [(heading, "measured", "")]
    for what, measured, met in targets:
        rows.append((what, measured, "met" if met else "MISSED"))
    return [title, *columns(rows)]


def joined(sections: list[list[str]]) -> str:
    """A report's sections, each a list of lines, a blank line between them."""
    return "\n\n".join("\n".join(lines) for lines in sections)


# --- the table ---------------------------------------------------------------------------------


def columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def plural(count: int, noun: str) -> str:
    """'1 worker', '2 workers'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def num(value: float, digits: int = 0) -> str:
    """A figure with thousands separators; '-' for NaN."""
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def limit_lines(results: Results) -> list[str]:
    """The bare loops, fastest first."""
    c = results.options.concurrency
    rows: list[tuple[str, ...]] = [
        (
            "loop + client",
            "sent",
            "sent/s",
            "seconds",
            "failed",
            "bad sig",
            "cpu s/1k loop",
            "receiver",
        )
    ]
    for run in sorted(results.limit, key=lambda r: -r.per_second):
        rows.append(
            (
                f"{run.loop} + {run.client}",
                num(run.ok),
                num(run.per_second),
                num(run.seconds, 2),
                str(run.failed),
                str(run.rejected),
                num(run.cpu_per_1k["loop"], 3),
                num(run.cpu_per_1k["receiver"], 3),
            )
        )
    title = f"LIMIT: a bare loop signs and POSTs to the same receiver, {c} in flight, no queue"
    return [title, *columns(rows)]


def ingest_lines(results: Results) -> list[str]:
    """POST /v1/events at fixed concurrency."""
    rows: list[tuple[str, ...]] = [
        ("case", "events/s", "p50 ms", "p99 ms", "refused", "api", "redis", "machine")
    ]
    for run in results.ingest:
        rows.append(
            (
                run.case,
                num(run.per_second),
                num(run.p50_ms, 1),
                num(run.p99_ms, 1),
                str(sum(run.refused.values())),
                f"{run.busy['api']:.0%}",
                f"{run.busy['redis']:.0%}",
                f"{run.busy['machine']:.0%}",
            )
        )
    for e2e in results.e2e:
        rows.append(
            (
                f"fan-out {e2e.fan_out}, {plural(e2e.workers, 'worker')} delivering",
                num(e2e.ingest_per_second),
                num(e2e.ingest_p50_ms, 1),
                num(e2e.ingest_p99_ms, 1),
                str(e2e.refused),
                f"{e2e.busy['api']:.0%}",
                f"{e2e.busy['redis']:.0%}",
                f"{e2e.busy['machine']:.0%}",
            )
        )
    title = (
        f"INGEST: POST /v1/events, {results.options.concurrency} concurrent clients"
        " (api, redis, machine: CPU used, as a share of one core)"
    )
    d = results.drain
    drain = (
        f"  backlog drain ({d.workers} workers started on {d.deliveries:,} queued deliveries):"
        f" {d.arrived:,} in {d.seconds:.2f} s = {num(d.per_second)} deliveries/s"
    )
    return [title, *columns(rows), drain]


def e2e_lines(results: Results) -> list[str]:
    """Throughput from first POST to last receipt, and what it cost."""
    limit = results.fastest_limit().per_second
    rows: list[tuple[str, ...]] = [
        (
            "fan-out / workers",
            "deliveries",
            "seconds",
            "deliv/s",
            "÷ limit",
            "bad sig",
            "dups",
            "redis B/deliv",
            "redis calls/deliv",
            "worker log B/deliv",
        )
    ]
    for run in results.e2e:
        rows.append(
            (
                f"fan-out {run.fan_out:<2} {plural(run.workers, 'worker')}",
                f"{run.arrived:,}/{run.deliveries:,}",
                num(run.seconds, 2),
                num(run.per_second),
                f"{run.per_second / limit:.0%}" if limit else "-",
                str(run.rejected),
                str(run.duplicates),
                num(run.redis_bytes_per_delivery),
                num(run.redis_calls_per_delivery, 1),
                num(run.worker_log_bytes_per_delivery),
            )
        )
    title = "END TO END: events posted as fast as possible, first POST to last receipt"
    lines = [title, *columns(rows)]
    one, two = results.e2e_of(1, 1), results.e2e_of(1, 2)
    if one and two and one.per_second:
        ten1, ten2 = results.e2e_of(10, 1), results.e2e_of(10, 2)
        scaling = f"  scaling 1 -> 2 workers: fan-out 1 x{two.per_second / one.per_second:.2f}"
        if ten1 and ten2 and ten1.per_second:
            scaling += f", fan-out 10 x{ten2.per_second / ten1.per_second:.2f}"
        lines.append(scaling)
    return lines


def cpu_lines(results: Results) -> list[str]:
    """CPU seconds per 1,000 deliveries and how busy each process was."""
    roles = ["api", "workers", "redis", "postgres", "receiver", "harness"]
    rows: list[tuple[str, ...]] = [("fan-out / workers", *roles, "relay total")]
    # Every process of any run, in the order measured: runs with fewer workers show "-".
    procs = list(dict.fromkeys(k for run in results.e2e for k in run.busy if k != "workers"))
    busy_rows: list[tuple[str, ...]] = [("fan-out / workers", *procs)]
    for run in results.e2e:
        label = f"fan-out {run.fan_out:<2} {run.workers}w"
        relay_total = sum(run.cpu_per_1k[r] for r in ("api", "workers", "redis", "postgres"))
        rows.append((label, *(num(run.cpu_per_1k[r], 3) for r in roles), num(relay_total, 3)))
        busy_rows.append((label, *(f"{run.busy[p]:.0%}" if p in run.busy else "-" for p in procs)))
    return [
        "CPU seconds per 1,000 deliveries (psutil, over each end-to-end run)",
        *columns(rows),
        "share of one core each process used over the run (100% = one core flat out;"
        f" machine = every process and the kernel, at most {results.machine['cores']}00%;"
        " stolen = taken by the hypervisor)",
        *columns(busy_rows),
        f"  redis forked {results.redis['forks']} times in the run"
        f" ({results.redis['aof_rewrites']} AOF rewrites; their CPU is counted as redis's)",
    ]


def latency_lines(results: Results) -> list[str]:
    """Latency at a steady rate."""
    lat = results.latency
    return [
        f"LATENCY at a steady {lat.rate:g} events/s for {lat.seconds:.1f} s, fan-out 1,"
        f" {results.options.workers} workers ({lat.arrived:,}/{lat.events:,} arrived)",
        f"  accepted (created_at) -> received: p50 {lat.p50_ms:.1f} ms  p90 {lat.p90_ms:.1f} ms"
        f"  p99 {lat.p99_ms:.1f} ms  max {lat.max_ms:.1f} ms",
        f"  client POST -> received:            p50 {lat.client_p50_ms:.1f} ms"
        f"  p99 {lat.client_p99_ms:.1f} ms",
        f"  POST /v1/events answer:             p50 {lat.ingest_p50_ms:.1f} ms"
        f"  p99 {lat.ingest_p99_ms:.1f} ms  (pacing lag max {lat.max_lag_ms:.1f} ms)",
    ]


def render(results: Results) -> str:
    """The whole report."""
    fastest = results.fastest_limit()
    head = (
        headline("bench", results.started_at, results.machine)
        + f", Redis {results.redis['version']};"
        f" {results.options.events:,} events per run, {results.options.concurrency} clients,"
        f" RELAY_ENDPOINT_CONCURRENCY={results.options.endpoint_concurrency};"
        f" {results.seconds:.0f} s in all; {load_range(results.load_average)}"
    )
    fastest_line = f"  fastest: {fastest.loop} + {fastest.client}, {num(fastest.per_second)}/s"
    sections = [
        [head],
        [*limit_lines(results), fastest_line],
        ingest_lines(results),
        e2e_lines(results),
        latency_lines(results),
        cpu_lines(results),
        verdicts("TARGETS", "target", results.targets()),
    ]
    return joined(sections)


def write_document(results: Results) -> dict[str, Any]:
    """The results file of a `python -m bench` run, a summary added to the figures."""
    fastest = results.fastest_limit()
    return {
        **asdict(results),
        "summary": {
            "fastest_limit": {"loop": fastest.loop, "client": fastest.client},
            "limit_per_second": fastest.per_second,
            "relay_share_of_limit": {
                f"fan_out_{r.fan_out}_workers_{r.workers}": (
                    r.per_second / fastest.per_second if fastest.per_second else None
                )
                for r in results.e2e
            },
            "targets": [
                {"target": what, "measured": measured, "met": met}
                for what, measured, met in results.targets()
            ],
        },
    }


def save(kind: str, document: dict[str, Any]) -> Path:
    """Write a harness's results as JSON to bench/results/<kind>-<timestamp>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{kind}-{stamp}.json"
    # NaN (a percentile of nothing) is not JSON: write null instead.
    path.write_text(json.dumps(_no_nan(document), indent=2) + "\n")
    return path


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def conclude(
    kind: str,
    document: dict[str, Any],
    report: Callable[[], str],
    whole: bool = True,
    problem: str = "",
) -> int:
    """Write the results file, print the report and say where it went; the exit status: 1
    with `problem` said when the run was not `whole`, else 0.

    The file is written first: the figures are kept even if rendering them fails.
    """
    path = save(kind, document)
    print("\n" + report() + "\n")
    print(f"results written to {os.path.relpath(path)}", flush=True)
    if not whole:
        print(f"{kind}: {problem}", file=sys.stderr)
        return 1
    return 0
