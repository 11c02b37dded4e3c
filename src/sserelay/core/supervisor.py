"""The owner of a relay's tasks: every one is seen to end.

- A **service** is a long-lived task (the bus listener, heartbeats, the pruner). If it
  ends while the relay runs (it returned or raised), that is logged with its traceback,
  counted, and the service is started again after a jittered backoff. A service that
  keeps failing (``max_restarts`` within ``window`` seconds) cannot be kept running:
  the supervisor reports it as fatal (the relay then stops admitting streams and its
  process exits non-zero rather than serve silence).
- A **job** is a short task (a gap fill, a stream's catch-up, a ``POST /publish``): its
  unexpected exception is logged with its traceback and counted.

:meth:`Supervisor.close` cancels and awaits everything it owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .. import jitter

log = logging.getLogger("sserelay.tasks")

#: Called once with the name of a service that cannot be kept running, and its error.
OnFatal = Callable[[str, BaseException | None], None]


class Expected(Exception):
    """A job ended early for a reason that is not a failure (its stream left)."""


class _Service:
    def __init__(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.factory = factory
        self.task: asyncio.Task[None] | None = None
        self.failures: deque[float] = deque()
        self.restart: asyncio.TimerHandle | None = None


class Supervisor:
    """See the module docstring."""

    def __init__(self, on_fatal: OnFatal, *, max_restarts: int = 5, window: float = 60.0) -> None:
        self.on_fatal = on_fatal
        self.max_restarts = max_restarts
        self.window = window
        self._services: dict[str, _Service] = {}
        self._jobs: set[asyncio.Task[Any]] = set()
        self.closing = False
        #: Failures by task name (services and jobs), for /metrics.
        self.failures: Counter[str] = Counter()
        #: The last failure, as ``name: Type: message`` (for the detailed health view).
        self.last_failure: str | None = None

    # -- services --------------------------------------------------------------------

    def service(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` as a service named ``name`` (restarted if it ends)."""
        service = self._services[name] = _Service(name, factory)
        self._start(service)

    def _start(self, service: _Service) -> None:
        service.restart = None
        if self.closing:
            return
        coro = service.factory()
        task = asyncio.ensure_future(coro)
        task.set_name(f"sserelay-{service.name}")
        service.task = task
        task.add_done_callback(lambda t: self._service_ended(service, t))

    def _service_ended(self, service: _Service, task: asyncio.Task[None]) -> None:
        if self.closing or task.cancelled():
            return
        exc = task.exception()
        self._count(service.name, exc)
        if exc is not None:
            log.error("%s failed; restarting it", service.name, exc_info=exc)
        else:
            log.error("%s ended by itself; restarting it", service.name)
        now = time.monotonic()
        service.failures.append(now)
        while service.failures and service.failures[0] < now - self.window:
            service.failures.popleft()
        if len(service.failures) > self.max_restarts:
            log.critical(
                "%s failed %d times in %gs: the relay cannot keep it running",
                service.name,
                len(service.failures),
                self.window,
            )
            self.on_fatal(service.name, exc)
            return
        delay = min(0.1 * 2 ** len(service.failures), 5.0) * jitter.uniform(0.5, 1.0)
        loop = asyncio.get_running_loop()
        service.restart = loop.call_later(delay, self._start, service)

    # -- jobs ------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a job; its unexpected exception is logged and counted."""
        task = asyncio.create_task(coro, name=f"sserelay-{name}")
        self._jobs.add(task)
        task.add_done_callback(self._job_ended)
        return task

    def _job_ended(self, task: asyncio.Task[Any]) -> None:
        self._jobs.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or isinstance(exc, Expected):
            return
        name = task.get_name().removeprefix("sserelay-")
        self._count(name, exc)
        log.error("%s failed", name, exc_info=exc)

    def failed(self, name: str, exc: BaseException) -> None:
        """A task recovered from an unexpected error itself: log it and count it."""
        self._count(name, exc)
        log.error("%s failed; retrying", name, exc_info=exc)

    def _count(self, name: str, exc: BaseException | None) -> None:
        self.failures[name.split(":")[0]] += 1
        what = f"{type(exc).__name__}: {str(exc).strip()[:200]}" if exc else "ended"
        self.last_failure = f"{name}: {what}"

    # -- shutdown --------------------------------------------------------------------

    def running(self) -> list[str]:
        """The services whose task runs now."""
        return [
            name
            for name, service in self._services.items()
            if service.task is not None and not service.task.done()
        ]

    @property
    def jobs(self) -> int:
        return len(self._jobs)

    async def close(self) -> None:
        """Cancel and await every service and job."""
        self.closing = True
        tasks: list[asyncio.Task[Any]] = list(self._jobs)
        for service in self._services.values():
            if service.restart is not None:
                service.restart.cancel()
            if service.task is not None:
                tasks.append(service.task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._jobs.clear()
