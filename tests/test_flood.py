"""A connection flood against ``sserelay serve`` (a child process, so that its memory is
its own): streams past ``--max-streams`` get 503 with ``Retry-After``, connections that
never finish their head get 408, the relay's memory stays bounded, and the streams it
already holds receive every event, in order, all along."""

from __future__ import annotations

import asyncio
import re
import resource
from collections import Counter
from pathlib import Path

import pytest

from processes import relay_process
from sserelay.testing import SseClient, notify, raw_request, showing_frames

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HOST = "127.0.0.1"
MAX_STREAMS = 200
HONEST = 20
FLOOD_STREAMS = 1500  # stream requests past the limit
IDLE = 600  # connections that send half a head and wait
#: The relay's resident memory may grow by this much under the flood (it is ~40 MB at
#: rest; the flood's connections cost it a few KB each while they last).
MAX_GROWTH_BYTES = 48 * 2**20


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) * 1024


@pytest.fixture(scope="module", autouse=True)
def nofile() -> None:
    """Room for the flood: this process holds the client end of every connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def refused_stream(port: int, n: int) -> tuple[int, str | None]:
    request = f"GET /events/flood-{n % 50} HTTP/1.1\r\nHost: relay\r\n\r\n".encode()
    response = await raw_request(HOST, port, request, timeout=30)
    return response.status, response.headers.get("retry-after")


async def idle_connection(port: int) -> bytes:
    """Half a request head, then nothing: the relay must answer 408 and close."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"GET /events/idle HTTP/1.1\r\nHost: relay\r\n")
        async with asyncio.timeout(30):
            return await reader.read()
    finally:
        writer.close()


async def test_flood_past_the_limit(module_dsn: str, tmp_path: Path) -> None:
    async with relay_process(
        *("--dsn", module_dsn, "--max-streams", str(MAX_STREAMS)),
        log=tmp_path / "relay.log",
        env={"SSERELAY_HEADER_TIMEOUT": "3"},  # a loaded machine may take over 1 s to read a head
    ) as relay:
        pid, port = relay.proc.pid, relay.port
        honest = [await SseClient.open(HOST, port, "/events/honest") for _ in range(HONEST)]
        others = [
            await SseClient.open(HOST, port, "/events/filler") for _ in range(MAX_STREAMS - HONEST)
        ]
        try:
            with showing_frames(*honest[:1]):
                for client in honest:
                    assert client.status == 200
                    await client.wait_ready()
            assert all(client.status == 200 for client in others)
            before = rss(pid)
            sent = 0

            async def publish_all_along(stop: asyncio.Event) -> None:
                nonlocal sent
                while not stop.is_set():
                    sent += 1
                    await notify(module_dsn, "honest", str(sent))
                    await asyncio.sleep(0.01)

            stop = asyncio.Event()
            publisher = asyncio.create_task(publish_all_along(stop))
            peak = before
            statuses: Counter[int] = Counter()
            for wave in range(0, FLOOD_STREAMS, 300):
                idle = [asyncio.create_task(idle_connection(port)) for _ in range(IDLE // 5)]
                results = await asyncio.gather(
                    *(refused_stream(port, n) for n in range(wave, wave + 300))
                )
                for status, retry_after in results:
                    statuses[status] += 1
                    if status == 503:
                        assert retry_after is not None and 1 <= int(retry_after) <= 5
                peak = max(peak, rss(pid))
                for answer in await asyncio.gather(*idle):
                    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
            stop.set()
            await publisher
            assert statuses == {503: FLOOD_STREAMS}, statuses
            print(f"relay RSS {before / 2**20:.1f} MB, peak under the flood {peak / 2**20:.1f} MB")
            assert peak - before < MAX_GROWTH_BYTES, (before, peak)

            # The streams the relay held got every event, in order, and still do.
            await notify(module_dsn, "honest", "last")
            expected = [str(n) for n in range(1, sent + 1)] + ["last"]
            for client in honest:
                with showing_frames(client):
                    got = [(await client.next_event(timeout=30)).data for _ in expected]
                assert got == expected
        finally:
            for client in honest + others:
                await client.close()
