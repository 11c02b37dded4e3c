"""The hub's fan-out economies, driven synchronously with fake streams: a burst of live
events goes out as one write per stream, in the bus's order; a stream that just got an
event needs no ping."""

from __future__ import annotations

import asyncio
import time

from sserelay.events import Event
from sserelay.hub import PING, Hub
from streams import FakeStream


async def test_a_burst_on_one_channel_is_one_write_per_stream_in_order() -> None:
    hub = Hub()
    a, b = FakeStream("a"), FakeStream("a", "b")
    hub.subscribe(a)
    hub.subscribe(b)
    for n in range(3):
        hub.dispatch("a", f"a{n}")
    hub.dispatch("b", "b0")
    hub.dispatch("a", "a3")
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
    hub = Hub()
    stream = FakeStream("a")
    hub.subscribe(stream)
    hub.dispatch("a", "live")
    hub.publish_event(Event("a", "durable", seq=7))
    frames = b"".join(e.frame for e in stream.events)
    assert frames == b"data: live\n\nid: 7\ndata: durable\n\n"


async def test_gathered_events_are_written_before_a_shutdown_closes_the_streams() -> None:
    hub = Hub()
    stream = FakeStream("a")
    hub.subscribe(stream)
    hub.dispatch("a", "last words")
    hub.close_all(retry_ms=1000)
    assert stream.frames[-2] == b"data: last words\n\n"
    assert stream.closed_with is not None and stream.closed_with.startswith(b"retry: ")


def test_without_a_running_loop_an_event_is_written_at_once() -> None:
    hub = Hub()
    stream = FakeStream("a")
    hub.subscribe(stream)
    hub.dispatch("a", "now")
    assert [e.frame for e in stream.events] == [b"data: now\n\n"]


def test_a_stream_that_just_got_an_event_is_not_pinged() -> None:
    hub = Hub(heartbeat=15.0)
    busy, idle = FakeStream("a"), FakeStream("b")
    hub.subscribe(busy)
    hub.subscribe(idle)
    sent = time.monotonic()
    hub.dispatch("a", "x")  # no running loop: written at once
    busy.next_ping = idle.next_ping = 0.0  # both heartbeats due
    assert hub.send_heartbeats(sent + 1.0) == 1
    assert PING in idle.frames and PING not in busy.frames
    # The busy stream's next heartbeat counts from its event: it is not put off forever.
    assert sent + 15.0 <= busy.next_ping <= time.monotonic() + 15.0 * 1.25
    assert hub.send_heartbeats(sent + 40.0) == 2
    assert PING in busy.frames
