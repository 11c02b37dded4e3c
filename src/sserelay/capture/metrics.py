"""Prometheus families for a relay's capturer (registered on the relay's own registry)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .capturer import Capturer


class CaptureCollector(Collector):
    def __init__(self, capturer: Capturer) -> None:
        self.capturer = capturer

    def collect(self) -> Iterator[Metric]:
        capturer = self.capturer
        counters = capturer.counters
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
        for name, help_, value in (
            (
                "transactions",
                "Source transactions captured by this process.",
                counters.transactions,
            ),
            ("events", "Events this process wrote to the log.", counters.events),
            (
                "rows_skipped",
                "Row changes not published (the channel template gave no valid channel).",
                counters.rows_skipped,
            ),
            ("sessions", "Times this process became the consuming capturer.", capturer.sessions),
            ("failures", "Capture sessions or connections that failed.", capturer.failures),
        ):
            yield CounterMetricFamily(f"sserelay_capture_{name}", help_, value)
