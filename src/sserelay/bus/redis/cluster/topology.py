"""A Redis Cluster's slot map, as the listener needs it: which master owns the slot of a
pub/sub name, and which nodes there are to ask when the map must be read again.

The map is read with ``CLUSTER SLOTS`` on a plain (unsubscribed) connection to any node
(:class:`MapReader`).
A node that announces no host (``""``) is on the host that was asked. Replicas are kept
as nodes to ask, never as places to subscribe: a relay subscribes on masters, where the
publish script runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

from .... import jitter

SLOTS = 16384

#: A node: (host, port).
Address = tuple[str, int]


def slot_of(name: bytes) -> int:
    """The cluster slot of a key or sharded pub/sub name (hash tags honoured)."""
    return int(key_slot(name))


def spell(address: Address) -> str:
    """``host:port``, for logs and the health view."""
    return f"{address[0]}:{address[1]}"


@dataclass
class SlotMap:
    """Which master owns each slot (None: nobody, the cluster is changing)."""

    owners: list[Address | None] = field(default_factory=lambda: [None] * SLOTS)
    #: Every node the map names, masters first: the ones to ask for the next map.
    nodes: list[Address] = field(default_factory=list)

    def owner(self, slot: int) -> Address | None:
        return self.owners[slot]

    def masters(self) -> set[Address]:
        return {a for a in self.owners if a is not None}

    def moved(self, slot: int, address: Address) -> None:
        """A ``MOVED`` said so: believe it until the next full read."""
        self.owners[slot] = address
        if address not in self.nodes:
            self.nodes.append(address)

    @classmethod
    def parse(cls, reply: Sequence[Any], asked: Address) -> SlotMap:
        """The map from a ``CLUSTER SLOTS`` reply, read from the node at ``asked``."""
        found = cls()
        masters: list[Address] = []
        replicas: list[Address] = []
        for entry in reply:
            start, end, master, *others = entry
            address = _address(master, asked)
            found.owners[int(start) : int(end) + 1] = [address] * (int(end) - int(start) + 1)
            masters.append(address)
            replicas += [_address(r, asked) for r in others]
        found.nodes = _unique([*masters, *replicas])
        return found


def _address(node: Sequence[Any], asked: Address) -> Address:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return (host or asked[0], int(node[1]))


def _unique(addresses: Iterable[Address]) -> list[Address]:
    return list(dict.fromkeys(addresses))


def candidates(
    current: Address | None, known: Iterable[Address | None], seed: Address
) -> list[Address]:
    """Nodes to ask for the map, in order: the one in use, the known ones, the URL's."""
    return _unique(a for a in [current, *known, seed] if a is not None)


class MapReader:
    """The plain connection that reads the slot map: to the URL's node at first, then to
    the node in use or any node the last map named (masters, then replicas), whichever
    answers within ``timeout`` seconds. It also keeps whether the map is in doubt."""

    def __init__(
        self,
        connect: Callable[[Address], Awaitable[AbstractConnection]],
        seed: Address,
        timeout: float,
    ) -> None:
        self._connect = connect
        self.seed = seed
        self.timeout = timeout
        self.slots: SlotMap | None = None
        self.conn: AbstractConnection | None = None
        self.at: Address | None = None
        #: The map may be out of date; when it was last read; a node to read it from.
        self.stale = False
        self.read_at = 0.0
        self._first: Address | None = None

    def doubt(self, ask: Address | None = None) -> None:
        """The map may be wrong (``ask``: a node that knows better, to read it from)."""
        self.stale = True
        self._first = ask or self._first

    def due(self, gap: float) -> float:
        """Seconds before the map may be read again (at most every ``gap`` seconds)."""
        return max(self.read_at + gap - time.monotonic(), 0.0)

    async def read(self) -> SlotMap:
        """A new map; ConnectionError (naming every node tried) if no node answers."""
        self.read_at, self.stale = time.monotonic(), False
        first, self._first = self._first, None
        known = self.slots.nodes if self.slots is not None else []
        errors: list[str] = []
        for address in candidates(first or self.at, [self.at, *known], self.seed):
            try:
                if self.conn is None or self.at != address:
                    await self.close()
                    self.conn, self.at = await self._connect(address), address
                async with asyncio.timeout(self.timeout):
                    await self.conn.send_command("CLUSTER", "SLOTS", check_health=False)
                    reply = await self.conn.read_response()
            except (redis_errors.RedisError, OSError, TimeoutError) as exc:
                errors.append(f"{spell(address)}: {exc}")
                await self.close()
                continue
            self.slots = SlotMap.parse(reply, address)
            return self.slots
        raise redis_errors.ConnectionError(
            "no node of the Redis Cluster answers: " + "; ".join(errors)
        )

    async def ping(self) -> bool:
        """The connection in use answers a PING in time (False: it is closed now)."""
        if self.conn is None:
            return False
        try:
            async with asyncio.timeout(self.timeout):
                await self.conn.send_command("PING", check_health=False)
                await self.conn.read_response()
        except (redis_errors.RedisError, OSError, TimeoutError):
            await self.close()
            return False
        return True

    async def close(self) -> None:
        conn, self.conn, self.at = self.conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()


class Backoff:
    """When each node may be tried again: a node whose connection worked may be tried at
    once, one that refuses waits ``low * 2**n`` seconds (n failures in a row, at most
    ``high``, jittered by up to half)."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high
        self._nodes: dict[Address, tuple[int, float]] = {}

    def failed(self, address: Address, *, had_connected: bool) -> None:
        failures = 0 if had_connected else self._nodes.get(address, (0, 0.0))[0] + 1
        delay = min(self.high, self.low * 2 ** min(failures, 16)) * jitter.uniform(0.5, 1.0)
        self._nodes[address] = (failures, time.monotonic() + delay)

    def worked(self, address: Address) -> None:
        self._nodes.pop(address, None)

    def wait(self, address: Address) -> float:
        """Seconds before ``address`` may be tried (0: now)."""
        return max(self._nodes.get(address, (0, 0.0))[1] - time.monotonic(), 0.0)
