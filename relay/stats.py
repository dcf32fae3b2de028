"""The overview operators and tenants look at first: figures over the last hour or day, and what
needs care — of everyone, of one tenant, or of one webhook.

Computed from the per-minute figures the history writer keeps in PostgreSQL with what they
count: an attempt shows here once it is written there (within a second or so).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from relay.delivery.model import FINISHED
from relay.history.reader import counters
from relay.metrics import DURATION_BUCKETS
from relay.resources import Resources
from relay.store.metrics import backlog, webhook_backlog
from relay.timefmt import from_timestamp, rfc3339
from relay.webhooks import Webhook

# Webhooks the overview looks through for failing or disabled ones, newest first.
_WEBHOOK_SCAN = 1000


@dataclass(frozen=True, slots=True)
class Window:
    """How far back the overview looks, and how long each point of its charts is."""

    name: str
    seconds: int
    step: int


WINDOWS = {w.name: w for w in (Window("hour", 3600, 300), Window("day", 86_400, 3600))}


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose figures: everyone's (both None), one tenant's, or one webhook's (with its tenant)."""

    tenant_id: str | None = None
    webhook_id: str | None = None


def quantile_ms(counters: Mapping[str, int], q: float) -> int | None:
    """The q-quantile of attempt durations in ms, interpolated within histogram buckets."""
    total = counters.get("attempt_seconds_count", 0)
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0
    for le in DURATION_BUCKETS:
        cumulative = counters.get(f"attempt_seconds_bucket:{le}", 0)
        if cumulative >= rank:
            share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
            return round((lower + (le - lower) * share) * 1000)
        lower, below = le, cumulative
    # Slower than the largest bucket: like Prometheus, say the largest bound.
    return round(DURATION_BUCKETS[-1] * 1000)


@dataclass(frozen=True, slots=True)
class Figures:
    """Events, attempts, finished deliveries, success rate and latency over a span of time."""

    events_accepted: int
    attempts: int
    attempts_succeeded: int
    success_rate: float | None
    # Finished deliveries by status (every status in FINISHED).
    deliveries: dict[str, int]
    latency_p50_ms: int | None
    latency_p95_ms: int | None


@dataclass(frozen=True, slots=True)
class Point(Figures):
    """One point of a chart: the figures of the step that starts at `start`."""

    start: str


def _counted(counters: Mapping[str, int]) -> dict[str, Any]:
    """The Figures of a set of counters, by name."""
    attempts = sum(v for k, v in counters.items() if k.startswith("attempts:"))
    succeeded = counters.get("attempts:2xx", 0)
    return {
        "events_accepted": sum(v for k, v in counters.items() if k.startswith("events_accepted:")),
        "attempts": attempts,
        "attempts_succeeded": succeeded,
        "success_rate": round(succeeded / attempts, 4) if attempts else None,
        "deliveries": {s.value: counters.get(f"deliveries:{s.value}", 0) for s in FINISHED},
        "latency_p50_ms": quantile_ms(counters, 0.5),
        "latency_p95_ms": quantile_ms(counters, 0.95),
    }


@dataclass(frozen=True, slots=True)
class Overview:
    """The figures of a window, its chart series, the backlog, and the webhooks that need care:
    each with when its failures began (RFC 3339), or None if it is disabled without any."""

    window: str
    since: str
    until: str
    step_seconds: int
    totals: Figures
    series: list[Point]
    backlog: int
    troubled: list[tuple[Webhook, str | None]]


def _merge(rows: Iterable[Mapping[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for row in rows:
        total.update(row)
    return total


async def _backlog(ctx: Resources, scope: Scope) -> int:
    if scope.webhook_id is not None:
        return await webhook_backlog(ctx.redis, scope.webhook_id)
    return await backlog(ctx.redis, scope.tenant_id)


async def overview(
    ctx: Resources, window: Window, moment: datetime, scope: Scope = Scope()
) -> Overview:
    """The window's totals and chart series, the backlog, and webhooks failing or disabled,
    all within `scope`."""
    count = window.seconds // window.step
    # Points start on whole steps, the last one holding `moment`.
    first = int(moment.timestamp()) // window.step * window.step - (count - 1) * window.step
    points = await counters(
        ctx.database, first, window.step, count, DURATION_BUCKETS, scope.tenant_id, scope.webhook_id
    )
    series = [
        Point(start=from_timestamp(first + i * window.step), **_counted(point))
        for i, point in enumerate(points)
    ]
    troubled = [
        (w, since)
        for w, since in await ctx.webhooks.troubled(_WEBHOOK_SCAN, scope.tenant_id)
        if scope.webhook_id in (None, w.id)
    ]
    return Overview(
        window=window.name,
        since=from_timestamp(first),
        until=rfc3339(moment),
        step_seconds=window.step,
        totals=Figures(**_counted(_merge(points))),
        series=series,
        backlog=await _backlog(ctx, scope),
        troubled=[(w, from_timestamp(since / 1000) if since else None) for w, since in troubled],
    )
