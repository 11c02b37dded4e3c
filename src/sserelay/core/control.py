"""The relay's control channels: messages on the bus that are for the relays themselves,
not for any stream (the operator's page: every relay's snapshot, docs/admin.md).

Their names are in the reserved namespace (``sserelay.``), which no client may subscribe
to or publish on (:mod:`sserelay.wire.channels`). :class:`ControlSink` stands between
the bus listener and the delivery core only on relays that use one, so the others pay
nothing on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .protocols import BusSink, Notified


class ControlSink:
    """A :class:`~sserelay.core.protocols.BusSink` that hands the messages of its control
    channels to their handlers and everything else to ``sink``."""

    def __init__(self, sink: BusSink) -> None:
        self._sink = sink
        #: Control channel -> what takes its raw payloads.
        self.handlers: dict[str, Callable[[str], None]] = {}

    def on_message(self, channel: str, payload: str) -> None:
        handler = self.handlers.get(channel)
        if handler is None:
            self._sink.on_message(channel, payload)
        else:
            handler(payload)

    def on_durable(self, channel: str, notified: Notified | None) -> None:
        self._sink.on_durable(channel, notified)

    def on_listening(self, channels: Iterable[str]) -> None:
        self._sink.on_listening(channels)
