"""``uvicorn sserelay.asgi:app`` told to stop (SIGTERM, SIGINT) with streams open: the app
ends every stream at once with its farewell ``retry:``, so uvicorn's graceful shutdown
completes promptly, without cancelling anything or logging an ERROR."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from sserelay.testing import SseClient, showing_frames

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(90)]

HOST = "127.0.0.1"
#: uvicorn's own bound: the test shows it is never reached.
GRACEFUL = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_streams_end_at_once_when_uvicorn_is_told_to_stop(
    dsn: str, tmp_path: Path, signum: int
) -> None:
    port = free_port()
    log = tmp_path / "uvicorn.log"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SSERELAY_") and k != "DATABASE_URL"
    }
    env.update(DATABASE_URL=dsn, SSERELAY_RETRY_MS="1000", PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "uvicorn", "sserelay.asgi:app", "--host", HOST, "--port", str(port)),
            *("--timeout-graceful-shutdown", str(GRACEFUL)),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
    clients: list[SseClient] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                clients.append(await SseClient.open(HOST, port, "/events/stopping"))
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)  # polling a port that is not open yet
        clients += [await SseClient.open(HOST, port, "/events/stopping") for _ in range(2)]
        for client in clients:
            with showing_frames(client):
                await client.wait_ready()
        started = time.monotonic()
        proc.send_signal(signum)
        for client in clients:
            await client.wait_closed(timeout=15)
            retries = [m.retry for m in client.seen if m.retry is not None]
            assert len(retries) == 2 and 1000 <= retries[-1] <= 2000, client.seen
        code = await asyncio.wait_for(proc.wait(), 30)
        took = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for client in clients:
            await client.close()
    text = log.read_text()
    # uvicorn re-raises a SIGTERM once it has shut down, to exit with the signal's status.
    assert code in (0, -signal.SIGTERM), text
    assert took < GRACEFUL / 2, (took, text)
    assert not re.search(r"ERROR|Cancel \d+ running task|Traceback", text), text
