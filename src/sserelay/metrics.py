"""Prometheus metrics, read from the hub and the listener at scrape time.

Counters live as plain integers on the objects that count them, so the hot path
pays nothing for metrics; this collector turns them into Prometheus families.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .relay import Relay

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class RelayCollector(Collector):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        hub = self.relay.hub
        listener = self.relay.listener
        yield GaugeMetricFamily("sserelay_streams_open", "Open SSE streams.", hub.stream_count)
        yield GaugeMetricFamily(
            "sserelay_channels", "Channels with at least one subscriber.", hub.channel_count
        )
        yield CounterMetricFamily(
            "sserelay_streams_opened", "Streams opened since start.", hub.streams_opened
        )
        yield CounterMetricFamily(
            "sserelay_events_received",
            "Notifications received from the broker.",
            hub.events_received,
        )
        yield CounterMetricFamily(
            "sserelay_deliveries", "Events written to streams.", hub.deliveries
        )
        yield CounterMetricFamily(
            "sserelay_slow_clients_dropped",
            "Streams closed because their unsent bytes passed the bound.",
            hub.slow_dropped,
        )
        yield CounterMetricFamily(
            "sserelay_streams_expired",
            "Streams ended at their deadline (token expiry or max_stream_lifetime).",
            hub.streams_expired,
        )
        yield CounterMetricFamily(
            "sserelay_http_published",
            "Events published through POST /publish.",
            self.relay.publisher.published,
        )
        yield GaugeMetricFamily(
            "sserelay_listener_connected",
            "1 while the listening connection is up.",
            1 if listener.connected else 0,
        )
        yield CounterMetricFamily(
            "sserelay_listener_reconnects",
            "Times the listener reconnected after losing its connection.",
            listener.reconnects,
        )
        replay = self.relay.replay
        yield CounterMetricFamily(
            "sserelay_events_replayed",
            "Durable events written to catching-up streams.",
            replay.replayed,
        )
        yield CounterMetricFamily(
            "sserelay_log_reads",
            "Queries run against the durable event log.",
            self.relay.reader.queries,
        )
        yield CounterMetricFamily(
            "sserelay_log_reads_shared",
            "Log reads answered by a query already in flight.",
            self.relay.reader.shared,
        )
        rejected = CounterMetricFamily(
            "sserelay_requests_rejected",
            "Requests answered with an error, by status.",
            labels=["status"],
        )
        for status, count in sorted(self.relay.rejected.items()):
            rejected.add_metric([str(status)], count)
        yield rejected


class RelayMetrics:
    """The relay's own registry (not the global one, so several relays can coexist)."""

    def __init__(self, relay: Relay) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(RelayCollector(relay))
        self.lag = Histogram(
            "sserelay_notification_lag_seconds",
            "Time from NOTIFY to receipt by the listener, measured by its probes.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
