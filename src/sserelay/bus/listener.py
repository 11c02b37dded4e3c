"""What the PostgreSQL and Redis listeners share: one connection, owned by one task.

:class:`Listener` keeps the channel bookkeeping (wanted and live), the reconnect
loop with jittered exponential backoff, the probe schedule and the
``connected``/``healthy``/``status()`` reporting. A subclass brings the I/O:
opening a session (:meth:`Listener._session`), one step of it (read what arrived,
send what the wanted channels need), sending a probe, and closing the connection.

Nothing ends the listener but a cancellation: a lost connection is expected (it
reconnects), and so is any other exception, which is logged with its traceback,
counted (:attr:`Listener.failures`) and shown as ``last_error`` before the same
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar

from .. import jitter
from ..core.protocols import BusSink, Notified

#: The connection type of a subclass.
C = TypeVar("C")


class ProbeFailed(Exception):
    """The liveness probe did not come back in time."""


class Listener(ABC, Generic[C]):
    """The bus-neutral part of a :class:`~sserelay.core.protocols.Listener`.

    Subclasses keep ``_active`` (the live channels) up to date from their
    ``_step``, call :meth:`_connected` once a session is up, then ``await
    self._serve(conn)``; they hand messages to :meth:`_hand_over` and probe
    answers to :meth:`_probe_answered`.
    """

    #: The ``broker`` of :meth:`status`.
    broker: ClassVar[str]
    #: What a lost, refused or stuck connection raises: the listener reconnects after it.
    errors: ClassVar[tuple[type[Exception], ...]]
    #: Words for the log: the logger, this listener, its bus, its subscribe command,
    #: and what it receives.
    _log: ClassVar[logging.Logger]
    _what: ClassVar[str]
    _bus: ClassVar[str]
    _subscribe: ClassVar[str]
    _item: ClassVar[str]

    def __init__(
        self,
        sink: BusSink,
        *,
        probe_interval: float,
        probe_timeout: float,
        reconnect_min: float,
        reconnect_max: float,
    ) -> None:
        self._sink = sink
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        #: Channels wanted, in the order they were asked for (LISTENed in that order).
        self._wanted: dict[str, None] = {}
        #: The wanted channels changed since the last sync (or the session is new).
        self._dirty = True
        #: Channels live on the bus: messages sent on them now reach this listener.
        self._active: set[str] = set()
        self._wake = asyncio.Event()
        self._conn: C | None = None
        self._probe_sent: float | None = None
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.notifications = 0
        #: Unexpected errors that ended a session (a bug, a driver surprise): each logged
        #: with its traceback; the listener reconnected after each.
        self.failures = 0
        #: The last unexpected error (kept after the reconnect, for the operator's view).
        self.last_failure: str | None = None
        self.last_error: str | None = None
        #: Seconds a probe took to come back, from the latest one.
        self.lag: float | None = None
        self.lag_observer: Any = None  # a prometheus Histogram-like with .observe(), optional
        self.connected_event = asyncio.Event()

    # -- Broker interface ------------------------------------------------------------

    def listen(self, channel: str) -> None:
        if channel in self._active and channel not in self._wanted:
            # Wanted again before its unsubscribe went out: it never stopped, so no new
            # subscribe will confirm it. Say it is live (soon: not inside the caller).
            asyncio.get_running_loop().call_soon(self._still_listening, channel)
        self._wanted[channel] = None
        self._dirty = True
        self._wake.set()

    def _still_listening(self, channel: str) -> None:
        if channel in self._active and channel in self._wanted:
            self._sink.on_listening([channel])

    def unlisten(self, channel: str) -> None:
        self._wanted.pop(channel, None)
        self._dirty = True
        self._wake.set()

    def is_listening(self, channel: str) -> bool:
        return self.connected and channel in self._active

    @property
    def healthy(self) -> bool:
        return (
            self.connected
            and len(self._active) >= len(self._wanted)
            and self._wanted.keys() <= self._active
            and not self.probe_overdue
        )

    @property
    def probe_overdue(self) -> bool:
        """A probe is out and late: the connection may be hung (not closed)."""
        sent = self._probe_sent
        return sent is not None and time.monotonic() - sent > self.probe_timeout

    def status(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "connected": self.connected,
            "channels": len(self._active),
            "connects": self.connects,
            "failures": self.failures,
            "last_failure": self.last_failure,
            "last_error": self.last_error,
        }

    # -- the connection task ---------------------------------------------------------

    async def run(self) -> None:
        """Hold the connection until cancelled; reconnect with jittered backoff."""
        failures = 0
        while True:
            connects_before = self.connects
            try:
                await self._session()
            except self.errors as exc:
                self.last_error = one_line(exc)
            except Exception as exc:  # not a lost connection: a bug or a surprise
                self.failures += 1
                self.last_error = self.last_failure = one_line(exc)
                self._log.exception("%s failed unexpectedly; reconnecting", self._what)
            finally:
                await self._disconnect()
            if self.connects > connects_before:
                failures = 0
                self._log.warning(
                    "%s connection lost: %s; reconnecting", self._what, self.last_error
                )
            elif failures == 0:
                self._log.warning("cannot reach %s: %s; retrying", self._bus, self.last_error)
            failures += 1
            delay = min(self.reconnect_max, self.reconnect_min * 2 ** min(failures - 1, 16))
            await asyncio.sleep(delay * jitter.uniform(0.5, 1.0))

    @abstractmethod
    async def _session(self) -> None:
        """Connect (setting ``_conn``), call :meth:`_connected`, then :meth:`_serve`."""

    def _connected(self) -> None:
        if self.connects:
            self.reconnects += 1
        self.connects += 1
        self.connected = True
        self.connected_event.set()
        self.last_error = None
        self._log.info(
            "%s connected (%s channels to %s)", self._what, len(self._wanted), self._subscribe
        )

    async def _serve(self, conn: C) -> None:
        """Step the session and probe the connection until something fails."""
        next_probe = time.monotonic() + self.probe_interval
        while True:
            self._wake.clear()
            await self._step(conn)
            now = time.monotonic()
            if self._probe_sent is not None and now - self._probe_sent > self.probe_timeout:
                raise ProbeFailed(
                    f"{self._bus} did not answer the liveness probe within "
                    f"{self.probe_timeout:g}s (the connection is hung or the server overloaded)"
                )
            if now >= next_probe:
                if self._probe_sent is None:  # one probe in flight at a time
                    self._probe_sent = now
                    await self._send_probe(conn, repr(now))
                next_probe = now + self.probe_interval * jitter.uniform(0.9, 1.1)
                continue
            timeout = next_probe - now
            if self._probe_sent is not None:
                timeout = min(timeout, self._probe_sent + self.probe_timeout - now)
            await self._idle(conn, max(timeout, 0.01))

    def _changes(
        self, batch: int, current: set[str] | None = None
    ) -> Iterator[tuple[list[str], list[str]]]:
        """Batches of (channels to subscribe, channels to unsubscribe), at most ``batch``
        in each, until nothing is left to do; subscriptions in the order they were asked
        for. ``current``: the channels subscribed on the connection (default: the live
        ones). Each batch is checked afresh (the wanted set may change while one runs)."""
        have = self._active if current is None else current
        while self._dirty:
            self._dirty = False
            add = [c for c in self._wanted if c not in have]
            drop = [c for c in have if c not in self._wanted]
            while add or drop:
                now_add, add = add[:batch], add[batch:]
                now_drop, drop = drop[: batch - len(now_add)], drop[batch - len(now_add) :]
                now_add = [c for c in now_add if c in self._wanted and c not in have]
                now_drop = [c for c in now_drop if c not in self._wanted and c in have]
                if now_add or now_drop:
                    yield now_add, now_drop

    @abstractmethod
    def _parse(self, payload: str) -> Notified | None:
        """A notification of the bus's log, parsed (None if it is not one)."""

    @abstractmethod
    async def _step(self, conn: C) -> None:
        """Take what the bus sent; subscribe what is wanted, unsubscribe what is not."""

    @abstractmethod
    async def _send_probe(self, conn: C, payload: str) -> None:
        """Send ``payload`` to come back to :meth:`_probe_answered`."""

    async def _idle(self, conn: C, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for ``_wake``."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands
        # as the wake-up fires, and the task then never stops on shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    @abstractmethod
    async def _close(self, conn: C) -> None:
        """Close the connection (the session is over)."""

    async def _disconnect(self) -> None:
        was_connected = self.connected
        self.connected = False
        self.connected_event.clear()
        self._active.clear()
        self._dirty = True
        self._probe_sent = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):  # not wait_for: see _idle
                    await self._close(conn)
        if was_connected:
            self._log.info("%s disconnected", self._what)

    # -- what the bus sends ----------------------------------------------------------

    def _hand_over(self, channel: str, payload: str, durable: bool) -> None:
        """Give the sink a message received on ``channel`` (a notification of its log, parsed
        here, if it came on the channel's durable name)."""
        self.notifications += 1
        if channel in self._wanted:
            try:
                if durable:
                    self._sink.on_durable(channel, self._parse(payload))
                else:
                    self._sink.on_message(channel, payload)
            except Exception:
                # One bad message must not take the listener (and every stream) down.
                self.failures += 1
                self._log.exception("delivering a %s on %r failed; dropped it", self._item, channel)

    def _probe_answered(self, payload: str | bytes) -> None:
        try:
            sent = float(payload)
        except ValueError:
            return
        if sent == self._probe_sent:
            self._probe_sent = None
            self.lag = time.monotonic() - sent
            if self.lag_observer is not None:
                self.lag_observer.observe(self.lag)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for ``last_error`` and the log."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
