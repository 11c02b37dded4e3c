"""Pure logic of the limits: stream counting, deadlines in the hub, the publish rate."""

from __future__ import annotations

import pytest

from sserelay.access.admission import StreamAccess
from sserelay.access.limits import RateLimiter, StreamLimits
from sserelay.config import Settings
from sserelay.core.hub import Hub
from sserelay.errors import HttpError
from streams import FakeStream, Owner


def test_limits_count_and_release() -> None:
    limits = StreamLimits(max_streams=3, per_client=2, per_subject=1)
    a = limits.acquire("10.0.0.1", "alice", None)
    limits.acquire("10.0.0.1", None, None)
    with pytest.raises(HttpError) as info:
        limits.acquire("10.0.0.1", None, None)
    assert info.value.status == 429 and "client" in info.value.reason
    with pytest.raises(HttpError) as info:
        limits.acquire("10.0.0.2", "alice", None)
    assert info.value.status == 429 and "subject" in info.value.reason
    limits.acquire("10.0.0.2", "bob", None)
    with pytest.raises(HttpError) as info:
        limits.acquire("10.0.0.3", None, None)
    assert info.value.status == 503
    assert dict(info.value.headers)["Retry-After"] in {"1", "2", "3", "4", "5"}
    a.release()
    a.release()  # idempotent
    assert limits.total == 2
    assert limits.clients == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert limits.subjects == {"bob": 1}
    limits.acquire("10.0.0.1", "alice", None)


def test_zero_turns_a_per_key_limit_off() -> None:
    limits = StreamLimits(max_streams=1000, per_client=0, per_subject=0)
    leases = [limits.acquire("10.0.0.1", "alice", None) for _ in range(500)]
    assert limits.clients == {} and limits.subjects == {}
    for lease in leases:
        lease.release()
    assert limits.total == 0


def test_lifetime_deadline_is_jittered_down_only() -> None:
    access = StreamAccess(Settings(max_stream_lifetime=100.0))
    lifetimes = []
    for _ in range(200):
        lease = access.admit(["a"], {}, (), None)
        assert lease.deadline is not None
        lifetimes.append(lease.deadline)
        lease.release()
    spread = max(lifetimes) - min(lifetimes)
    assert 0 < spread <= 10.5  # within the 10% jitter (plus the time the loop took)


def test_hub_ends_streams_at_their_deadline_and_forgets_early_leavers() -> None:
    hub = Hub(Owner(), heartbeat=30.0, retry_ms=1000)
    limits = StreamLimits(max_streams=10_000, per_client=0, per_subject=0)
    early = FakeStream("a")
    late = FakeStream("a")
    never = FakeStream("a")
    hub.subscribe(early, lease=limits.acquire(None, None, 10.0))
    hub.subscribe(late, lease=limits.acquire(None, None, 20.0))
    hub.subscribe(never, lease=limits.acquire(None, None, None))
    assert hub.expire_due(5.0) == 0
    assert hub.expire_due(10.0) == 1
    assert early.closed_with is not None and early.closed_with.startswith(b"retry: ")
    assert late.closed_with is None
    hub.unsubscribe(late)  # gone before its deadline: its heap entry is skipped
    assert hub.expire_due(30.0) == 0
    assert never.closed_with is None
    assert limits.total == 1
    assert hub.streams_expired == 1


def test_hub_deadline_heap_stays_bounded() -> None:
    hub = Hub(Owner(), heartbeat=30.0)
    limits = StreamLimits(max_streams=100_000, per_client=0, per_subject=0)
    for n in range(5000):
        stream = FakeStream("a")
        hub.subscribe(stream, lease=limits.acquire(None, None, 1000.0 + n))
        hub.unsubscribe(stream)
        hub.expire_due(0.0)
    assert len(hub._deadlines) <= 64 + 1
    assert limits.total == 0


def test_rate_limiter_bucket() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", now=0.0) == pytest.approx(0.5)
    assert limiter.take("k", now=0.5) == 0.0  # one token refilled
    assert limiter.take("other", now=0.5) == 0.0  # a bucket per key


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_buckets=100)
    for n in range(10_000):
        limiter.take(f"key-{n}", now=float(n) / 1000)
    assert len(limiter) <= 100
