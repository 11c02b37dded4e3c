"""Identical reads in flight are run once: a reconnect wave costs one read per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


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
