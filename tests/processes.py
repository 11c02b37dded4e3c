"""``python -m sserelay serve`` as a child process, for tests that need a relay of its own
process: signals, SIGKILL, several relays, memory measured apart from the test's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Variables that would change what ``serve`` does; a test passes what it needs.
SETTINGS_VARS = re.compile(r"^(DATABASE_URL|REDIS_URL|ALLOWED_ORIGINS|LOG_LEVEL|SSERELAY_.*)$")


@dataclass
class RelayProcess:
    """A relay child process and the port it serves on."""

    proc: asyncio.subprocess.Process
    port: int
    log: Path

    async def wait(self, timeout: float) -> int:
        """Its exit status, once it has exited."""
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    def stderr(self) -> str:
        """What it logged so far."""
        return self.log.read_text(errors="replace")


@contextlib.asynccontextmanager
async def relay_process(
    *args: str, log: Path, port: int = 0, env: Mapping[str, str] | None = None
) -> AsyncIterator[RelayProcess]:
    """``sserelay serve --port PORT ARGS`` (e.g. ``--dsn DSN``), yielded once it serves.

    Its stderr is appended to ``log`` (a pipe nobody reads could fill up and stall it). The
    environment is this one without sserelay's settings, plus ``env``. On exit it is sent
    SIGTERM, and killed if it has not ended within 15 s.
    """
    environ = {k: v for k, v in os.environ.items() if not SETTINGS_VARS.match(k)}
    environ.update(env or {}, PYTHONUNBUFFERED="1")
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "sserelay", "serve", "--port", str(port), *args),
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
            text = await asyncio.to_thread(log.read_text, errors="replace")
            raise AssertionError(f"unexpected first line {line!r}; log:\n{text}")
        yield RelayProcess(proc, int(match.group(1)), log)
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
