"""Replay logic against a fake log (pure logic: the real log is tested end to end elsewhere)."""

from __future__ import annotations

import datetime
import json

from sserelay.bus.postgres.durable import LogEvent
from sserelay.core.hub import Hub
from sserelay.core.replay import CatchUp, ChannelState, IntegerIds, Replay, parse_last_event_id
from streams import FakeStream

NOW = datetime.datetime.now(datetime.UTC)


class FakeLog(IntegerIds):
    """``oldest`` answers from before a prune; ``read_after`` from after it (PostgreSQL's
    integer ids: the rest of the log interface is arithmetic)."""

    batch = 500

    def __init__(self, oldest: int, rows: list[int]) -> None:
        self._oldest = oldest
        self._rows = rows

    async def oldest(self, channel: str) -> int | None:
        return self._oldest

    async def read_after(self, channel: str, after: int, shared: bool = True) -> list[LogEvent]:
        return [LogEvent(i, None, f"m{i}", NOW) for i in self._rows if i > after][: self.batch]


async def catch_up(log: FakeLog, live: int, start: int) -> FakeStream:
    hub = Hub()
    replay = Replay(hub, log)  # type: ignore[arg-type]  # the fake has what replay reads
    hub.replay = replay
    replay.enabled = True
    sink = FakeStream("c")
    replay.states["c"] = state = ChannelState(position=live)
    state.known.set()
    hub.subscribe(sink, CatchUp(positions={"c": start}))
    await replay.close()  # the catch-up task was spawned; run it directly instead
    hub._catching[sink] = []
    await replay._catch_up(sink, CatchUp(positions={"c": start}))
    return sink


async def test_a_prune_during_catch_up_is_reported_as_missed() -> None:
    # The retention check saw id 3 as the oldest, but by the read ids 3-5 were pruned.
    sink = await catch_up(FakeLog(oldest=3, rows=[6, 7, 8]), live=8, start=2)
    assert sink.events[0].event == "missed"
    assert json.loads(sink.events[0].data) == {
        "channel": "c",
        "after": 2,
        "resumed_at": 5,
        "reason": "retention",
    }
    assert [e.id for e in sink.events[1:]] == ["6", "7", "8"]


async def test_contiguous_replay_sends_no_missed_event() -> None:
    sink = await catch_up(FakeLog(oldest=3, rows=[3, 4, 5]), live=5, start=2)
    assert [(e.event, e.id) for e in sink.events] == [(None, "3"), (None, "4"), (None, "5")]


def test_last_event_id_parsing() -> None:
    assert parse_last_event_id(None, ("a",)) is None
    assert parse_last_event_id("", ("a",)) is None
    assert parse_last_event_id("42", ("a",)) == {"a": 42}
    assert parse_last_event_id("1.2", ("b", "a")) == {"a": 1, "b": 2}  # sorted names
    for bad in ["x", "-1", "1.2", "٣", " 1", str(2**63)]:
        try:
            parse_last_event_id(bad, ("a",))
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
