"""The broker interface: what the hub needs from PostgreSQL (or, later, Redis).

A broker holds the relay's one connection to the bus, subscribes to exactly the
channels the hub asks for, and hands every message to the hub. It owns its
reconnection: the hub only sees ``healthy`` go false and true again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

#: Called with (channel, payload) for every message, in the order the bus delivered them.
OnMessage = Callable[[str, str], None]
#: Called with the channels that just became live (subscribed on the bus).
OnListening = Callable[[Iterable[str]], None]


class Broker(Protocol):
    """One process's subscription to the bus."""

    def listen(self, channel: str) -> None:
        """Start receiving ``channel`` (idempotent; applied asynchronously)."""

    def unlisten(self, channel: str) -> None:
        """Stop receiving ``channel`` (idempotent; applied asynchronously)."""

    def is_listening(self, channel: str) -> bool:
        """True once messages on ``channel`` are being received."""

    @property
    def healthy(self) -> bool:
        """True while the connection is up and every wanted channel is subscribed."""

    def status(self) -> dict[str, Any]:
        """A small JSON-able description for ``/healthz``."""

    async def run(self) -> None:
        """Connect, subscribe and deliver until cancelled, reconnecting as needed."""
