"""The answers one sharded pub/sub connection must make sense of, in every order the server
may send them (pure logic: a connection that records what is sent, replies fed by hand).
The same code against a real cluster: test_redis_cluster.py."""

from __future__ import annotations

from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.crc import key_slot

from sserelay.bus.redis.cluster.shard import Shard, State, by_slot
from sserelay.bus.redis.cluster.topology import Address, SlotMap


class Sent:
    """A connection that records the commands sent on it."""

    is_connected = True

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    async def send_command(self, *args: Any, **options: Any) -> None:
        self.commands.append(args)


class Owner:
    """What the listener would be told."""

    def __init__(self) -> None:
        self.live: list[bytes] = []
        self.lost: list[tuple[list[bytes], str, tuple[int, Address] | None]] = []
        self.messages: list[tuple[bytes, bytes]] = []
        self.pongs: list[bytes] = []

    def shard_ready(self, shard: Shard) -> None:
        pass

    def shard_message(self, shard: Shard, name: bytes, payload: bytes) -> None:
        self.messages.append((name, payload))

    def shard_live(self, shard: Shard, name: bytes) -> None:
        self.live.append(name)

    def shard_lost(
        self, shard: Shard, names: list[bytes], why: str, moved: tuple[int, Address] | None
    ) -> None:
        self.lost.append((names, why, moved))

    def shard_pong(self, shard: Shard, payload: bytes) -> None:
        self.pongs.append(payload)


def shard() -> tuple[Shard, Sent, Owner]:
    conn, owner = Sent(), Owner()
    made = Shard(("127.0.0.1", 7000), conn, owner)  # type: ignore[arg-type]
    made.ready = True
    return made, conn, owner


def moved(name: bytes, port: int) -> redis_errors.MovedError:
    return redis_errors.MovedError(f"{key_slot(name)} 127.0.0.1:{port}")


async def test_a_name_is_live_once_confirmed() -> None:
    s, conn, owner = shard()
    s.place(b"a")
    s.place(b"b{a}")  # the same slot: one command
    await s.flush(200)
    assert conn.commands == [(b"SSUBSCRIBE", b"a", b"b{a}")]
    s._dispatch([b"ssubscribe", b"a", 1])
    assert (owner.live, s.names[b"a"], s.names[b"b{a}"]) == ([b"a"], State.LIVE, State.SUB)
    s._dispatch([b"smessage", b"a", b"hello"])
    s._dispatch([b"ssubscribe", b"b{a}", 2])
    assert owner.live == [b"a", b"b{a}"] and not s.owed
    assert owner.messages == [(b"a", b"hello")]


def test_one_command_per_slot_and_batch() -> None:
    names = [b"x", b"y", b"z", b"1{x}", b"2{x}"]
    groups = list(by_slot(names, 2))
    assert all(len({key_slot(n) for n in g}) == 1 and len(g) <= 2 for g in groups)
    assert sorted(n for g in groups for n in g) == sorted(names)
    assert len(groups) == 5 - 1  # x, 1{x}, 2{x} share a slot: two commands for three


async def test_a_sunsubscribe_not_asked_for_loses_the_name() -> None:
    s, _conn, owner = shard()
    s.place(b"a")
    await s.flush(200)
    s._dispatch([b"ssubscribe", b"a", 1])
    s._dispatch([b"sunsubscribe", b"a", 0])  # the slot moved: the node let go
    assert owner.lost == [([b"a"], "the slot moved to another node", None)]
    assert b"a" not in s.names and s.idle


async def test_our_own_sunsubscribe_is_not_a_loss() -> None:
    s, conn, owner = shard()
    s.place(b"a")
    await s.flush(200)
    s._dispatch([b"ssubscribe", b"a", 1])
    s.drop(b"a")
    await s.flush(200)
    assert conn.commands[-1] == (b"SUNSUBSCRIBE", b"a")
    s._dispatch([b"sunsubscribe", b"a", 0])
    assert owner.lost == [] and s.idle


