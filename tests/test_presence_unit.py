"""The presence tracker's bookkeeping, as pure logic (no bus): what one flush writes,
coalescing of leaves, the rewrite after a failed write, the event bound."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sserelay.core.presence import (
    ANONYMOUS,
    JOIN,
    LEAVE,
    OVERFLOW,
    Batch,
    Change,
    PresenceService,
    PresenceTracker,
    PresenceView,
    Transition,
    view_from_rows,
)


class _Lease:
    """A lease as the limits give one: ``on_release`` called once, on the first release."""

    def __init__(self) -> None:
        self.released = 0
        self.on_release: Callable[[], None] | None = None

    def release(self) -> None:
        self.released += 1
        if self.released == 1 and self.on_release is not None:
            self.on_release()


def _tracked(tracker: PresenceTracker, channels: tuple[str, ...], subject: str | None) -> _Lease:
    lease = _Lease()
    tracker.track(channels, lease, subject)
    return lease


def _tracker(linger: float = 2.0) -> PresenceTracker:
    return PresenceTracker(lambda channel: channel.startswith("room-"), linger=linger)


def _changes(batch: Batch) -> set[tuple[str, str, int | None]]:
    return {(c.channel, c.subject, c.connections) for c in batch.changes}


def test_only_presence_channels_are_tracked_and_a_lease_releases_once() -> None:
    tracker = _tracker()
    plain = _tracked(tracker, ("lobby",), "u1")
    assert plain.on_release is None
    lease = _tracked(tracker, ("lobby", "room-1"), "u1")
    assert tracker.count("room-1", "u1") == 1 and tracker.count("lobby", "u1") == 0
    lease.release()
    lease.release()
    assert tracker.count("room-1", "u1") == 0


def test_a_flush_writes_counts_and_a_stream_without_subject_is_anonymous() -> None:
    tracker = _tracker()
    leases = [_tracked(tracker, ("room-1",), s) for s in ("u1", "u1", None, "u2")]
    batch = tracker.take(0.0)
    assert _changes(batch) == {("room-1", "u1", 2), ("room-1", ANONYMOUS, 1), ("room-1", "u2", 1)}
    tracker.written(batch)
    assert tracker.take(0.5).changes == []  # nothing changed: nothing written
    leases[0].release()
    assert _changes(tracker.take(1.0)) == {("room-1", "u1", 1)}


def test_a_subject_lingers_before_it_goes_and_one_that_comes_back_changes_nothing() -> None:
    tracker = _tracker(linger=2.0)
    lease = _tracked(tracker, ("room-1",), "u1")
    tracker.written(tracker.take(0.0))
    lease.release()
    first = tracker.take(1.0)
    assert _changes(first) == {("room-1", "u1", 0)}  # lingering: 0 connections
    tracker.written(first)
    lease = _tracked(tracker, ("room-1",), "u1")  # back within the window
    back = tracker.take(2.5)
    assert _changes(back) == {("room-1", "u1", 1)}
    tracker.written(back)
    lease.release()
    tracker.written(tracker.take(3.0))
    assert tracker.take(4.0).changes == []  # still lingering
    gone = tracker.take(5.0)
    assert _changes(gone) == {("room-1", "u1", None)}
    tracker.written(gone)
    assert tracker.channels == set()


def test_a_stream_that_came_and_went_between_two_flushes_writes_nothing() -> None:
    tracker = _tracker()
    _tracked(tracker, ("room-1",), "u1").release()
    assert tracker.take(0.0).changes == []


def test_after_a_failed_write_every_row_is_written_again() -> None:
    tracker = _tracker()
    keep = _tracked(tracker, ("room-1",), "u1")
    tracker.written(tracker.take(0.0))
    _tracked(tracker, ("room-2",), "u2")
    tracker.take(1.0)  # its write fails
    tracker.failed()
    again = tracker.take(2.0)
    assert _changes(again) == {("room-1", "u1", 1), ("room-2", "u2", 1)}
    assert again.channels == {"room-1", "room-2"}
    assert keep is not None


def test_the_view_sums_relays_and_lists_subjects_sorted() -> None:
    rows = [("u2", 1), ("u1", 2), ("", 3), ("u1", 1)]
    assert view_from_rows("room-1", rows) == PresenceView("room-1", ("u1", "u2"), 3, 7)
    truncated = view_from_rows("room-1", rows, limit=1)
    assert truncated.subjects == ("u1",) and truncated.as_dict()["truncated"] is True


class _Store:
    def __init__(self, transitions: list[Transition]) -> None:
        self.transitions = transitions
        self.batches: list[Batch] = []

    async def write(self, batch: Batch, *, events: bool) -> list[Transition]:
        self.batches.append(batch)
        return self.transitions

    async def read(self, channel: str) -> PresenceView:
        raise NotImplementedError

    async def prune(self) -> int:
        return 0

    async def remove(self, channels: object) -> None:
        return None


def test_events_past_the_bound_of_one_write_become_one_summary() -> None:
    joins = [Transition("room-1", JOIN, f"u{i}") for i in range(7)]
    store = _Store([*joins, Transition("room-1", LEAVE, "x"), Transition("room-2", JOIN, "y")])
    sent: list[tuple[str, str, object]] = []

    async def publish(channel: str, event: str, data: object) -> None:
        sent.append((channel, event, data))

    service = PresenceService(
        _tracker(), store, publish, interval=1, lease=10, events=True, max_events=3
    )
    asyncio.run(service.flush())
    room1 = [s for s in sent if s[0] == "room-1"]
    assert room1 == [
        ("room-1", JOIN, {"subject": "u0"}),
        ("room-1", JOIN, {"subject": "u1"}),
        ("room-1", JOIN, {"subject": "u2"}),
        ("room-1", OVERFLOW, {"joined": 4, "left": 1}),
    ]
    assert [s for s in sent if s[0] == "room-2"] == [("room-2", JOIN, {"subject": "y"})]
    assert service.events_sent == 4 and service.events_coalesced == 5


def test_change_is_a_value() -> None:
    assert Change("room-1", "u1", None) == Change("room-1", "u1", None)


def test_reads_are_shared_and_reused_for_one_interval() -> None:
    reads: list[str] = []

    class Store(_Store):
        async def read(self, channel: str) -> PresenceView:
            reads.append(channel)
            await asyncio.sleep(0.01)
            return PresenceView(channel, (), len(reads), len(reads))

    async def publish(channel: str, event: str, data: object) -> None:
        return None

    async def run() -> None:
        service = PresenceService(
            _tracker(), Store([]), publish, interval=3600, lease=1e4, events=False, max_events=1
        )
        views = await asyncio.gather(*(service.read("room-1") for _ in range(20)))
        assert reads == ["room-1"] and {v.anonymous for v in views} == {1}
        assert (await service.read("room-1")).anonymous == 1  # young enough: reused
        assert (await service.read("room-2")).anonymous == 2  # another channel: read
        assert service.shared == 19

    asyncio.run(run())
