"""The capturer: a long-lived task that consumes the slot when it leads, stands by when
another relay does, and reconnects with backoff whatever happens.

``await Capturer(dsn).run()`` never returns on its own (cancel it to stop), and never
ends on an unexpected error without logging its traceback: it logs, waits (jittered
backoff) and starts over. :meth:`Capturer.status` is the state for ``/healthz`` and
``/metrics``.

A session as leader runs two tasks: the consumer (:mod:`.consumer`) and the keeper,
which emits heartbeats and reads the status on the lock connection. If either ends,
the other is cancelled and every connection closed; the lock goes with its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Coroutine
from typing import Any

from .... import jitter
from ....errors import BrokerUnavailable
from .consumer import Consumer, Counters
from .errors import Conflict, DatabaseRefused, NotInstalled, translated
from .leader import LockConnection
from .lsn import format_lsn
from .options import CaptureOptions
from .pgoutput import DecodeError
from .rules import PUBLICATIONS, Rule, aload_rules
from .status import SlotStatus, lag_seconds
from .stream import ReplicationStream, SlotBusy, SlotInvalidated, SlotMissing, StreamError
from .writer import LogWriter

log = logging.getLogger("sserelay.capture")


class Capturer:
    """Change data capture for one database (see the module docstring)."""

    def __init__(self, dsn: str, options: CaptureOptions | None = None) -> None:
        self.dsn = dsn
        self.options = options or CaptureOptions()
        #: ``starting``, ``standby``, ``leader``, ``slot_lost``, ``not_installed``, ``error``.
        self.role = "starting"
        self.counters = Counters()
        self.sessions = 0
        self.failures = 0
        self.slot_status: SlotStatus | None = None
        self.error: str | None = None
        #: True while this process streams from the slot (after START_REPLICATION).
        self.streaming = False
        self._lock: LockConnection | None = None

    # -- the status ---------------------------------------------------------------------------

    @property
    def lag_seconds(self) -> float | None:
        c = self.counters
        now = datetime.datetime.now(datetime.UTC)
        if self.role == "leader" and c.heartbeat_emitted is not None:
            interval = self.options.heartbeat_interval
            return lag_seconds(c.heartbeat_emitted, c.heartbeat_captured, interval, now)
        status = self.slot_status
        return None if status is None else status.lag_seconds

    @property
    def healthy(self) -> bool:
        """False while the slot is lost, or (with ``max_lag``) capture lags behind."""
        return self.problem() is None

    def problem(self) -> str | None:
        """Why capture makes its relay unhealthy, as a short reason class (None: it does
        not): the public ``/healthz`` shows this; :meth:`status` has the detail."""
        if self.role == "slot_lost":
            return "capture slot lost"
        lag = self.lag_seconds
        if self.options.max_lag is not None and lag is not None and lag > self.options.max_lag:
            return "capture lagging"
        return None

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary for ``/healthz``."""
        s = self.slot_status
        c = self.counters
        return {
            "role": self.role,
            "healthy": self.healthy,
            "slot": None if s is None else s.slot,
            "slot_active": None if s is None else s.slot_active,
            "wal_status": None if s is None else s.wal_status,
            "lag_bytes": None if s is None else s.lag_bytes,
            "lag_seconds": self.lag_seconds,
            "last_commit_lsn": format_lsn(c.last_commit_lsn)
            if c.last_commit_lsn
            else (None if s is None else s.last_commit_lsn),
            "rows_skipped": c.rows_skipped,
            "error": self.error,
        }

    # -- the long-lived task ------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: connect, lead or stand by, consume; back off and retry on failure."""
        delay = self.options.reconnect_min
        while True:
            started = time.monotonic()
            try:
                await self._connected()
            except asyncio.CancelledError:
                raise
            except (BrokerUnavailable, StreamError, Conflict, NotInstalled) as exc:
                self._failed(exc, logging.WARNING)
            except (DatabaseRefused, DecodeError) as exc:  # needs an operator: say it loudly
                self._failed(exc, logging.ERROR)
            except Exception as exc:  # a bug, or a database answer we did not expect
                self._failed(exc, logging.ERROR, trace=True)
            finally:
                await self._close_lock()
            if time.monotonic() - started > 60:
                delay = self.options.reconnect_min  # it ran for a while: not a tight loop
            await asyncio.sleep(delay * jitter.uniform(0.5, 1.5))
            delay = min(delay * 2, self.options.reconnect_max)

    def _failed(self, exc: BaseException, level: int, *, trace: bool = False) -> None:
        self.failures += 1
        self.error = f"{type(exc).__name__}: {exc}"
        if self.role == "leader":
            self.role = "error"
        log.log(level, "capture: %s; retrying", self.error, exc_info=exc if trace else None)

    async def _close_lock(self) -> None:
        if self._lock is not None:
            await self._lock.close()
            self._lock = None

    async def _connected(self) -> None:
        options = self.options
        self._lock = lock = await LockConnection.connect(
            self.dsn, application_name=options.application_name, timeout=options.connect_timeout
        )
        while True:
            self.slot_status = await lock.status()
            if self.slot_status is None:
                self._set_role("not_installed", "capture is not installed (sserelay capture add)")
            elif await lock.try_acquire():
                await self._lead(lock)
                return
            else:
                self._set_role("standby")
            await asyncio.sleep(options.standby_interval * jitter.uniform(0.8, 1.2))

    def _set_role(self, role: str, why: str | None = None) -> None:
        if role != self.role:
            log.info("capture: %s%s", role, f" ({why})" if why else "")
        self.role = role

    # -- leading ------------------------------------------------------------------------------

    async def _lead(self, lock: LockConnection) -> None:
        """Consume until something fails; with the slot lost, wait for a new one."""
        self._set_role("leader", "holding the capture lock")
        self.sessions += 1
        writer = await LogWriter.connect(self.dsn, application_name=self.options.application_name)
        stream: ReplicationStream | None = None
        try:
            slot = await writer.load_state()
            rules = await self._rules(writer)
            if self.slot_status is not None and self.slot_status.lost_at is not None:
                reason = self.slot_status.lost_reason or "the slot was lost"
                await self._slot_lost(lock, writer, StreamError(reason), rules.values())
                return
            stream = await self._open_stream(lock, writer, slot, rules)
            if stream is None:
                return
            self.error = None
            consumer = Consumer(stream, writer, rules, self.options, self.counters)
            self.streaming = True
            await _first_to_end(consumer.run(), self._keep(lock))
        finally:
            self.streaming = False
            if stream is not None:
                await stream.close()
            await writer.close()

    async def _rules(self, writer: LogWriter) -> dict[int, Rule]:
        with translated("reading the capture rules"):
            rules = await aload_rules(writer.conn)
            await writer.conn.rollback()
        return rules

    async def _open_stream(
        self, lock: LockConnection, writer: LogWriter, slot: str, rules: dict[int, Rule]
    ) -> ReplicationStream | None:
        """Start streaming; None (after recording it) when the slot is lost."""
        busy_since: float | None = None
        while True:
            try:
                return await ReplicationStream.open(
                    self.dsn,
                    slot,
                    list(PUBLICATIONS),
                    application_name=self.options.application_name,
                    timeout=self.options.connect_timeout,
                )
            except (SlotMissing, SlotInvalidated) as exc:
                await self._slot_lost(lock, writer, exc, rules.values())
                return None
            except SlotBusy as exc:
                busy_since = busy_since or time.monotonic()
                if time.monotonic() - busy_since > self.options.takeover_timeout:
                    pid = await lock.slot_pid(slot)
                    if pid is not None:
                        log.warning("capture: ending session %d, still on the slot (%s)", pid, exc)
                        await lock.terminate(pid)
                await asyncio.sleep(self.options.standby_interval * jitter.uniform(0.8, 1.2))

    async def _slot_lost(
        self, lock: LockConnection, writer: LogWriter, exc: StreamError, rules: Any
    ) -> None:
        """Tell the captured channels (``missed``, once), then wait for a usable slot
        (``sserelay capture reset-slot``), keeping the lock meanwhile."""
        reason = f"capture slot lost: {exc}"
        told = await writer.mark_lost(reason, rules)
        self._set_role("slot_lost", str(exc))
        self.error = reason
        if told is not None:
            log.error(
                "capture: %s; sent `missed` on %d channels; run `sserelay capture reset-slot`",
                exc,
                len(told),
            )
        while True:
            self.slot_status = status = await lock.status()
            if status is None or not status.lost:
                return
            await asyncio.sleep(self.options.standby_interval * jitter.uniform(0.8, 1.2))

    async def _keep(self, lock: LockConnection) -> None:
        """Heartbeats and status reads on the lock connection, while consuming."""
        interval = self.options.heartbeat_interval
        while True:
            await lock.heartbeat()
            self.slot_status = await lock.status()
            await asyncio.sleep(interval * jitter.uniform(0.9, 1.1))


async def _first_to_end(*coros: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines until one ends; cancel the others; raise what it raised."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for task in done:
        task.result()
    raise BrokerUnavailable("capture: a session task ended")
