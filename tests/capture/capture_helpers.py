"""Helpers of the capture tests: a capturer in this process, SQL from psql or psycopg."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg

from sserelay.bus.postgres.capture import CaptureOptions, Capturer
from sserelay.testing import wait_until

#: Fast timers, so that failover and heartbeats happen within a test's patience.
FAST = {
    "heartbeat_interval": 0.5,
    "standby_interval": 0.2,
    "takeover_timeout": 2.0,
    "reconnect_min": 0.05,
    "reconnect_max": 0.5,
    "status_interval": 1.0,
}


@contextlib.asynccontextmanager
async def running_capturer(
    dsn: str, *, ready: Callable[[Capturer], bool] | None = None, **options: Any
) -> AsyncIterator[Capturer]:
    """A capturer in this process, yielded once ``ready`` (default: streaming); stopped
    on exit."""
    capturer = Capturer(dsn, CaptureOptions(**{**FAST, **options}))
    is_ready = ready or (lambda c: c.streaming)
    task = asyncio.create_task(capturer.run())
    try:
        await wait_until(
            lambda: is_ready(capturer) or task.done(),
            timeout=30,
            message=lambda: f"capturer is {capturer.role}: {capturer.error}",
        )
        yield capturer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def psql(dsn: str, command: str) -> str:
    """Run SQL with the real ``psql`` (as a user would), returning its output."""
    done = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", dsn, "-c", command],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


def execute(dsn: str, *statements: str, params: tuple[Any, ...] | None = None) -> None:
    """Each statement in a transaction of its own (autocommit)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params)  # type: ignore[arg-type]  # test SQL
