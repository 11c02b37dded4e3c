"""Prometheus metrics, read from the relay's parts at scrape time.

Counters live as plain integers on the objects that count them, so the hot path pays
nothing for metrics; this collector turns them into Prometheus families.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .bus.postgres.capture import Capturer
    from .relay import Relay

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: (name, help, where the number is): the plain counters and gauges.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("streams_opened", "Streams opened since start.", "hub.streams_opened"),
    ("events_received", "Messages received from the bus.", "delivery.events_received"),
    ("deliveries", "Events written to streams.", "hub.deliveries"),
    (
        "slow_clients_dropped",
        "Streams closed because their unsent bytes passed the bound.",
        "hub.slow_dropped",
    ),
    (
        "streams_expired",
        "Streams ended at their deadline (token expiry or max_stream_lifetime).",
        "hub.streams_expired",
    ),
    (
        "streams_revoked",
        "Streams ended because a revocation covered them (ending reason: revoked).",
        "hub.streams_revoked",
    ),
    ("http_published", "Events published through POST /publish.", "publisher.published"),
    ("http_revoked", "Revocations made through POST /revoke.", "publisher.revoke.revoked"),
    (
        "revocation_reloads",
        "Times the relay read every revocation from the bus (start, reconnect, periodic).",
        "revocation_feed.loads",
    ),
    (
        "listener_reconnects",
        "Times the listener reconnected after losing its connection.",
        "listener.reconnects",
    ),
    (
        "listener_failures",
        "Unexpected errors in the listener (each logged with its traceback; it reconnected).",
        "listener.failures",
    ),
    ("events_replayed", "Durable events written to catching-up streams.", "delivery.replayed"),
    ("events_filled", "Durable events read from the log to fill a gap.", "delivery.filled"),
    (
        "durable_unconfirmed",
        "Durable notifications dropped because the log did not confirm them.",
        "delivery.unconfirmed",
    ),
    ("log_reads", "Queries run against the durable event log.", "log.queries"),
    ("log_reads_shared", "Log reads answered by a query already in flight.", "log.shared"),
)

GAUGES: tuple[tuple[str, str, str], ...] = (
    ("streams_open", "Open SSE streams.", "hub.stream_count"),
    ("channels", "Channels with at least one subscriber.", "hub.channel_count"),
    ("tasks_running", "Short tasks running (catch-ups, gap fills, publishes).", "tasks.jobs"),
    ("revocations", "Revocations in force on this relay.", "revocation_count"),
    (
        "revocation_feed_connected",
        "1 while the relay is subscribed to the bus's revocations.",
        "revocation_feed.connected",
    ),
)


def _read(relay: Relay | Capturer, path: str) -> float:
    value: Any = relay
    for part in path.split("."):
        value = getattr(value, part, 0)
    return float(value or 0)


class RelayCollector(Collector):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        relay = self.relay
        for name, text, path in GAUGES:
            yield GaugeMetricFamily(f"sserelay_{name}", text, _read(relay, path))
        for name, text, path in COUNTERS:
            yield CounterMetricFamily(f"sserelay_{name}", text, _read(relay, path))
        yield GaugeMetricFamily(
            "sserelay_listener_connected",
            "1 while the listening connection is up.",
            1 if relay.listener.connected else 0,
        )
        yield GaugeMetricFamily(
            "sserelay_up",
            "1 while the relay can serve (see /healthz for the reason when it cannot).",
            0 if relay.problem() else 1,
        )
        undecodable = getattr(relay.listener, "undecodable", 0)
        yield CounterMetricFamily(
            "sserelay_notifications_undecodable",
            "Notifications that were not valid text (delivered with U+FFFD in place).",
            undecodable,
        )
        failures = CounterMetricFamily(
            "sserelay_task_failures",
            "Unexpected failures of the relay's tasks, by task (each logged with its traceback).",
            labels=["task"],
        )
        for task, count in sorted(relay.tasks.failures.items()):
            failures.add_metric([task], count)
        yield failures
        rejected = CounterMetricFamily(
            "sserelay_requests_rejected",
            "Requests answered with an error, by status.",
            labels=["status"],
        )
        for status, count in sorted(relay.rejected.items()):
            rejected.add_metric([str(status)], count)
        yield rejected
        endings = CounterMetricFamily(
            "sserelay_stream_endings",
            "Streams that ended (or were refused by a limit), by reason (docs/admin.md).",
            labels=["reason"],
        )
        for reason, count in relay.hub.endings.counts.items():
            endings.add_metric([reason], count)
        yield endings
        if relay.capturer is not None:
            yield from capture_families(relay.capturer)
        if relay.presence is not None:
            for name, text, path in PRESENCE_COUNTERS:
                value = _read(relay.presence, path)  # type: ignore[arg-type]  # any object
                yield CounterMetricFamily(f"sserelay_presence_{name}", text, value)


#: (name, help, where the number is, from the presence service): docs/presence.md.
PRESENCE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("flushes", "Writes of this relay's presence changes to the bus.", "flushes"),
    (
        "flush_failures",
        "Presence writes that failed (retried in full).",
        "flush_failures",
    ),
    ("rows_written", "Presence rows written (changed, added or removed).", "rows_written"),
    ("events", "sserelay.join / sserelay.leave events sent.", "events_sent"),
    (
        "events_coalesced",
        "Join/leave events past the per-write bound, sent as one sserelay.presence event.",
        "events_coalesced",
    ),
)


#: (name, help, where the number is, from the capturer): capture's counters.
CAPTURE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("transactions", "Source transactions captured by this process.", "counters.transactions"),
    ("events", "Events this process wrote to the log.", "counters.events"),
    (
        "rows_skipped",
        "Row changes not published (the channel template gave no valid channel).",
        "counters.rows_skipped",
    ),
    ("sessions", "Times this process became the consuming capturer.", "sessions"),
    ("failures", "Capture sessions or connections that failed.", "failures"),
)


def capture_families(capturer: Capturer) -> Iterator[Metric]:
    """The ``sserelay_capture_*`` families of a relay's capturer (docs/capture.md)."""
    status = capturer.slot_status
    yield GaugeMetricFamily(
        "sserelay_capture_leader",
        "1 while this process consumes the capture slot.",
        1 if capturer.role == "leader" else 0,
    )
    yield GaugeMetricFamily(
        "sserelay_capture_slot_lost",
        "1 while the capture slot is dropped or invalidated (see `sserelay capture status`).",
        1 if capturer.role == "slot_lost" or (status is not None and status.lost) else 0,
    )
    if status is not None and status.lag_bytes is not None:
        yield GaugeMetricFamily(
            "sserelay_capture_lag_bytes",
            "WAL bytes written since the capture slot's confirmed position.",
            status.lag_bytes,
        )
    lag = capturer.lag_seconds
    if lag is not None:
        yield GaugeMetricFamily(
            "sserelay_capture_lag_seconds",
            "How far capture is behind, measured with heartbeats.",
            lag,
        )
    for name, text, path in CAPTURE_COUNTERS:
        yield CounterMetricFamily(f"sserelay_capture_{name}", text, _read(capturer, path))


class RelayMetrics:
    """The relay's own registry (not the global one, so several relays can coexist)."""

    def __init__(self, relay: Relay) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(RelayCollector(relay))
        self.lag = Histogram(
            "sserelay_notification_lag_seconds",
            "Time from publish to receipt by the listener, measured by its probes.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
