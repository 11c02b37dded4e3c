"""A relay process: hub + listener + HTTP front, with an explicit lifecycle.

``Relay.start()`` binds the socket and starts the listener and heartbeat tasks;
``Relay.shutdown()`` stops accepting, tells every stream to come back later,
closes them, and cancels and awaits every task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from . import jitter
from .access import StreamAccess
from .auth import policy_from_settings
from .config import Settings
from .errors import ConfigError
from .hub import Hub
from .metrics import CONTENT_TYPE, RelayMetrics
from .postgres import PostgresListener
from .publishing import Publisher
from .replay import LogReader, Replay
from .server import HttpConnection, protocol_factory

if TYPE_CHECKING:
    from .broker import EventLog
    from .capture import Capturer
    from .redis_broker import RedisListener

log = logging.getLogger("sserelay")


class OpenStreams:
    """The streams a front writes itself (the ASGI app, the Django view): at shutdown the
    relay waits for them to send their farewell before stopping (see
    :meth:`Relay.shutdown_after_streams`). The native server's connections need no count:
    the relay holds them."""

    def __init__(self) -> None:
        self.count = 0
        self._none_left: asyncio.Event | None = None

    def opened(self) -> None:
        self.count += 1

    def ended(self) -> None:
        self.count -= 1
        if not self.count and self._none_left is not None:
            self._none_left.set()

    async def wait_ended(self, timeout: float) -> None:
        """Until none is left, or ``timeout`` seconds."""
        if not self.count:
            return
        self._none_left = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._none_left.wait()
        finally:
            self._none_left = None


class Relay:
    """One relay process. Use ``async with Relay(settings, dsn=...)`` or start/shutdown.

    The bus is PostgreSQL (``dsn``) or Redis (``settings.redis_url``), as ``settings.bus``
    says; nothing else here depends on which.
    """

    def __init__(self, settings: Settings, *, dsn: str | None = None) -> None:
        self.settings = settings
        self.hub = Hub(heartbeat=settings.heartbeat, retry_ms=settings.retry_ms)
        #: Who may read which channels (built once), and the stream limits.
        self.policy = policy_from_settings(settings)
        self.access = StreamAccess(settings, self.policy)
        self.listener: PostgresListener | RedisListener
        self.reader: EventLog
        if settings.bus == "redis":
            self._redis_bus(settings)
        else:
            if dsn is None:
                raise ConfigError("the PostgreSQL broker needs a DSN")
            self.listener = PostgresListener(
                settings.listen_dsn or dsn,
                self.hub.dispatch,
                self.hub.on_listening,
                probe_interval=settings.probe_interval,
                probe_timeout=settings.probe_timeout,
                reconnect_min=settings.reconnect_min,
                reconnect_max=settings.reconnect_max,
            )
            # Durable channels: a small pool reads the log (replay, gap fills, large events).
            self.reader = LogReader(dsn)
        self.hub.attach(self.listener)
        self.replay = Replay(self.hub, self.reader, max_replay=settings.max_replay)
        self.hub.replay = self.replay
        #: ``POST /publish``: publishes through the reader's pool; owns its request tasks.
        self.publisher = Publisher(settings, self.reader, self.policy)
        self.connections: set[HttpConnection] = set()
        self.rejected: Counter[int] = Counter()
        self.metrics = RelayMetrics(self)
        self.listener.lag_observer = self.metrics.lag
        self.capturer: Capturer | None = None
        if settings.capture:  # change data capture (docs/capture.md)
            from .capture.serve import capturer_for

            self.capturer = capturer_for(
                dsn,
                bus=settings.bus,
                max_lag=settings.capture_max_lag,
                registry=self.metrics.registry,
            )
        self.started = time.time()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._all_closed = asyncio.Event()

    def _redis_bus(self, settings: Settings) -> None:
        """Redis as the bus: pub/sub for the live events, one stream per durable channel."""
        try:
            from .redis_broker import RedisListener
            from .redis_log import RedisLog
        except ImportError as exc:
            raise ConfigError(
                f"the Redis broker needs the redis package: pip install 'sserelay[redis]' ({exc})"
            ) from None
        assert settings.redis_url is not None  # checked by Settings
        self.listener = RedisListener(
            settings.redis_url,
            self.hub.dispatch,
            self.hub.on_listening,
            prefix=settings.redis_prefix,
            probe_interval=settings.probe_interval,
            probe_timeout=settings.probe_timeout,
            reconnect_min=settings.reconnect_min,
            reconnect_max=settings.reconnect_max,
        )
        self.reader = RedisLog(
            settings.redis_url,
            prefix=settings.redis_prefix,
            retention_count=settings.retention_count,
            retention_age=settings.retention_age,
        )

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self, sock: socket.socket | None = None, *, serve: bool = True) -> None:
        """Start the listener and heartbeat tasks, and the native HTTP server if ``serve``.

        ``serve=False`` runs the hub alone, for another HTTP front (the ASGI app);
        :meth:`shutdown`, :meth:`health` and :meth:`endpoint` work the same.
        """
        loop = asyncio.get_running_loop()
        await self.reader.open()
        self._tasks = [
            asyncio.create_task(self.listener.run(), name="sserelay-listener"),
            asyncio.create_task(self.hub.run_heartbeats(), name="sserelay-heartbeats"),
        ]
        if self.capturer is not None:
            self._tasks.append(asyncio.create_task(self.capturer.run(), name="sserelay-capture"))
        if self.settings.retention_age is not None or self.settings.retention_count is not None:
            self._tasks.append(asyncio.create_task(self._prune_forever(), name="sserelay-prune"))
        if serve and sock is not None:
            self._server = await loop.create_server(protocol_factory(self), sock=sock, backlog=4096)
        elif serve:
            self._server = await loop.create_server(
                protocol_factory(self), self.settings.host, self.settings.port, backlog=4096
            )
        if self.policy.is_open:  # once started: a relay that failed to bind is not open
            log.warning(
                "no jwt_secret or jwt_public_key: the relay is open, anyone who can reach it "
                "may read every channel (see docs/security.md)"
            )

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def shutdown(self) -> None:
        """Stop accepting, send every stream a jittered ``retry:``, close, stop the tasks."""
        if self._server is not None:
            self._server.close()
        closed = self.hub.close_all(self.settings.retry_ms)
        if closed:
            log.info("shutdown: closed %d streams", closed)
        if self.connections:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.shutdown_timeout):
                    await self._all_closed.wait()
        for conn in list(self.connections):
            conn.transport.abort()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.publisher.close()
        await self.replay.close()
        await self.reader.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self._server.wait_closed()

    async def shutdown_after_streams(self, streams: OpenStreams) -> None:
        """Shutdown for a front that writes its own streams: send each a jittered
        ``retry:`` and end it, wait up to ``shutdown_timeout`` for ``streams`` to send
        that, then :meth:`shutdown` (which finds no stream left to close)."""
        closed = self.hub.close_all(self.settings.retry_ms)
        if closed:
            log.info("shutdown: closed %d streams", closed)
        await streams.wait_ended(self.settings.shutdown_timeout)
        if streams.count:
            log.warning("shutdown: %d streams still sending", streams.count)
        await self.shutdown()

    async def _prune_forever(self) -> None:
        """Apply the retention settings every ``prune_interval`` seconds (jittered).

        ``sserelay.prune`` takes an advisory lock, so with several relays one prunes at a
        time; it deletes in small batches and never blocks publishers.
        """
        age = self.settings.retention_age
        interval = datetime.timedelta(seconds=age) if age is not None else None
        while True:
            await asyncio.sleep(self.settings.prune_interval * jitter.uniform(0.8, 1.2))
            try:
                deleted = await self.reader.prune(interval, self.settings.retention_count)
            except Exception as exc:  # database down or schema missing: try next time
                log.warning("pruning the event log failed: %s", exc)
                continue
            if deleted:
                log.info("pruned %d events from the log", deleted)

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._all_closed.set()

    def count_rejected(self, status: int) -> None:
        self.rejected[status] += 1

    def health(self) -> tuple[int, dict[str, Any]]:
        healthy = self.listener.healthy and not self.hub.closing
        capture = {} if self.capturer is None else {"capture": self.capturer.status()}
        healthy = healthy and (self.capturer is None or self.capturer.healthy)
        body = {
            "status": "ok" if healthy else "unavailable",
            "streams": self.hub.stream_count,
            "pid": os.getpid(),
            **self.listener.status(),
            **capture,
        }
        return (200 if healthy else 503), body

    def endpoint(self, name: str) -> tuple[int, str, bytes]:
        """Answer ``/healthz`` or ``/metrics``: (status, content type, body)."""
        if name == "metrics":
            return 200, CONTENT_TYPE, self.metrics.render()
        status, body = self.health()
        return status, "application/json", json.dumps(body).encode() + b"\n"
