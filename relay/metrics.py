"""Metrics: counters every process adds to one Redis hash, served by any API replica.

Workers have no HTTP server and there may be many of each process, so the numbers live in Redis
(each process counts in memory and adds its counts every few seconds) and GET /metrics renders
them for Prometheus.
Scrape one replica (through the Service or load balancer), not each: every replica reports the
same totals. The exception is `relay_redis_up`, which says whether the replica that answered could
read Redis; when it could not, that gauge is all the page has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from relay import __version__
from relay.delivery.model import Status
from relay.store.metrics import Snapshot

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def status_class(status_code: int | None) -> str:
    """`2xx` … `5xx`, or `error` when no HTTP response came back."""
    return f"{status_code // 100}xx" if status_code else "error"


def attempt_counters(status_code: int | None, seconds: float, final: Status | None) -> list[str]:
    """The counter fields one attempt increments."""
    fields = [f"attempts:{status_class(status_code)}", "attempt_seconds_count"]
    fields += [f"attempt_seconds_bucket:{le}" for le in DURATION_BUCKETS if seconds <= le]
    if final is not None:
        fields.append(f"deliveries:{final.value}")
    return fields


class Counts:
    """What this process counted since it last added it to the shared counters in Redis.

    Attempts, finished deliveries, accepted events and failures are counted here, in memory,
    and added to Redis a few times a minute: Redis sees one HINCRBYFLOAT per counter per flush,
    never a write per attempt.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, float] = {}

    def add(self, field: str, amount: float = 1) -> None:
        """Count `amount` more of `field`."""
        self._counts[field] = self._counts.get(field, 0) + amount

    def add_all(self, fields: Iterable[str]) -> None:
        """Count one more of each field."""
        for field in fields:
            self.add(field)

    def take(self) -> dict[str, float]:
        """The counts so far, reset to zero; `give_back` them if storing them fails."""
        taken, self._counts = self._counts, {}
        return taken

    def give_back(self, taken: Mapping[str, float]) -> None:
        """Return counts that could not be stored, to be added next time."""
        for field, amount in taken.items():
            self.add(field, amount)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, text)
    gauge.add_metric([], value)
    return gauge


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    counter = CounterMetricFamily(name, text)
    counter.add_metric([], value)
    return counter


class _Snapshot(Collector):
    def __init__(self, snap: Snapshot | None, postgres_up: bool) -> None:
        self._snap = snap
        self._postgres_up = postgres_up

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        info = GaugeMetricFamily("relay_build_info", "relay's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        up = 1 if self._snap is not None else 0
        yield _gauge("relay_redis_up", "1 when this API replica can read Redis.", up)
        yield _gauge(
            "relay_postgres_up",
            "1 when this API replica can query PostgreSQL.",
            1 if self._postgres_up else 0,
        )
        if self._snap is not None:
            yield from self._shared(self._snap)

    def _shared(
        self, snap: Snapshot
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        c = {k.decode(): float(v) for k, v in snap.counters.items()}
        events = CounterMetricFamily(
            "relay_events_accepted", "Events accepted, by type.", labels=["type"]
        )
        undelivered = CounterMetricFamily(
            "relay_events_undelivered",
            "Events accepted that went to no webhook, by why: no_webhooks (the tenant has none), "
            "no_subscribers (none subscribes to the type), webhooks_disabled.",
            labels=["reason"],
        )
        attempts = CounterMetricFamily(
            "relay_attempts", "Delivery attempts, by response status class.", labels=["status"]
        )
        finished = CounterMetricFamily(
            "relay_deliveries_finished", "Deliveries that ended, by status.", labels=["status"]
        )
        for field, value in sorted(c.items()):
            kind, _, label = field.partition(":")
            if kind == "events_accepted":
                events.add_metric([label], value)
            elif kind == "events_undelivered":
                undelivered.add_metric([label], value)
            elif kind == "attempts":
                attempts.add_metric([label], value)
            elif kind == "deliveries":
                finished.add_metric([label], value)
        buckets = [(str(le), c.get(f"attempt_seconds_bucket:{le}", 0.0)) for le in DURATION_BUCKETS]
        buckets.append(("+Inf", c.get("attempt_seconds_count", 0.0)))
        duration = HistogramMetricFamily(
            "relay_attempt_duration_seconds",
            "How long attempts took.",
            buckets=buckets,
            sum_value=c.get("attempt_seconds_sum", 0.0),
        )
        yield from (events, undelivered, attempts, finished, duration)
        yield _counter(
            "relay_sweeper_requeued",
            "Deliveries taken over after their worker's lease ran out.",
            c.get("sweeper_requeued", 0.0),
        )
        yield _counter(
            "relay_deliveries_missing",
            "Deliveries found due with their record gone from Redis (evicted or lost), so never "
            "attempted again.",
            c.get("deliveries_missing", 0.0),
        )
        yield _counter(
            "relay_redis_errors",
            "Redis calls that failed, in any API or worker process.",
            c.get("redis_errors", 0.0),
        )
        yield _counter(
            "relay_redis_oom_errors",
            "Redis calls refused because Redis was out of memory (at its maxmemory), in any API "
            "or worker process.",
            c.get("redis_oom_errors", 0.0),
        )
        yield _counter(
            "relay_history_write_errors",
            "Batches the history writer could not write to PostgreSQL (they are kept and retried).",
            c.get("history_write_errors", 0.0),
        )
        yield _gauge(
            "relay_history_backlog",
            "Records waiting in Redis to be written to PostgreSQL.",
            snap.history_backlog,
        )
        yield _gauge(
            "relay_history_lag_seconds",
            "Age of the oldest record not yet written to PostgreSQL (0 when none waits).",
            snap.history_lag_ms / 1000,
        )
        yield _gauge(
            "relay_deliveries_pending", "Deliveries waiting for an attempt or in one.", snap.pending
        )
        yield _gauge(
            "relay_deliveries_due",
            "Deliveries whose attempt is due now and not yet taken by a worker: the backlog.",
            snap.due,
        )
        yield _gauge(
            "relay_workers", "Workers that announced themselves in the last 30 s.", snap.workers
        )
        yield _gauge(
            "relay_webhooks_disabled",
            "Webhooks disabled by their owner or for failing.",
            snap.disabled_webhooks,
        )


def render(snap: Snapshot | None, postgres_up: bool) -> tuple[bytes, str]:
    """Prometheus text for a snapshot, or for a replica that could not read Redis (None)."""
    registry = CollectorRegistry()
    registry.register(_Snapshot(snap, postgres_up))
    return generate_latest(registry), CONTENT_TYPE_LATEST
