"""Metrics: counters every process adds to one Redis hash, served by any API replica.

Workers have no HTTP server and there may be many of each process, so the numbers live in Redis
(each process counts in memory and adds its counts every few seconds) and GET /metrics renders
them for Prometheus.
Every replica reports the same totals, so scraping one (through the Service or load balancer)
is enough, and where every replica is scraped (a ServiceMonitor) queries take the `max` over
them, never the `sum`. The exceptions are `relay_redis_up` and `relay_postgres_up`, which say
whether the replica that answered could reach each store (take the `min`): when it could not
reach Redis, they are all the page has.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from functools import cache

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


def _field(kind: str, *labels: object) -> str:
    """A counter's field in the shared hash: `kind`, then its label values after a colon."""
    return f"{kind}:{' '.join(map(str, labels))}" if labels else kind


@cache
def _histogram_fields(histogram: str, labels: tuple[object, ...]) -> tuple[str, tuple[str, ...]]:
    """A histogram's count field and its bucket fields, smallest first, for one set of labels.
    Made once: every request and attempt observes one, and its labels are of a fixed few."""
    buckets = tuple(_field(f"{histogram}_bucket", *labels, le) for le in DURATION_BUCKETS)
    return _field(f"{histogram}_count", *labels), buckets


def _observed(histogram: str, seconds: float, *labels: object) -> list[str]:
    """The fields one observation increments: the histogram's count and each bucket it falls
    in (its sum is added apart, by the seconds themselves)."""
    count, buckets = _histogram_fields(histogram, labels)
    return [count, *buckets[bisect_left(DURATION_BUCKETS, seconds) :]]


def attempt_counters(status_code: int | None, seconds: float, final: Status | None) -> list[str]:
    """The counter fields one attempt increments."""
    fields = [f"attempts:{status_class(status_code)}", *_observed("attempt_seconds", seconds)]
    if final is not None:
        fields.append(f"deliveries:{final.value}")
    return fields


# Any other method a client sends is counted as `other`: every label is one of a fixed few.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@cache
def _request_fields(method: str, route: str, status: int) -> tuple[str, str]:
    # Made once for each of the few (method, route, status) there are, not once a request.
    return _field("http_requests", method, route, status), _field("http_seconds_sum", method, route)


def count_request(counts: Counts, method: str, route: str, status: int, seconds: float) -> None:
    """Count one API request under its route's template (never its path: ids would make a
    series per object), by status; and its duration, by route."""
    method = method if method in _METHODS else "other"
    requests, seconds_sum = _request_fields(method, route, status)
    counts.add(requests)
    counts.add_all(_observed("http_seconds", seconds, method, route))
    counts.add(seconds_sum, seconds)


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
        counts = self._counts
        for field in fields:  # a histogram's dozen buckets for every request and attempt
            counts[field] = counts.get(field, 0) + 1

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


def _buckets(
    counters: Mapping[str, float], histogram: str, *labels: object
) -> list[tuple[str, float]]:
    """A histogram's cumulative buckets, as counted by `_observed`."""
    buckets = [
        (str(le), counters.get(_field(f"{histogram}_bucket", *labels, le), 0.0))
        for le in DURATION_BUCKETS
    ]
    buckets.append(("+Inf", counters.get(_field(f"{histogram}_count", *labels), 0.0)))
    return buckets


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
        requests = CounterMetricFamily(
            "relay_http_requests",
            "API requests, by method, route (its template) and status code, in every API process.",
            labels=["method", "route", "status"],
        )
        routes = set()
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
            elif kind == "http_requests":
                requests.add_metric(label.split(" "), value)
            elif kind == "http_seconds_count":
                routes.add(label)
        duration = HistogramMetricFamily(
            "relay_attempt_duration_seconds",
            "How long attempts took.",
            buckets=_buckets(c, "attempt_seconds"),
            sum_value=c.get("attempt_seconds_sum", 0.0),
        )
        request_duration = HistogramMetricFamily(
            "relay_http_request_duration_seconds",
            "How long API requests took to answer, by method and route, in every API process.",
            labels=["method", "route"],
        )
        for route in sorted(routes):
            request_duration.add_metric(
                route.split(" "),
                _buckets(c, "http_seconds", route),
                c.get(_field("http_seconds_sum", route), 0.0),
            )
        yield from (events, undelivered, attempts, finished, duration, requests, request_duration)
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
        yield _counter(
            "relay_history_records_held",
            "Records PostgreSQL refused, set apart so that the rest of history goes on (each is "
            "kept in Redis and tried again every 10 minutes; counted each time it is refused).",
            c.get("history_records_held", 0.0),
        )
        yield _gauge(
            "relay_history_held",
            "Records held apart because PostgreSQL refused them, kept in Redis meanwhile.",
            snap.history_held,
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
            "relay_delivery_lag_seconds",
            "How long the delivery due longest has been due and not taken by a worker (0 when "
            "none is): how late receivers hear of events.",
            snap.delivery_lag_ms / 1000,
        )
        yield _gauge(
            "relay_workers", "Workers that announced themselves in the last 30 s.", snap.workers
        )
        yield _gauge(
            "relay_webhooks_disabled",
            "Webhooks disabled by their owner or for failing.",
            snap.disabled_webhooks,
        )
        yield _counter(
            "relay_webhooks_auto_disabled",
            "Webhooks relay disabled because they kept failing (RELAY_DISABLE_AFTER) or are gone.",
            c.get("webhooks_auto_disabled", 0.0),
        )
        if snap.memory is not None:
            yield _gauge(
                "relay_redis_memory_used_bytes",
                "Redis's memory that counts against its maxmemory (used_memory without the "
                "replication and AOF buffers).",
                snap.memory.used - snap.memory.not_counted,
            )
            yield _gauge(
                "relay_redis_memory_max_bytes",
                "Redis's maxmemory: past it, under noeviction, Redis refuses writes (0: no limit).",
                snap.memory.maxmemory,
            )


def render(snap: Snapshot | None, postgres_up: bool) -> tuple[bytes, str]:
    """Prometheus text for a snapshot, or for a replica that could not read Redis (None)."""
    registry = CollectorRegistry()
    registry.register(_Snapshot(snap, postgres_up))
    return generate_latest(registry), CONTENT_TYPE_LATEST
