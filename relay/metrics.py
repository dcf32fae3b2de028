"""Metrics: counters every process adds to one Redis hash, served by any API replica.

Workers have no HTTP server and there may be many of each process, so the numbers live in Redis
(one HINCRBY inside the scripts that change state) and GET /metrics renders them for Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from relay.delivery.model import Status

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


class _Snapshot(Collector):
    def __init__(self, counters: dict[str, float], pending: int) -> None:
        self._counters = counters
        self._pending = pending

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        c = self._counters
        events = CounterMetricFamily(
            "relay_events_accepted", "Events accepted, by type.", labels=["type"]
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
        requeued = CounterMetricFamily(
            "relay_sweeper_requeued", "Deliveries taken over after their worker's lease ran out."
        )
        requeued.add_metric([], c.get("sweeper_requeued", 0.0))
        pending = GaugeMetricFamily(
            "relay_deliveries_pending", "Deliveries waiting for an attempt or in one."
        )
        pending.add_metric([], self._pending)
        yield from (events, attempts, finished, duration, requeued, pending)


def render(counters: dict[bytes, bytes], pending: int) -> tuple[bytes, str]:
    """Prometheus text for a snapshot of the counters hash and the pending count."""
    registry = CollectorRegistry()
    registry.register(_Snapshot({k.decode(): float(v) for k, v in counters.items()}, pending))
    return generate_latest(registry), CONTENT_TYPE_LATEST
