"""A relay process: the bus, the delivery core, the access checks and (optionally) the
native HTTP server, with an explicit lifecycle.

``Relay.start()`` starts the bus listener, the heartbeats, the pruner and (with
``capture``) the change data capturer as supervised services
(:class:`~sserelay.core.supervisor.Supervisor`) and binds the socket;
``Relay.shutdown()`` stops accepting, tells every stream to come back later, closes
them, cancels and awaits every task, and closes every pool and connection. A service
that cannot be kept running makes the relay stop admitting streams and
:meth:`Relay.failed` return (``sserelay serve`` then exits non-zero).
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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import bus as buses
from . import jitter
from .access import limits
from .access.admission import StreamAccess
from .access.policy import policy_from_settings, token_from
from .access.revocations import Revocation, Revocations, farewell
from .admin import Operator
from .config import Settings
from .core.catchup import CatchUp, subscribe
from .core.control import ControlSink
from .core.delivery import Delivery
from .core.protocols import Lease, Subscriber
from .core.supervisor import Supervisor
from .errors import AuthError, BrokerUnavailable, SchemaMissing
from .http.native import HttpConnection, protocol_factory
from .http.publish import Publisher
from .http.revoke import RevokeEndpoint
from .metrics import CONTENT_TYPE, RelayMetrics

if TYPE_CHECKING:
    from .bus.postgres.capture import Capturer

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
        self.tasks = Supervisor(self._fatal)
        self.delivery = Delivery(
            self.tasks,
            heartbeat=settings.heartbeat,
            retry_ms=settings.retry_ms,
            max_replay=settings.max_replay,
            max_buffer=settings.max_client_buffer,
            drain_timeout=settings.drain_timeout,
        )
        self.hub = self.delivery.hub
        # The operator's page hears the relays' snapshots on a control channel of the bus.
        control = ControlSink(self.delivery) if settings.admin else None
        self.bus = buses.connect(settings, dsn, control or self.delivery)
        self.listener = self.bus.listener
        self.log = self.bus.log
        self.delivery.attach(self.listener, self.log)
        #: Who may read which channels (built once), and the stream limits.
        self.policy = policy_from_settings(settings)
        #: Tokens withdrawn before they expire, kept up to date from the bus by a feed.
        self.revocations = Revocations()
        self.revocation_feed = buses.revocation_feed(settings, dsn, self._revoked)
        self.access = StreamAccess(
            settings, self.policy, endings=self.hub.endings, revocations=self.revocations
        )
        #: ``POST /publish`` and ``POST /revoke``, on the bus's own connections.
        self.publisher = Publisher(
            settings, self.bus.publish, self.policy, raw_limit=self.bus.raw_limit
        )
        self.publisher.revocations = self.revocations
        self.publisher.revoke = RevokeEndpoint(
            self.policy, self.revocations, self.revocation_feed.revoke, self._revoked
        )
        self.connections: set[HttpConnection] = set()
        self.rejected: Counter[int] = Counter()
        self.metrics = RelayMetrics(self)
        self.listener.lag_observer = self.metrics.lag
        #: The operator's page (``settings.admin``; docs/admin.md).
        self.operator: Operator | None = None
        if control is not None:
            self.operator = Operator(self, control)
        #: Change data capture (``settings.capture``; docs/capture.md), PostgreSQL only.
        self.capturer: Capturer | None = None
        if settings.capture:
            from .bus.postgres.capture.serve import capturer_for

            # A direct session, as the listener's: a replication connection and a session
            # advisory lock pass no PgBouncer in transaction mode.
            direct = settings.listen_dsn or dsn
            self.capturer = capturer_for(direct, bus=settings.bus, max_lag=settings.capture_max_lag)
        #: Presence (``settings.presence``; docs/presence.md), else None.
        self.presence = buses.presence_service(settings, self.bus) if settings.presence else None
        self.started = time.time()
        #: The service that could not be kept running, once one could not.
        self.failure: str | None = None
        self._failed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()

    # -- streams -----------------------------------------------------------------------

    def subscribe(
        self, sub: Subscriber, catch_up: CatchUp | None = None, lease: Lease | None = None
    ) -> None:
        """Register an admitted stream (live at once, or after catching up)."""
        if self.presence is not None and isinstance(lease, limits.Lease):
            self.presence.tracker.track(sub.channels, lease, lease.sub)
        subscribe(self.delivery, sub, catch_up, lease)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.hub.unsubscribe(sub)

    @property
    def closing(self) -> bool:
        """No new stream is admitted: shutting down, or failed."""
        return self.hub.closing or self.failure is not None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self, sock: socket.socket | None = None, *, serve: bool = True) -> None:
        """Start the services, and the native HTTP server if ``serve``.

        ``serve=False`` runs the core alone, for another HTTP front (the ASGI app, the
        Django view); :meth:`shutdown`, :meth:`health` and :meth:`endpoint` work the same.
        """
        loop = asyncio.get_running_loop()
        await self.log.open()
        self.tasks.service("listener", self.listener.run)
        self.tasks.service("heartbeats", self.hub.run_heartbeats)
        if not self.policy.is_open:  # without a key there is no token to revoke
            self.tasks.service("revocations", self.revocation_feed.run)
        if self.operator is not None:
            self.operator.start()
        if self.settings.retention_age is not None or self.settings.retention_count is not None:
            self.tasks.service("pruner", self._prune_forever)
        if self.capturer is not None:
            self.tasks.service("capture", self.capturer.run)
        if self.presence is not None:
            self.tasks.service("presence", self.presence.run)
        if serve:
            factory = protocol_factory(self)
            if sock is not None:
                self._server = await loop.create_server(factory, sock=sock, backlog=4096)
            else:
                self._server = await loop.create_server(
                    factory, self.settings.host, self.settings.port, backlog=4096
                )
        if self.policy.is_open:  # once started: a relay that failed to bind is not open
            log.warning(
                "no jwt_secret or jwt_public_key: the relay is open, anyone who can reach it "
                "may read every channel (see the README's Security section)"
            )

    def _fatal(self, service: str, exc: BaseException | None) -> None:
        self.failure = service
        self._failed.set()

    async def failed(self) -> None:
        """Return once a service has failed for good (see the module docstring)."""
        await self._failed.wait()

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def close_streams(self) -> int:
        """End every stream with a jittered ``retry:`` and admit no more; how many."""
        closed = self.hub.close_all(self.settings.retry_ms)
        if closed:
            log.info("shutdown: closed %d streams", closed)
        return closed

    async def shutdown(self) -> None:
        """Stop accepting, send every stream a jittered ``retry:``, close, stop the tasks,
        close every pool and connection."""
        if self._server is not None:
            self._server.close()
        self.close_streams()
        if self.connections:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.shutdown_timeout):
                    await self._all_closed.wait()
        for conn in list(self.connections):
            conn.transport.abort()
        await self.tasks.close()
        if self.presence is not None:
            await self.presence.remove_rows()
        await self.log.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self._server.wait_closed()

    async def shutdown_after_streams(self, streams: OpenStreams) -> None:
        """Shutdown for a front that writes its own streams: send each a jittered
        ``retry:`` and end it, wait up to ``shutdown_timeout`` for ``streams`` to send
        that, then :meth:`shutdown` (which finds no stream left to close)."""
        self.close_streams()
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
                deleted = await self.log.prune(interval, self.settings.retention_count)
            except (BrokerUnavailable, SchemaMissing) as exc:  # the bus is down: next time
                log.warning("pruning the event log failed: %s", exc)
                continue
            if deleted:
                log.info("pruned %d events from the log", deleted)

    # -- revocations -------------------------------------------------------------------

    @property
    def revocation_count(self) -> int:
        return len(self.revocations)

    def _revoked(self, found: list[Revocation], reload: bool) -> None:
        """Revocations from the bus (all of them on a reload): keep them, and end now the
        streams that the new ones cover."""
        if reload:
            new = self.revocations.replace(found)
        else:
            new = [revocation for revocation in found if self.revocations.add(revocation)]
        if not new:
            return
        covering = Revocations(new)

        def covered(sub: Subscriber, lease: Lease | None) -> bool:
            if not isinstance(lease, limits.Lease):
                return False  # not admitted by this relay's checks (a test's subscriber)
            return covering.covers(lease.access, sub.channels, lease.opened)

        ended = self.hub.end_where(covered, lambda: farewell(self.settings.retry_ms))
        if ended or not reload:  # a start-up's load of old revocations is no news
            named = ", ".join(f"{r.kind} {r.value[:80]!r}" for r in new[:5])
            log.info("revoked %s: ended %d streams", named, ended)

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._all_closed.set()

    def count_rejected(self, status: int) -> None:
        self.rejected[status] += 1

    # -- health --------------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why the relay cannot serve right now, as a short reason class (None: it can)."""
        if self.failure is not None:
            return f"failed: the {self.failure} cannot run"
        if self.hub.closing:
            return "shutting down"
        listener: Any = self.listener
        if not listener.connected:
            return "bus unreachable"
        if listener.probe_overdue:
            return "bus not answering"
        if not listener.healthy:
            return "subscribing"
        if self.capturer is not None:
            return self.capturer.problem()
        return None

    def health(self, *, detail: bool = False) -> tuple[int, dict[str, Any]]:
        """``/healthz``: ok or not, with a short reason; ``detail`` adds what an operator
        needs (never shown without an admin token: it may name hosts and roles)."""
        problem = self.problem()
        body: dict[str, Any] = {"status": "ok" if problem is None else "unavailable"}
        if problem is not None:
            body["reason"] = problem
        if detail:
            body.update(
                streams=self.hub.stream_count,
                channels=self.hub.channel_count,
                pid=os.getpid(),
                bus=self.listener.status(),
                task_failures=dict(self.tasks.failures),
                revocations=dict(self.revocation_feed.status(), count=len(self.revocations)),
                last_failure=self.tasks.last_failure,
            )
            if self.capturer is not None:
                body["capture"] = self.capturer.status()
            if self.presence is not None:
                body["presence"] = self.presence.status()
        return (200 if problem is None else 503), body

    def endpoint(
        self, name: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        """Answer ``/healthz`` or ``/metrics``: (status, content type, body)."""
        if name == "metrics":
            return 200, CONTENT_TYPE, self.metrics.render()
        status, body = self.health(detail=self._is_admin(headers or {}))
        return status, "application/json", json.dumps(body).encode() + b"\n"

    def _is_admin(self, headers: Mapping[str, str]) -> bool:
        """The request carries a valid token with the admin grant (never the cookie)."""
        verifier = self.policy.verifier
        token = token_from({"authorization": headers.get("authorization", "")}, (), "")
        if verifier is None or token is None:
            return False
        try:
            access = verifier.verify(token)
        except AuthError:
            return False
        return access.admin and self.revocations.refusal(access) is None
