"""The hub's fan-out economies, driven synchronously with fake streams: a burst of plain
events goes out as one write per stream, in the bus's order; a stream that just got an
event needs no ping; a stream joining after a catch-up gets nothing twice."""

from __future__ import annotations

import asyncio
import time

from sserelay.core.hub import PING, Hub
from sserelay.wire.envelope import Event
from streams import FakeStream, Owner


def plain(channel: str, data: str) -> Event:
    return Event(channel, data)


async def test_a_burst_on_one_channel_is_one_write_per_stream_in_order() -> None:
    hub = Hub(Owner())
    a, b = FakeStream("a"), FakeStream("a", "b")
    hub.subscribe(a)
    hub.subscribe(b)
    for n in range(3):
        hub.publish(plain("a", f"a{n}"))
    hub.publish(plain("b", "b0"))
    hub.publish(plain("a", "a3"))
    assert a.events == [] and b.events == []  # gathered until the end of this loop step
    await asyncio.sleep(0)
    assert [len(e.frame.split(b"\n\n")) - 1 for e in a.events] == [3, 1]
    assert a.events[0].frame == b"data: a0\n\ndata: a1\n\ndata: a2\n\n"
    # A stream on both channels sees the bus's order: a0-a2, then b0, then a3.
    assert b"".join(e.frame for e in b.events) == b"".join(
        f"data: {x}\n\n".encode() for x in ("a0", "a1", "a2", "b0", "a3")
    )
    assert hub.deliveries == 4 + 5


async def test_an_event_with_a_position_writes_the_gathered_ones_first() -> None:
    hub = Hub(Owner())
    stream = FakeStream("a")
    hub.subscribe(stream)
    hub.publish(plain("a", "live"))
    hub.publish(Event("a", "durable", seq=7))
    frames = b"".join(e.frame for e in stream.events)
    assert frames == b"data: live\n\nid: 7\ndata: durable\n\n"


async def test_a_stream_joining_after_its_catch_up_gets_no_gathered_event_twice() -> None:
    """What was gathered when a stream joins came before it: its owner gave it those
    (the seam); the flush that follows must not write them to it again."""
    hub = Hub(Owner())
    live, joining = FakeStream("a"), FakeStream("a")
    hub.subscribe(live)
    hub.subscribe(joining, live=False)
    hub.publish(plain("a", "before the join"))
    hub.join(joining)
    await asyncio.sleep(0)
    assert [e.frame for e in live.events] == [b"data: before the join\n\n"]
    assert joining.events == []


async def test_gathered_events_are_written_before_a_shutdown_closes_the_streams() -> None:
    hub = Hub(Owner())
    stream = FakeStream("a")
    hub.subscribe(stream)
    hub.publish(plain("a", "last words"))
    hub.close_all(retry_ms=1000)
    assert stream.frames[-2] == b"data: last words\n\n"
    assert stream.closed_with is not None and stream.closed_with.startswith(b"retry: ")


def test_without_a_running_loop_an_event_is_written_at_once() -> None:
    hub = Hub(Owner())
    stream = FakeStream("a")
    hub.subscribe(stream)
    hub.publish(plain("a", "now"))
    assert [e.frame for e in stream.events] == [b"data: now\n\n"]


def test_a_stream_that_just_got_an_event_is_not_pinged() -> None:
    hub = Hub(Owner(), heartbeat=15.0)
    busy, idle = FakeStream("a"), FakeStream("b")
    hub.subscribe(busy)
    hub.subscribe(idle)
    sent = time.monotonic()
    hub.publish(plain("a", "x"))  # no running loop: written at once
    busy.next_ping = idle.next_ping = 0.0  # both heartbeats due
    assert hub.send_heartbeats(sent + 1.0) == 1
    assert PING in idle.frames and PING not in busy.frames
    # The busy stream's next heartbeat counts from its event: it is not put off forever.
    assert sent + 15.0 <= busy.next_ping <= time.monotonic() + 15.0 * 1.25
    assert hub.send_heartbeats(sent + 40.0) == 2
    assert PING in busy.frames
