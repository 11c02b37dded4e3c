"""Reading a log: identical reads in flight run once (a reconnect wave costs one read per
batch), and a read that fails is retried while someone still needs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .. import jitter
from ..errors import BrokerUnavailable
from .supervisor import Expected

log = logging.getLogger("sserelay.delivery")

T = TypeVar("T")


class Gone(Expected):
    """The channel or stream a read was for has no subscribers any more."""


async def retry(
    call: Callable[[], Awaitable[T]],
    still: Callable[[], bool],
    unexpected: Callable[[str, BaseException], None],
) -> T:
    """Keep trying a read while ``still()`` (the channel or stream it is for is there), with
    jittered backoff; :class:`Gone` once it is not. A bus that is down is expected (a
    warning); any other error is a surprise, reported to ``unexpected`` (which logs its
    traceback and counts it), and retried all the same."""
    delay = 0.1
    while True:
        if not still():
            raise Gone
        try:
            return await call()
        except Exception as exc:
            if not still():
                raise Gone from exc
            if isinstance(exc, BrokerUnavailable):
                log.warning("reading the log failed (%s); retrying", exc)
            else:
                unexpected("log-read", exc)
            await asyncio.sleep(delay * jitter.uniform(0.5, 1.0))
            delay = min(delay * 2, 5.0)


class SharedReads:
    """Coalesces concurrent reads with the same key (a log mixes it in)."""

    def __init__(self) -> None:
        self._inflight: dict[tuple[Any, ...], asyncio.Future[Any]] = {}
        #: Reads sent, and reads answered by one already in flight.
        self.queries = 0
        self.shared = 0

    async def _shared(self, key: tuple[Any, ...], run: Callable[[], Awaitable[T]]) -> T:
        """Run ``run`` once for every concurrent caller with the same ``key``."""
        future = self._inflight.get(key)
        if future is not None:
            self.shared += 1
            result: T = await asyncio.shield(future)
            return result
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            self.queries += 1
            value = await run()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: the waiters (if any) get it too
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]

    async def _unshared(self, run: Callable[[], Awaitable[T]]) -> T:
        """A read that must start now (not join one in flight, whose snapshot may be older)."""
        self.queries += 1
        return await run()
