"""Django's ASGI application, with what the stream view needs from the server.

In ``asgi.py``, instead of ``django.core.asgi.get_asgi_application``::

    from sserelay.contrib.django.asgi import get_asgi_application

    application = get_asgi_application()

It wraps Django's handler and adds:

- **lifespan**: the listener starts with the server and, on shutdown, every stream
  is sent a jittered ``retry:`` and ended, then the listener closes (Django's own
  handler refuses the lifespan protocol);
- **disconnects on Django 4.2**, which does not watch for ``http.disconnect`` while a
  streaming response runs (5.0+ does): without this, a stream whose browser left
  would live until the process ends;
- **prompt shutdown**: when the server is asked to stop (SIGTERM, SIGINT), every stream
  is ended at once with its farewell ``retry:``, so the server's graceful shutdown
  completes without waiting out its timeout; and if the server cancels open requests
  anyway, each stream still sends its farewell.

Everything else goes to Django unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

import django
from django.core.asgi import get_asgi_application as django_asgi_application

from ...asgi import StopSignals
from ...core.hub import retry_hint
from .runtime import runtime
from .views import STATE_KEY, RequestState

__all__ = ["SserelayASGI", "get_asgi_application"]

log = logging.getLogger("sserelay.django")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]

#: Seconds a cancelled stream may take to send its farewell.
FAREWELL_TIMEOUT = 1.0
#: Django before 5.0 reads no request message once the body is complete.
_WATCH_DISCONNECT = django.VERSION < (5, 0)


class SserelayASGI:
    """Wraps a Django ASGI handler (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._signals = StopSignals(self._stop_streams)

    def _stop_streams(self) -> None:
        """The server was asked to stop: end every stream now (with a jittered ``retry:``),
        so that its graceful shutdown completes promptly."""
        relay = runtime().relay
        if relay is not None:
            relay.close_streams()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = RequestState()
        scope[STATE_KEY] = state
        watcher: asyncio.Task[None] | None = None
        if _WATCH_DISCONNECT:
            receive, watcher = _watching(receive, state)
        # Django runs in a task of its own, so that a cancellation by the server (at
        # shutdown) can end an open stream with its farewell and let Django finish the
        # response normally, instead of cutting Django's handler in the middle.
        inner = asyncio.create_task(self.app(scope, receive, send), name="sserelay-django")
        try:
            await asyncio.wait([inner])
        except asyncio.CancelledError:
            if not await _farewell(state, inner):
                inner.cancel()
                await asyncio.wait([inner])
                raise
            # The response is complete: what the cancellation asked (stop) is done.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait([watcher])
        if not inner.cancelled():
            inner.result()  # Django's own errors propagate as before

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await runtime().get()
                except Exception as exc:
                    log.exception("sserelay: the in-process relay cannot start")
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    await send({"type": "lifespan.startup.failed", "message": reason})
                    return
                self._signals.install()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._signals.uninstall()
                try:
                    await runtime().shutdown()
                except Exception as exc:
                    log.exception("sserelay: shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


def _watching(receive: Receive, state: RequestState) -> tuple[Receive, asyncio.Task[None]]:
    """A ``receive`` for Django, and a task that, once the request body is complete,
    reads on until ``http.disconnect`` and tells the stream."""
    body_done = asyncio.Event()

    async def passthrough() -> Message:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            body_done.set()
        if message["type"] == "http.disconnect":
            state.client_gone()
        return message

    async def watch() -> None:
        await body_done.wait()
        if state.client_left:
            return
        while (await receive())["type"] != "http.disconnect":
            pass
        state.client_gone()

    return passthrough, asyncio.create_task(watch(), name="sserelay-disconnect")


async def _farewell(state: RequestState, inner: asyncio.Task[None]) -> bool:
    """The server cancelled the request: if it is a stream, end it with a jittered
    ``retry:`` and give Django a moment to finish the response. True if it did."""
    sub = state.stream
    if sub is None:
        return False
    if not state.finished.is_set():
        retry_ms = 2000
        relay = runtime().relay
        if relay is not None:
            retry_ms = relay.settings.retry_ms
            relay.hub.unsubscribe(sub)
        sub.close(retry_hint(retry_ms, farewell=True))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FAREWELL_TIMEOUT):
            await asyncio.wait([inner])
    return inner.done()


def get_asgi_application() -> SserelayASGI:
    """``django.core.asgi.get_asgi_application()`` (which sets Django up), wrapped."""
    # Django's stubs type scope/receive/send more narrowly than the ASGI spec does.
    return SserelayASGI(django_asgi_application())  # type: ignore[arg-type]
