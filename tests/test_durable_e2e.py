"""Durable channels through the relay: ids, Last-Event-ID replay, the live seam."""

from __future__ import annotations

import uuid

import pytest

from sserelay import apublish_durable
from sserelay.testing import SseClient, running_relay

pytestmark = pytest.mark.e2e


def name() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


async def test_durable_events_carry_ids_and_replay_after_last_event_id(durable_dsn: str) -> None:
    channel = name()
    async with running_relay(durable_dsn) as relay:
        client = await SseClient.open("127.0.0.1", relay.port, f"/events/{channel}")
        try:
            await client.wait_ready()
            for i in range(3):
                await apublish_durable(durable_dsn, channel, f"m{i}", event="msg")
            got = [await client.next_event() for _ in range(3)]
            assert [(e.id, e.event, e.data) for e in got] == [
                ("1", "msg", "m0"),
                ("2", "msg", "m1"),
                ("3", "msg", "m2"),
            ], client.seen
        finally:
            await client.close()
        # Published while away: replayed in order, then live with no gap or duplicate.
        for i in range(3, 6):
            await apublish_durable(durable_dsn, channel, f"m{i}")
        again = await SseClient.open(
            "127.0.0.1", relay.port, f"/events/{channel}", {"Last-Event-ID": "3"}
        )
        try:
            await again.wait_ready()
            replayed = [await again.next_event() for _ in range(3)]
            await apublish_durable(durable_dsn, channel, "m6")
            live = await again.next_event()
            assert [e.data for e in [*replayed, live]] == ["m3", "m4", "m5", "m6"], again.seen
            assert [e.id for e in [*replayed, live]] == ["4", "5", "6", "7"]
        finally:
            await again.close()


async def test_multi_channel_stream_resumes_from_composite_id(durable_dsn: str) -> None:
    a, b = sorted([name(), name()])
    async with running_relay(durable_dsn) as relay:
        path = f"/events?channel={b}&channel={a}"
        client = await SseClient.open("127.0.0.1", relay.port, path)
        try:
            await client.wait_ready()
            await apublish_durable(durable_dsn, a, "a1")
            await apublish_durable(durable_dsn, b, "b1")
            first = await client.next_event()
            second = await client.next_event()
            assert (first.data, first.id) == ("a1", "1.0"), client.seen
            assert (second.data, second.id) == ("b1", "1.1"), client.seen
        finally:
            await client.close()
        await apublish_durable(durable_dsn, a, "a2")
        await apublish_durable(durable_dsn, b, "b2")
        again = await SseClient.open("127.0.0.1", relay.port, path, {"Last-Event-ID": "1.0"})
        try:
            got = [await again.next_event() for _ in range(3)]
            # Channels replay in sorted order; each id is the stream's positions (a.b).
            assert [(e.data, e.id) for e in got] == [
                ("a2", "2.0"),
                ("b1", "2.1"),
                ("b2", "2.2"),
            ], again.seen
        finally:
            await again.close()


async def test_history_starts_with_the_last_n_events(durable_dsn: str) -> None:
    channel = name()
    for i in range(5):
        await apublish_durable(durable_dsn, channel, f"m{i}")
    async with running_relay(durable_dsn) as relay:
        client = await SseClient.open("127.0.0.1", relay.port, f"/events/{channel}?history=2")
        try:
            got = [await client.next_event() for _ in range(2)]
            assert [(e.id, e.data) for e in got] == [("4", "m3"), ("5", "m4")], client.seen
        finally:
            await client.close()


async def test_malformed_last_event_id_starts_from_now(durable_dsn: str) -> None:
    channel = name()
    await apublish_durable(durable_dsn, channel, "old")
    async with running_relay(durable_dsn) as relay:
        for bad in ["abc", "-1", "1.2", "99999999999999999999999", "٣"]:
            client = await SseClient.open(
                "127.0.0.1", relay.port, f"/events/{channel}", {"Last-Event-ID": bad}
            )
            try:
                assert client.status == 200
                await client.wait_ready()
                await apublish_durable(durable_dsn, channel, f"new {bad}")
                event = await client.next_event()
                assert event.data == f"new {bad}", client.seen
            finally:
                await client.close()