async def test_wanted_again_while_its_unsubscribe_is_in_flight() -> None:
    s, conn, owner = shard()
    s.place(b"a")
    await s.flush(200)
    s._dispatch([b"ssubscribe", b"a", 1])
    s.drop(b"a")
    await s.flush(200)
    s.place(b"a")  # before the SUNSUBSCRIBE is confirmed
    await s.flush(200)
    assert conn.commands[-2:] == [(b"SUNSUBSCRIBE", b"a"), (b"SSUBSCRIBE", b"a")]
    s._dispatch([b"sunsubscribe", b"a", 0])  # the late confirmation: nothing lost
    assert s.names[b"a"] is State.SUB and owner.lost == []
    s._dispatch([b"ssubscribe", b"a", 1])
    assert s.names[b"a"] is State.LIVE and owner.live == [b"a", b"a"]


async def test_moved_loses_only_that_commands_names() -> None:
    s, conn, owner = shard()
    for name in (b"a", b"b"):
        s.place(name)
    await s.flush(200)
    first = conn.commands[0][1]
    second = conn.commands[1][1]
    s._dispatch([b"ssubscribe", first, 1])
    s._refused(moved(second, 7001))
    why = f"MovedError: {key_slot(second)} 127.0.0.1:7001"
    assert owner.lost == [([second], why, (key_slot(second), ("127.0.0.1", 7001)))]
    assert s.names == {first: State.LIVE}


async def test_an_error_that_is_not_about_slots_fails_the_shard() -> None:
    s, _conn, _owner = shard()
    s.place(b"a")
    await s.flush(200)
    with pytest.raises(redis_errors.NoPermissionError):
        s._refused(redis_errors.NoPermissionError("no permissions to access a channel"))


async def test_answers_out_of_order_fail_the_shard() -> None:
    s, _conn, _owner = shard()
    s.place(b"a")
    await s.flush(200)
    with pytest.raises(redis_errors.InvalidResponse):
        s._dispatch([b"ssubscribe", b"other", 1])
    with pytest.raises(redis_errors.InvalidResponse):
        s._dispatch([b"pong", b"1.0"])  # no PING sent
    with pytest.raises(redis_errors.InvalidResponse):
        s._dispatch(42)


async def test_probes_in_both_modes() -> None:
    s, conn, owner = shard()
    await s.ping(b"1.5", 10.0)
    await s.ping(b"2.5", 11.0)  # one at a time
    assert conn.commands == [(b"PING", b"1.5")] and s.probe_sent == 10.0
    s._dispatch(b"1.5")  # nothing subscribed: a bare answer
    s.place(b"a")
    await s.flush(200)
    await s.ping(b"3.5", 12.0)
    s._dispatch([b"ssubscribe", b"a", 1])
    s._dispatch([b"pong", b"3.5"])  # subscribed: ["pong", payload]
    assert owner.pongs == [b"1.5", b"3.5"] and s.probe_sent is None


def test_a_slot_map_from_cluster_slots() -> None:
    reply = [
        [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
        [5461, 16383, [b"", 7001, b"id2"]],
    ]
    slots = SlotMap.parse(reply, ("10.0.0.9", 7009))
    assert slots.owner(0) == ("10.0.0.1", 7000) and slots.owner(5460) == ("10.0.0.1", 7000)
    assert slots.owner(5461) == ("10.0.0.9", 7001)  # no host: the one asked
    assert slots.nodes == [("10.0.0.1", 7000), ("10.0.0.9", 7001), ("10.0.0.4", 7003)]
    slots.moved(3, ("10.0.0.2", 7002))
    assert slots.owner(3) == ("10.0.0.2", 7002) and ("10.0.0.2", 7002) in slots.nodes
    assert slots.masters() == {("10.0.0.1", 7000), ("10.0.0.9", 7001), ("10.0.0.2", 7002)}
