"""Catch-up logic against a fake log (pure logic: the real log is tested end to end elsewhere)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence

import pytest

from sserelay.bus.postgres.log import LogEvent, PostgresLog
from sserelay.core.catchup import CatchUp, run_catch_up
from sserelay.core.delivery import ChannelState, Delivery
from sserelay.core.supervisor import Supervisor
from sserelay.wire.ids import IntegerIds, parse_last_event_id
from streams import FakeStream

NOW = datetime.datetime.now(datetime.UTC)


class FakeLog(PostgresLog):
    """PostgreSQL's arithmetic on ids, but ``oldest`` answers from before a prune and
    ``read_after`` from after it."""

    def __init__(self, oldest: int, rows: list[int]) -> None:
        super().__init__("dbname=never-connected")
        self._oldest = oldest
        self._rows = rows

    async def oldest(self, channel: str) -> int | None:
        return self._oldest

    async def heads(self, channels: Sequence[str]) -> dict[str, int]:
        return {c: max(self._rows, default=0) for c in channels}

    async def read_after(self, channel: str, after: int, *, shared: bool = True) -> list[LogEvent]:
        return [LogEvent(i, None, f"m{i}", NOW) for i in self._rows if i > after][: self.batch]


async def catch_up(log: FakeLog, live: int, start: int) -> FakeStream:
    delivery = Delivery(Supervisor(lambda name, exc: None))
    delivery.log = log
    delivery.enabled = True
    sink = FakeStream("c")
    delivery.states["c"] = state = ChannelState(position=live)
    state.known.set()
    delivery.begin_catch_up(sink)
    await run_catch_up(delivery, sink, CatchUp(positions={"c": start}))
    assert delivery.hub.is_joined(sink)
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
    ids = IntegerIds()
    assert parse_last_event_id(None, ("a",), ids) is None
    assert parse_last_event_id("", ("a",), ids) is None
    assert parse_last_event_id("42", ("a",), ids) == {"a": 42}
    assert parse_last_event_id("1.2", ("b", "a"), ids) == {"a": 1, "b": 2}  # sorted names
    for bad in ["x", "-1", "1.2", "٣", " 1", str(2**63), "1-2"]:
        with (
            pytest.raises(ValueError, match="event id")
            if "." not in bad
            else pytest.raises(ValueError)
        ):
            parse_last_event_id(bad, ("a",), ids)


def test_a_postgres_id_error_speaks_of_event_ids_not_stream_entries() -> None:
    with pytest.raises(ValueError) as info:
        parse_last_event_id("-5", ("a",), IntegerIds())
    assert "ms-seq" not in str(info.value)
    assert "non-negative integer" in str(info.value)
