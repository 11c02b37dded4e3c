"""The Redis listener for a Redis Cluster, or one Redis: whichever the URL reaches.

Its first connection asks the server (``INFO cluster``). One Redis gets the single-node
session of :class:`~sserelay.bus.redis.listener.RedisListener` (the base class), unchanged.
A cluster gets sharded pub/sub:

- a plain connection to any node reads the slot map (:class:`~.topology.MapReader`);
- one connection per master (:class:`~.shard.Shard`): each channel's two pub/sub names
  (``<prefix><channel>``, ``<prefix>sserelay.d.{<channel>}``) are ``SSUBSCRIBE``-d on the
  master of their slot; the channel is live once both are confirmed;
- a name lost (a ``-MOVED``, a ``sunsubscribe`` the node sent after a failover or a
  resharding, a shard connection lost or not answering its probe) makes its channel not
  live; the map is read again (at most every ``reconnect_min`` seconds) and the name
  subscribed on its slot's owner; once live again the core is told (``on_listening``) and
  fills the gap from the channel's stream, as after a reconnect on one Redis. Other
  shards are not disturbed. A node that cannot be reached is retried with jittered
  exponential backoff.

The session ends (and everything reconnects) only when no node answers. ``reconnects``
counts shard connections made to replace lost ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from ....core.protocols import BusSink
from ....errors import ConfigError
from ..listener import ERRORS, RedisListener
from .layout import SINGLE, Layout, read_layout
from .shard import Shard, State
from .topology import Address, Backoff, MapReader, SlotMap, slot_of, spell

log = logging.getLogger("sserelay.redis")

#: Names per SSUBSCRIBE/SUNSUBSCRIBE command (one slot's names each).
_BATCH = 200


class ClusterListener(RedisListener):
    """See the module docstring: :class:`RedisListener` on one Redis, sharded pub/sub on a
    Redis Cluster."""

    def __init__(self, url: str, sink: BusSink, **options: Any) -> None:
        super().__init__(url, sink, **options)
        #: One Redis or a cluster, once the first connection has asked.
        self.layout: Layout | None = None
        host, port = self._connection_kwargs.get("host"), self._connection_kwargs.get("port")
        self._seed: Address | None = (str(host), int(port)) if host and port else None
        self._map = MapReader(self._connect, self._seed or ("", 0), self.probe_timeout)
        self._shards: dict[Address, Shard] = {}
        self._tasks: dict[Shard, asyncio.Task[None]] = {}
        #: Wanted pub/sub names: their channel and whether it is the durable name.
        self._lookup: dict[bytes, tuple[str, bool]] = {}
        #: Where each wanted name is placed, and the names waiting for a place.
        self._placed: dict[bytes, Shard] = {}
        self._unplaced: set[bytes] = set()
        #: When each node may be tried again.
        self._backoff = Backoff(self.reconnect_min, self.reconnect_max)
        #: Shard connections lost and not replaced yet (for ``reconnects``).
        self._lost = 0
        self._probe_payload = b""
        #: When the step is due to run again by a timer (one timer at a time).
        self._due: float | None = None

    @property
    def clustered(self) -> bool:
        return self.layout is not None and self.layout.clustered

    def shard_ids(self) -> dict[str, int]:
        """The server-side id of each live shard connection, by node (for tests)."""
        return {s.name: s.client_id for s in self._shards.values() if s.client_id is not None}

    def status(self) -> dict[str, Any]:
        status = super().status()
        if self.clustered:
            shards = {
                s.name: {"connected": s.ready, "names": len(s.names)} for s in self._shards.values()
            }
            status["cluster"] = {
                "masters": len(self._slots.masters()) if self._slots else 0,
                "shards": shards,
            }
        return status

    # -- the session -----------------------------------------------------------------

    async def _session(self) -> None:
        if self.layout is None:
            self.layout = await self._ask_layout()
        if not self.layout.clustered:
            await super()._session()
            return
        if self._seed is None:
            raise ConfigError("a Redis Cluster must be reached over TCP, not a unix socket")
        self.layout.check_prefix(self.prefix)
        await self._refresh_slots()
        assert self._map.conn is not None
        self._conn = self._map.conn  # closed (with the shards) by _disconnect
        self._connected()
        await self._serve(self._conn)

    async def _connect(self, address: Address | None) -> AbstractConnection:
        """A plain connection to ``address`` (None: the URL's own)."""
        options = dict(self._connection_kwargs)
        if address is not None:
            options.update(host=address[0], port=address[1])
        conn: AbstractConnection = self._connection_class(**options)
        await conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        return conn

    async def _ask_layout(self) -> Layout:
        """One Redis or a cluster, as the URL's server says (once per listener)."""
        conn = await self._connect(None)
        try:
            layout = await read_layout(conn)
        finally:
            await conn.disconnect()
        if layout.clustered:
            log.info("Redis at %s is a cluster node: sharded pub/sub", spell(self._seed or ("", 0)))
        return layout

    @property
    def _slots(self) -> SlotMap | None:
        return self._map.slots

    async def _refresh_slots(self) -> None:
        """Read the slot map again (from any node that answers); move what moved."""
        await self._map.read()
        self._move_misplaced()

    # -- one step: names placed on their masters, sent ---------------------------------

    async def _step(self, conn: AbstractConnection) -> None:
        if not self.clustered:
            await super()._step(conn)
            return
        self._check_probes(time.monotonic())
        self._apply_changes()
        if self._map.stale:
            wait = self._map.due(max(self.reconnect_min, 0.05))
            if wait > 0:
                self._wake_in(wait)
            else:
                await self._refresh_slots()
        self._place()
        for shard in list(self._shards.values()):
            try:
                await shard.flush(_BATCH)
            except ERRORS as exc:
                self._shard_failed(shard, exc)
        await self._close_idle()

    def _pubsub_names(self, channel: str) -> tuple[bytes, bytes]:
        layout = self.layout or SINGLE
        return (
            layout.raw_channel(self.prefix, channel).encode(),
            layout.durable_channel(self.prefix, channel).encode(),
        )

    def _apply_changes(self) -> None:
        """Wanted channels' names to place, unwanted ones' to drop."""
        for add, drop in self._changes(1 << 30, self._subscribed):
            for channel in drop:
                self._subscribed.discard(channel)
                self._active.discard(channel)
                for name in self._pubsub_names(channel):
                    self._lookup.pop(name, None)
                    self._unplaced.discard(name)
                    shard = self._placed.pop(name, None)
                    if shard is not None:
                        shard.drop(name)
            for channel in add:
                self._subscribed.add(channel)
                for name, durable in zip(self._pubsub_names(channel), (False, True), strict=True):
                    self._lookup[name] = (channel, durable)
                    self._unplaced.add(name)

    def _place(self) -> None:
        """Each name waiting for a place, on the master of its slot."""
        if self._slots is None:
            return
        for name in list(self._unplaced):
            owner = self._slots.owner(slot_of(name))
            if owner is None:
                self._map.doubt()  # the slot has no master right now: ask again later
                self._wake_in(max(self.reconnect_min, 0.05))
                continue
            shard = self._shard(owner)
            if shard is not None:
                shard.place(name)
                self._placed[name] = shard
                self._unplaced.discard(name)

    def _move_misplaced(self) -> None:
        """After a new map: names on a node that no longer owns their slot move."""
        assert self._slots is not None
        for name, shard in list(self._placed.items()):
            if self._slots.owner(slot_of(name)) not in (None, shard.address):
                shard.drop(name)
                self._unplace(name)

    def _unplace(self, name: bytes) -> None:
        self._placed.pop(name, None)
        found = self._lookup.get(name)
        if found is not None:
            self._unplaced.add(name)
            self._active.discard(found[0])

    # -- shard connections -----------------------------------------------------------

    def _shard(self, address: Address) -> Shard | None:
        """The connection to ``address``, started if there is none (None: backing off)."""
        shard = self._shards.get(address)
        if shard is not None:
            return shard
        wait = self._backoff.wait(address)
        if wait > 0:
            self._wake_in(wait)
            return None
        options = {**self._connection_kwargs, "host": address[0], "port": address[1]}
        shard = Shard(address, self._connection_class(**options), self)
        self._shards[address] = shard
        self._tasks[shard] = asyncio.create_task(
            self._run_shard(shard), name=f"sserelay-redis-shard-{shard.name}"
        )
        return shard

    async def _run_shard(self, shard: Shard) -> None:
        try:
            await shard.run()
        except ERRORS as exc:
            self._shard_failed(shard, exc)
        except Exception as exc:  # not a lost connection: a bug or a surprise
            self.failures += 1
            self.last_failure = self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("Redis shard connection to %s failed unexpectedly", shard.name)
            self._shard_failed(shard, exc)
        finally:
            with contextlib.suppress(Exception):
                await shard.conn.disconnect()

    def _shard_failed(self, shard: Shard, exc: BaseException) -> None:
        """``shard``'s connection is gone: its names wait for a place again."""
        if self._shards.get(shard.address) is not shard:
            return
        del self._shards[shard.address]
        task = self._tasks.pop(shard, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        had_connected = shard.client_id is not None
        names = shard.forget()
        self._backoff.failed(shard.address, had_connected=had_connected)
        self.last_error = f"{shard.name}: {type(exc).__name__}: {exc}"
        if had_connected:
            self._lost += 1
            log.warning(
                "Redis shard %s lost: %s; resubscribing %d names", shard.name, exc, len(names)
            )
        for name in names:
            self._unplace(name)
        self._map.doubt()
        self._wake.set()

    async def _close_idle(self) -> None:
        """Close connections to nodes that are no longer masters and hold nothing."""
        masters = self._slots.masters() if self._slots is not None else set()
        for address, shard in list(self._shards.items()):
            if shard.idle and address not in masters:
                del self._shards[address]
                await self._stop(shard)

    def _wake_in(self, delay: float) -> None:
        """Step again in ``delay`` seconds (one timer: the earliest asked for)."""
        delay, now = max(delay, 0.0), time.monotonic()
        if self._due is None or self._due <= now or now + delay < self._due:
            self._due = now + delay
            asyncio.get_running_loop().call_later(delay, self._wake.set)

    # -- what the shards report (shard.ShardOwner) --------------------------------------

    def shard_ready(self, shard: Shard) -> None:
        self._backoff.worked(shard.address)
        if self._lost:
            self._lost -= 1
            self.reconnects += 1
        self._wake.set()

    def shard_message(self, shard: Shard, name: bytes, payload: bytes) -> None:
        found = self._lookup.get(name)
        # Only from where the name is placed: a node that just lost the slot may still
        # pass on what its new master publishes (it replicates it).
        if found is not None and self._placed.get(name) is shard:
            self._hand_over(found[0], payload.decode(errors="replace"), found[1])

    def shard_live(self, shard: Shard, name: bytes) -> None:
        found = self._lookup.get(name)
        if found is None or self._placed.get(name) is not shard:
            return
        channel = found[0]
        for other in self._pubsub_names(channel):
            placed = self._placed.get(other)
            if placed is None or placed.names.get(other) is not State.LIVE:
                return
        if channel in self._subscribed and channel not in self._active:
            self._active.add(channel)
            if channel in self._wanted:
                self._sink.on_listening([channel])

    def shard_lost(
        self, shard: Shard, names: list[bytes], why: str, moved: tuple[int, Address] | None
    ) -> None:
        log.info("%d names no longer subscribed on %s (%s)", len(names), shard.name, why)
        for name in names:
            if self._placed.get(name) is shard:
                self._unplace(name)
        if moved is not None and self._slots is not None:
            self._slots.moved(*moved)
        # A node that let go of a slot knows who has it now: read the map from it.
        self._map.doubt(shard.address if moved is None else None)
        self._wake.set()

    def shard_pong(self, shard: Shard, payload: bytes) -> None:
        self._probe_done()

    # -- probes ----------------------------------------------------------------------

    async def _send_probe(self, conn: AbstractConnection, payload: str) -> None:
        if not self.clustered:
            await super()._send_probe(conn, payload)
            return
        self._probe_payload = payload.encode()
        now = time.monotonic()
        for shard in [s for s in self._shards.values() if s.ready]:
            try:
                await shard.ping(self._probe_payload, now)
            except ERRORS as exc:
                self._shard_failed(shard, exc)
        if not any(s.probe_sent is not None for s in self._shards.values()):
            await self._ping_control()
            self._probe_done()

    async def _ping_control(self) -> None:
        """The probe when no shard holds anything: the plain connection answers, or the map
        is read again (from another node if need be)."""
        if not await self._map.ping():
            await self._refresh_slots()

    def _probe_done(self) -> None:
        """Every shard answered the probe (or is gone): it came back."""
        if not any(s.probe_sent is not None for s in self._shards.values()):
            self._probe_answered(self._probe_payload)

    def _check_probes(self, now: float) -> None:
        for shard in list(self._shards.values()):
            sent = shard.probe_sent
            if sent is not None and now - sent > self.probe_timeout:
                late = f"no answer to the probe within {self.probe_timeout:g}s"
                self._shard_failed(shard, redis_errors.TimeoutError(late))
                self._probe_done()

    # -- the end of a session --------------------------------------------------------

    async def _close(self, conn: AbstractConnection) -> None:
        if not self.clustered:
            await super()._close(conn)
            return
        await self._map.close()
        self._shards.clear()
        for shard in list(self._tasks):
            await self._stop(shard)

    async def _stop(self, shard: Shard) -> None:
        task = self._tasks.pop(shard, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *ERRORS):
                await task

    async def _disconnect(self) -> None:
        await super()._disconnect()
        self._lookup.clear()
        self._placed.clear()
        self._unplaced.clear()
        self._lost = 0
