"""Scale-out: three relay processes on one broker, clients spread across them; every event
reaches every client exactly once, in order (PostgreSQL and Redis, ``durable_bus``)."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from processes import relay_process
from sserelay.testing import SseClient, showing_frames, wait_until
from streams import Feed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HOST = "127.0.0.1"
RELAYS = 3
CLIENTS_PER_RELAY = 4


async def test_three_relays_every_event_reaches_every_client_once(
    durable_bus: Any, tmp_path: Path
) -> None:
    durable = f"d{uuid.uuid4().hex[:8]}"
    raw = f"r{uuid.uuid4().hex[:8]}"
    feeds: list[Feed] = []
    async with contextlib.AsyncExitStack() as stack:
        # A Redis bus's keys and channels have a prefix of their own (see conftest).
        env = {"SSERELAY_REDIS_PREFIX": durable_bus.prefix} if durable_bus.kind == "redis" else {}
        relays = [
            await stack.enter_async_context(
                relay_process(*durable_bus.cli_args(), log=tmp_path / f"relay{i}.log", env=env)
            )
            for i in range(RELAYS)
        ]
        ports = [relay.port for relay in relays]
        try:
            for i in range(RELAYS * CLIENTS_PER_RELAY):
                # Clients spread over the relays; some on one channel, some on both.
                path = f"/events/{durable}" if i % 2 else f"/events?channel={durable}&channel={raw}"
                client = await SseClient.open(HOST, ports[i % RELAYS], path)
                assert client.status == 200
                with showing_frames(client):
                    await client.wait_ready(timeout=30)
                feeds.append(Feed(client))
            published: list[tuple[str | None, str]] = []
            async with durable_bus.publisher() as publish, durable_bus.notifier() as notify:
                for n in range(100):
                    data = f"event {n}"
                    published.append((await publish(durable, data), data))
                    if n % 4 == 0:
                        await notify(raw, f"raw {n}")
                        published.append((None, f"raw {n}"))
            durable_only = [p for p in published if p[0] is not None]

            def expected(index: int) -> list[tuple[str | None, str]]:
                return durable_only if index % 2 else published

            await wait_until(
                lambda: all(len(f.events) >= len(expected(i)) for i, f in enumerate(feeds)),
                timeout=60,
                message=lambda: str([len(f.events) for f in feeds]),
            )
            for index, feed in enumerate(feeds):
                got = [(e.id, e.data) for e in feed.events]
                if index % 2 == 0:
                    # A two-channel stream's ids are composite; the raw events carry none.
                    got = [(i if i is None else i.split(".")[0], d) for i, d in got]
                    want = published
                    if getattr(durable_bus, "cluster", False):
                        # On a cluster, channels on different masters are not ordered with
                        # each other (docs/redis.md): each channel's events are, and none is
                        # lost or repeated.
                        got = _per_channel(got)
                        want = _per_channel(want)
                else:
                    want = durable_only
                assert got == want, f"client {index} on relay {index % RELAYS}"
        finally:
            for feed in feeds:
                await feed.close()


def _per_channel(events: list[tuple[str | None, str]]) -> tuple[list[tuple[str | None, str]], ...]:
    """The durable and the raw events, each in the order they arrived."""
    return (
        [e for e in events if e[0] is not None],
        [e for e in events if e[0] is None],
    )
