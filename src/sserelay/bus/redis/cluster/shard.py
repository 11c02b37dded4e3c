"""One sharded pub/sub connection, to one master of a Redis Cluster.

The cluster listener (:mod:`sserelay.bus.redis.cluster.listener`) *places* pub/sub names
on the shard that owns their slot and *drops* them when no stream wants them. The shard
sends what that needs (``SSUBSCRIBE`` / ``SUNSUBSCRIBE``, one command per slot, as the
server wants) and reads, in one task, what the node sends back, in order:

- ``ssubscribe`` confirmations: the name is live (everything published on it from now on
  reaches this connection);
- ``smessage``: a message, handed to the owner;
- ``sunsubscribe``: the confirmation of ours, or, when we sent none, the node letting go
  of the name because its slot moved (a failover, a resharding): the name is lost here;
- an error instead of a command's confirmations (``-MOVED`` when our slot map is stale,
  ``-TRYAGAIN`` / ``-CLUSTERDOWN`` while the cluster changes): that command's names are
  lost here, and the owner places them again once it has read the map again;
- ``pong`` (or the bare payload when nothing is subscribed): the answer to a probe.

Commands are answered in the order they were sent, so the shard keeps the commands still
owed an answer (:attr:`Shard.owed`) to know which names an error is about. A connection
that fails, or an answer that makes no sense, ends :meth:`Shard.run` with the error; the
owner then loses every name of the shard and places them again.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from ...listener import one_line
from .topology import Address, slot_of, spell


class State(enum.Enum):
    """Where a name placed on a shard stands."""

    NEW = "to subscribe"
    SUB = "subscribing"
    LIVE = "live"
    DROP = "to unsubscribe"
    UNSUB = "unsubscribing"


class ShardOwner(Protocol):
    """What a shard reports to (the cluster listener)."""

    def shard_ready(self, shard: Shard) -> None:
        """``shard`` is connected: what is placed on it can be sent."""

    def shard_message(self, shard: Shard, name: bytes, payload: bytes) -> None:
        """A message published on ``name``, received on ``shard``."""

    def shard_live(self, shard: Shard, name: bytes) -> None:
        """``name`` is subscribed on ``shard`` (confirmed)."""

    def shard_lost(
        self, shard: Shard, names: list[bytes], why: str, moved: tuple[int, Address] | None
    ) -> None:
        """``names`` are no longer subscribed on ``shard`` (``moved``: the slot and the node
        a ``-MOVED`` named)."""

    def shard_pong(self, shard: Shard, payload: bytes) -> None:
        """A probe came back."""


@dataclass
class Owed:
    """A command sent whose answer has not all come back."""

    command: bytes
    names: list[bytes]
    #: How many of ``names`` were confirmed.
    done: int = 0


class Shard:
    """See the module docstring. ``conn`` is made, not connected: :meth:`run` connects."""

    def __init__(self, address: Address, conn: AbstractConnection, owner: ShardOwner) -> None:
        self.address = address
        self.name = spell(address)
        self.conn = conn
        self.owner = owner
        #: Names placed here, and where each stands.
        self.names: dict[bytes, State] = {}
        #: Connected: commands can be sent.
        self.ready = False
        #: The node's id of this connection (``CLIENT KILL ID`` ends it).
        self.client_id: int | None = None
        #: Monotonic time the probe in flight was sent.
        self.probe_sent: float | None = None
        self.owed: deque[Owed] = deque()

    # -- the connection's task -------------------------------------------------------

    async def run(self) -> None:
        """Connect, then read what the node sends until the connection fails (raises)."""
        await self.conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        await self.conn.send_command("ROLE", check_health=False)
        role = await self.conn.read_response()
        if not role or role[0] != b"master":  # a replica would take the names: not here
            raise redis_errors.ConnectionError(f"{self.name} is not a master (a stale map)")
        await self.conn.send_command("CLIENT", "ID", check_health=False)
        self.client_id = int(await self.conn.read_response())
        self.ready = True
        self.owner.shard_ready(self)
        while True:
            try:
                reply = await self.conn.read_response()
            except redis_errors.ResponseError as err:
                self._refused(err)
            else:
                self._dispatch(reply)

    async def close(self) -> None:
        self.ready = False
        await self.conn.disconnect()

    # -- what the owner asks ---------------------------------------------------------

    def place(self, name: bytes) -> None:
        """Subscribe ``name`` here (sent by the next :meth:`flush`)."""
        if self.names.get(name) not in (State.SUB, State.LIVE):
            self.names[name] = State.NEW

    def drop(self, name: bytes) -> None:
        """Unsubscribe ``name`` here (sent by the next :meth:`flush`)."""
        state = self.names.get(name)
        if state is State.NEW:
            del self.names[name]
        elif state in (State.SUB, State.LIVE):
            self.names[name] = State.DROP

    def forget(self) -> list[bytes]:
        """Every name placed here, forgotten (the connection is gone)."""
        names = list(self.names)
        self.names.clear()
        self.owed.clear()
        self.ready = False
        return names

    @property
    def idle(self) -> bool:
        """Nothing placed and nothing owed: the connection can go."""
        return not self.names and not self.owed

    async def flush(self, batch: int) -> None:
        """Send what the placed and dropped names need: one command per slot and per
        ``batch`` names. Nothing before the connection is ready."""
        if not self.ready:
            return
        for state, command, then in (
            (State.DROP, b"SUNSUBSCRIBE", State.UNSUB),
            (State.NEW, b"SSUBSCRIBE", State.SUB),
        ):
            names = [n for n, s in self.names.items() if s is state]
            for group in by_slot(names, batch):
                # Checked again: the states may have changed while an earlier group went out.
                group = [n for n in group if self.names.get(n) is state]
                if group:
                    for name in group:
                        self.names[name] = then
                    await self._send(command, group)

    async def ping(self, payload: bytes, now: float) -> None:
        """Send a probe (at most one in flight)."""
        if self.ready and self.probe_sent is None:
            self.probe_sent = now
            await self._send(b"PING", [payload])

    async def _send(self, command: bytes, args: list[bytes]) -> None:
        # Owed first: the answer may be read before this coroutine resumes.
        self.owed.append(Owed(command.lower(), args))
        if not self.conn.is_connected:
            raise redis_errors.ConnectionError(f"connection to {self.name} lost")
        await self.conn.send_command(command, *args, check_health=False)

    # -- what the node sends ---------------------------------------------------------

    def _dispatch(self, reply: Any) -> None:
        if isinstance(reply, bytes):  # PING's answer while nothing is subscribed
            self._pong(reply)
            return
        if isinstance(reply, list) and len(reply) >= 2:
            kind = reply[0]
            if kind == b"smessage" and len(reply) == 3:
                self.owner.shard_message(self, reply[1], reply[2])
                return
            if kind == b"ssubscribe":
                self._subscribed(reply[1])
                return
            if kind == b"sunsubscribe":
                self._unsubscribed(reply[1])
                return
            if kind == b"pong":
                self._pong(reply[1])
                return
        raise redis_errors.InvalidResponse(f"unexpected answer from {self.name}: {reply!r:.200}")

    def _answer(self, command: bytes, name: bytes) -> bool:
        """True if ``name`` is the next answer owed to a ``command`` we sent."""
        head = self.owed[0] if self.owed else None
        if head is None or head.command != command or head.names[head.done] != name:
            return False
        head.done += 1
        if head.done == len(head.names):
            self.owed.popleft()
        return True

    def _subscribed(self, name: bytes) -> None:
        if not self._answer(b"ssubscribe", name):
            raise redis_errors.InvalidResponse(f"{self.name} confirmed {name!r}, not asked for")
        if self.names.get(name) is State.SUB:
            self.names[name] = State.LIVE
            self.owner.shard_live(self, name)

    def _unsubscribed(self, name: bytes) -> None:
        ours = self._answer(b"sunsubscribe", name)
        state = self.names.get(name)
        if state is State.UNSUB:
            del self.names[name]
        elif not ours and state in (State.SUB, State.LIVE, State.DROP):
            # Not asked for: the node let go of it, its slot moved (failover, resharding).
            del self.names[name]
            if state is not State.DROP:
                self.owner.shard_lost(self, [name], "the slot moved to another node", None)
        # Else a late confirmation of a name placed here again since: its SSUBSCRIBE follows.

    def _pong(self, payload: bytes) -> None:
        if not (self.owed and self.owed[0].command == b"ping"):
            raise redis_errors.InvalidResponse(f"{self.name} answered a PING not sent")
        self.owed.popleft()
        self.probe_sent = None
        self.owner.shard_pong(self, payload)

    def _refused(self, err: redis_errors.ResponseError) -> None:
        """An error instead of the answers to the oldest command owed one."""
        head = self.owed.popleft() if self.owed else None
        if head is None or head.command == b"ping":
            raise err
        if head.command == b"sunsubscribe":
            for name in head.names:
                if self.names.get(name) is State.UNSUB:
                    del self.names[name]
            return
        if not isinstance(err, _REDIRECTS):
            raise err  # not about where the slot is (an ACL, a bug): the shard fails
        lost = [n for n in head.names if self.names.get(n) is State.SUB]
        for name in lost:
            del self.names[name]
        moved = None
        if isinstance(err, redis_errors.MovedError):
            moved = (err.slot_id, (err.host, err.port))
        self.owner.shard_lost(self, lost, one_line(err), moved)


#: Errors that mean "not here, not now": the cluster is changing.
_REDIRECTS = (
    redis_errors.AskError,  # MOVED too
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)


def by_slot(names: Iterable[bytes], batch: int) -> Iterator[list[bytes]]:
    """``names`` grouped by slot (a sharded command takes one slot's names), at most
    ``batch`` in a group."""
    groups: dict[int, list[bytes]] = {}
    for name in names:
        groups.setdefault(slot_of(name), []).append(name)
    for group in groups.values():
        it = iter(group)
        while chunk := list(itertools.islice(it, batch)):
            yield chunk
