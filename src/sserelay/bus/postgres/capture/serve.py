"""Running a capturer: beside a relay (``sserelay serve --capture``, which supervises it
and reports it in ``/healthz`` and ``/metrics``), or alone until told to stop
(``sserelay capture run``, ``manage.py sserelay_capture --run``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from ....errors import ConfigError
from .capturer import Capturer
from .options import CaptureOptions

log = logging.getLogger("sserelay.capture")


def capturer_for(dsn: str | None, *, bus: str, max_lag: float | None) -> Capturer:
    """A capturer for the relay's database."""
    if bus != "postgres" or dsn is None:
        raise ConfigError("capture needs the PostgreSQL bus: its events go to the PostgreSQL log")
    return Capturer(dsn, CaptureOptions(max_lag=max_lag))


async def run_alone(capturer: Capturer, *, started: Callable[[], None] | None = None) -> int:
    """Run ``capturer`` until SIGTERM or SIGINT; the exit status: 0, or 1 if it ended by
    itself (it retries every failure, so that is a bug, logged here)."""
    task = asyncio.create_task(capturer.run(), name="sserelay-capture")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if started is not None:
        started()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if task.done():
        log.critical("the capturer ended by itself", exc_info=task.exception())
        return 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0
