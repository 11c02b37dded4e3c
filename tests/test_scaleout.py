"""Scale-out: three relay processes on one broker, clients spread across them; every event
reaches every client exactly once, in order (PostgreSQL and Redis, ``durable_bus``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sserelay.testing import SseClient, SseMessage, StreamClosed, showing_frames, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HOST = "127.0.0.1"
RELAYS = 3
CLIENTS_PER_RELAY = 4


@contextlib.asynccontextmanager
async def relay_process(bus: Any, log: Path) -> AsyncIterator[int]:
    """``python -m sserelay serve`` on ``bus`` as a child process; yields its port."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SSERELAY_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    environ["PYTHONUNBUFFERED"] = "1"
    if bus.kind == "redis":
        environ["SSERELAY_REDIS_PREFIX"] = bus.prefix
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "sserelay", "serve", "--port", "0", *bus.cli_args()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=environ,
        )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
        if not match:
            text = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"unexpected first line {line!r}; log:\n{text}")
        yield int(match.group(1))
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


class Feed:
    def __init__(self, client: SseClient) -> None:
        self.client = client
        self.events: list[SseMessage] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(StreamClosed):
            while True:
                self.events.append(await self.client.next_event(timeout=3600))

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StreamClosed):
            await self.task
        await self.client.close()


async def test_three_relays_every_event_reaches_every_client_once(
    durable_bus: Any, tmp_path: Path
) -> None:
    durable = f"d{uuid.uuid4().hex[:8]}"
    raw = f"r{uuid.uuid4().hex[:8]}"
    feeds: list[Feed] = []
    async with contextlib.AsyncExitStack() as stack:
        ports = [
            await stack.enter_async_context(relay_process(durable_bus, tmp_path / f"relay{i}.log"))
            for i in range(RELAYS)
        ]
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
                else:
                    want = durable_only
                assert got == want, f"client {index} on relay {index % RELAYS}"
        finally:
            for feed in feeds:
                await feed.close()
