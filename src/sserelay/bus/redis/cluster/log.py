"""The relay's Redis event log on a Redis Cluster, or on one Redis: whichever the URL reaches.

Before its first read or publish the log asks the server (``INFO cluster``, once). On one
Redis it is :class:`~sserelay.bus.redis.log.RedisLog`, unchanged. On a cluster it reads
and publishes through a cluster client (``redis.asyncio.RedisCluster``: commands go to
the master of their key's slot, ``MOVED``/``ASK`` are followed, and after a lost
connection the next command finds the nodes again), with the cluster's hash-tagged
names (:mod:`~sserelay.bus.redis.cluster.layout`):

- reads (``XRANGE``), ``back`` (a script on one stream) and publishes (the publish script,
  with ``SPUBLISH``) each touch one channel, so one slot;
- ``heads`` over many channels groups the streams by slot (a script's keys must share
  one) and sends one pipeline per node: one round trip per master whatever the number of
  channels;
- ``prune`` scans every master (``SCAN ... TYPE stream``).

At most ``max_connections`` commands are in flight at once (the cluster client refuses,
rather than waits, past its per-node limit).
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from ....errors import BrokerUnavailable
from ....wire.ids import entry_position
from ....wire.message import Message
from ..log import RedisLog, StreamEvent
from ..publish import RedisBus
from ..scripts import BACK_LUA, HEADS_LUA
from .layout import CLUSTER, CLUSTER_ERRORS, SINGLE, Layout, acluster_client, adetect
from .topology import slot_of

T = TypeVar("T")


class ClusterLog(RedisLog):
    """See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        batch: int = 500,
        max_connections: int = 4,
        retention_count: int | None = None,
        retention_age: float | None = None,
    ) -> None:
        super().__init__(
            url,
            prefix=prefix,
            batch=batch,
            max_connections=max_connections,
            retention_count=retention_count,
            retention_age=retention_age,
        )
        self.url = url
        self._single = self.client
        self._retention = (retention_count, retention_age)
        self._max_connections = max_connections
        self._gate = asyncio.Semaphore(max_connections)
        #: One Redis or a cluster, once asked.
        self.layout: Layout | None = None

    async def _known(self) -> Layout:
        if self.layout is None:

            async def ask() -> Layout:
                return await self._call(
                    "asking Redis whether it is a cluster", adetect(self._single)
                )

            layout = await self._shared(("layout",), ask)
            if self.layout is None:
                if layout.clustered:
                    await self._use_cluster()
                self.layout = layout
        return self.layout

    async def _use_cluster(self) -> None:
        CLUSTER.check_prefix(self.prefix)
        cluster = acluster_client(
            self.url,
            max_connections=self._max_connections,
            socket_timeout=10,
            socket_connect_timeout=5,
            socket_keepalive=True,
            client_name="sserelay-reader",
        )
        # RedisCluster has every command RedisLog sends (XRANGE, scripts, SCAN, XTRIM, TIME,
        # INFO), routed by key; heads() is the one that needs more (below).
        self.client = cluster  # type: ignore[assignment]
        self._back = cluster.register_script(BACK_LUA)
        count, age = self._retention
        self.bus = RedisBus(
            self.url,
            prefix=self.prefix,
            retention_count=count,
            retention_age=age,
            aclient=cluster,
        )
        await self._single.aclose()
        await self._pool.disconnect()

    async def layout_known(self) -> Layout:
        """One Redis or a cluster (asked once); :attr:`client` is then the one to use."""
        return await self._known()

    async def call(self, what: str, call: Awaitable[T]) -> T:
        """``call``'s result; a Redis error as BrokerUnavailable naming ``what``."""
        return await self._call(what, call)

    def key(self, channel: str) -> str:
        return (self.layout or SINGLE).stream_key(self.prefix, channel)

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            await self._gate.acquire()
        except BaseException:
            if inspect.iscoroutine(call):
                call.close()  # never started: no "never awaited" warning
            raise
        try:
            return await call
        except CLUSTER_ERRORS as exc:
            raise BrokerUnavailable(f"{what} failed: {exc}") from exc
        finally:
            self._gate.release()

    # -- the EventLog, asking first ---------------------------------------------------

    async def installed(self) -> bool:
        await self._known()
        return await super().installed()

    async def heads(self, channels: Sequence[str]) -> dict[str, int]:
        if not (await self._known()).clustered:
            return await super().heads(channels)
        wanted = sorted(set(channels))

        async def ask() -> dict[str, int]:
            groups: dict[int, list[str]] = {}
            for channel in wanted:
                groups.setdefault(slot_of(self.key(channel).encode()), []).append(channel)
            pipe = self.client.pipeline(transaction=False)
            for group in groups.values():
                pipe.execute_command("EVAL", HEADS_LUA, len(group), *map(self.key, group))
            found = await self._call("reading the streams' heads", pipe.execute())
            heads: dict[str, int] = {}
            for group, ids in zip(groups.values(), found, strict=True):
                heads.update((c, entry_position(i)) for c, i in zip(group, ids, strict=True))
            return heads

        return await self._shared(("heads", *wanted), ask)

    async def read_after(
        self, channel: str, after: int, *, shared: bool = True
    ) -> Sequence[StreamEvent]:
        await self._known()
        return await super().read_after(channel, after, shared=shared)

    async def back(self, channel: str, live: int, n: int, floor: int) -> int:
        await self._known()
        return await super().back(channel, live, n, floor)

    async def prune(self, max_age: datetime.timedelta | None, max_count: int | None) -> int:
        await self._known()
        try:
            return await super().prune(max_age, max_count)
        except CLUSTER_ERRORS as exc:  # the cluster client's own errors are no RedisError
            raise BrokerUnavailable(f"pruning the streams failed: {exc}") from exc

    async def publish(self, message: Message, durable: bool | None = None) -> str | None:
        """``POST /publish``: through the cluster client on a cluster."""
        await self._known()
        return await self.bus.asend(message, durable)
