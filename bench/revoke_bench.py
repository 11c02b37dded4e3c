"""How long a revocation takes to end a subject's streams on every relay.

Starts ``--relays`` relay processes (``python -m sserelay serve``) on one bus (a
PostgreSQL DSN with the schema, or ``--redis URL`` with a prefix of its own), opens
``--streams`` streams per relay with a token of one subject (and as many of another
subject, which must stay open), calls ``sserelay.revoke(subject=...)`` and measures, for
each revoked stream, the time from the call to the end of its response (the last chunk,
after the ``sserelay.revoked`` event). Repeated ``--repeats`` times; prints one line per
run (min, median, max) and checks the other subject's streams are all still open.

    .venv/bin/python bench/revoke_bench.py --dsn postgresql://postgres@127.0.0.1/bench \\
        --relays 3 --streams 300 --repeats 3
    .venv/bin/python bench/revoke_bench.py --redis redis://127.0.0.1:6379/0 --streams 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator

import sserelay
from sserelay.bus.redis.publish import RedisBus

SECRET = "revoke-bench-secret-of-at-least-32-bytes!"
HOST = "127.0.0.1"


@contextlib.asynccontextmanager
async def relay(args: argparse.Namespace, prefix: str) -> AsyncIterator[int]:
    bus = ["--redis", args.redis] if args.redis else ["--dsn", args.dsn]
    env = dict(os.environ, SSERELAY_JWT_SECRET=SECRET, SSERELAY_REDIS_PREFIX=prefix)
    env["SSERELAY_MAX_STREAMS_PER_SUBJECT"] = "0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sserelay", "serve", "--port", "0", *bus,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, line
        await asyncio.sleep(1)  # its revocation feed has loaded
        yield int(match[1])
    finally:
        proc.terminate()
        await proc.wait()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_stream(port: int, token: str, channel: str) -> Stream:
    """A stream, once ready (the writer is kept: dropping it would close the socket)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    request = f"GET /events/{channel} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    writer.write(request.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    buffered = b""
    while b": ready" not in buffered:
        buffered += await reader.read(4096)
    return reader, writer


async def ended(stream: Stream) -> float:
    reader, writer = stream
    while await reader.read(65536):
        pass
    at = time.monotonic()
    writer.close()
    return at


async def is_open(stream: Stream) -> bool:
    """No end of the response within a moment (pings may come)."""
    reader = stream[0]
    try:
        async with asyncio.timeout(0.01):
            while data := await reader.read(65536):
                if data.endswith(b"0\r\n\r\n"):
                    return False
            return False
    except TimeoutError:
        return True


async def run(args: argparse.Namespace) -> None:
    prefix = f"revoke-bench-{uuid.uuid4().hex[:8]}:"
    async with contextlib.AsyncExitStack() as stack:
        ports = [await stack.enter_async_context(relay(args, prefix)) for _ in range(args.relays)]
        for n in range(args.repeats):
            subject, other = f"victim-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
            channel = f"room-{n}"
            victim = sserelay.mint_token(SECRET, subscribe=["room-*"], subject=subject)
            keeper = sserelay.mint_token(SECRET, subscribe=["room-*"], subject=other)
            victims = [
                await open_stream(p, victim, channel) for p in ports for _ in range(args.streams)
            ]
            kept = [
                await open_stream(p, keeper, channel) for p in ports for _ in range(args.streams)
            ]
            target: str | RedisBus = RedisBus(args.redis, prefix=prefix) if args.redis else args.dsn
            began = time.monotonic()
            await asyncio.to_thread(sserelay.revoke, target, subject=subject)
            call = time.monotonic() - began
            ends = await asyncio.gather(*(ended(r) for r in victims))
            took = sorted(end - began for end in ends)
            still = sum([await is_open(r) for r in kept])
            for _, writer in kept:
                writer.close()
            print(
                f"run {n + 1}: {len(victims)} streams on {args.relays} relays ended in "
                f"min {took[0] * 1000:.1f} ms, median {statistics.median(took) * 1000:.1f} ms, "
                f"max {took[-1] * 1000:.1f} ms (the revoke call: {call * 1000:.1f} ms); "
                f"the other subject's streams still open: {still}/{len(kept)}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--redis")
    parser.add_argument("--relays", type=int, default=3)
    parser.add_argument("--streams", type=int, default=100, help="per relay and subject")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.redis and not args.dsn:
        parser.error("give --dsn (a database with the sserelay schema) or --redis")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
