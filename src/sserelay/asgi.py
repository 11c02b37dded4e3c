"""The relay as an ASGI application: ``uvicorn sserelay.asgi:app``.

:data:`app` is configured from the environment when it starts; :func:`create_app`
builds one to mount in Starlette or FastAPI. Each app owns one
:class:`~sserelay.relay.Relay` run without its TCP server: one hub and one bus listener
per process, started on ASGI lifespan startup (or by the first request, when the server
runs no lifespan) and stopped on lifespan shutdown. Requests are answered by
:mod:`sserelay.http.asgi`, with the same answers as the native server.

Shutdown: ASGI servers send lifespan shutdown only after every response has ended, and
a stream never ends on its own. So when the server is asked to stop (SIGTERM or SIGINT
in its main thread, whose handler the app chains to while it runs), the app ends every
stream at once with a jittered ``retry:``: the server's graceful shutdown then
completes promptly, without cancelling anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any

from .bus.postgres.embedded import dsn_or_embedded
from .config import Settings, load_settings
from .core.hub import Hub
from .errors import SseRelayError
from .http.asgi import Receive, Scope, Send, handle, respond
from .http.responses import error_body
from .relay import OpenStreams, Relay

__all__ = ["RelayApp", "StopSignals", "app", "create_app"]

log = logging.getLogger("sserelay.asgi")


class StopSignals:
    """While installed, SIGTERM and SIGINT also call ``on_stop`` (in the event loop)
    before the handler that was there (the server's). Only where a Python handler is
    installed, and only from the main thread: otherwise it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, on_stop: Any) -> None:
        self.on_stop = on_stop
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue  # the default action or ignored: not a server's graceful stop

            def handler(sig: int, frame: Any, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.on_stop)
                previous(sig, frame)

            self._previous[signum] = (previous, handler)
            signal.signal(signum, handler)

    def uninstall(self) -> None:
        for signum, (previous, handler) in self._previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, previous)
        self._previous.clear()


class RelayApp:
    """The relay as an ASGI 3 application: one hub and one listener per instance.

    ``settings=None`` reads the environment (:func:`~sserelay.config.load_settings`)
    when the app starts; a ``dsn`` of None falls back to ``settings.dsn``, then to
    the embedded PostgreSQL. Use one instance per process.
    """

    def __init__(self, settings: Settings | None = None, *, dsn: str | None = None) -> None:
        self._settings = settings
        self._dsn = dsn
        self._relay: Relay | None = None
        self._running = False
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._streams = OpenStreams()
        self._signals = StopSignals(self._stop_streams)

    # -- state -----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True between startup and shutdown."""
        return self._running

    @property
    def relay(self) -> Relay:
        """The running relay (hub, listener, metrics). Raises before the first start."""
        if self._relay is None:
            raise SseRelayError("the ASGI app has not started yet")
        return self._relay

    @property
    def hub(self) -> Hub:
        """The running relay's hub (who is subscribed to what)."""
        return self.relay.hub

    # -- lifecycle -------------------------------------------------------------------

    def _startup_lock(self) -> asyncio.Lock:
        # One lock per event loop: a module-level app may be served by several loops in turn.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def startup(self) -> None:
        """Start the hub and the listener; does nothing if they run. Lifespan startup."""
        async with self._startup_lock():
            if self._running:
                return
            settings = self._settings if self._settings is not None else load_settings()
            dsn = self._dsn or settings.dsn
            if not dsn and settings.bus == "postgres":
                # Starting the embedded server blocks for a while: keep the loop free.
                dsn = await asyncio.to_thread(
                    dsn_or_embedded, None, settings.data_dir, announce=True
                )
            relay = Relay(settings, dsn=dsn)
            await relay.start(serve=False)
            self._relay = relay
            self._running = True
            self._signals.install()
            log.info("ASGI relay started")

    def _stop_streams(self) -> None:
        """The server was asked to stop: end every stream now, with a jittered ``retry:``."""
        relay = self._relay
        if relay is not None and self._running:
            closed = relay.close_streams()
            if closed:
                log.info("stopping: ended %d streams", closed)

    async def shutdown(self) -> None:
        """Send every stream a jittered ``retry:``, end it, and stop the tasks. Lifespan shutdown.

        Waits up to ``settings.shutdown_timeout`` for the streams to send their farewell.
        """
        async with self._startup_lock():
            relay = self._relay
            if relay is None or not self._running:
                return
            self._running = False
            self._signals.uninstall()
            await relay.shutdown_after_streams(self._streams)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        """Start on entry, shut down on exit: ``Starlette(lifespan=relay_app.lifespan)``.

        A framework does not pass lifespan events to apps mounted in it; without this
        the relay starts on its first request and is never shut down gracefully.
        """
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})  # the server answers 403
        else:
            raise ValueError(f"sserelay cannot serve ASGI scope type {kind!r}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    _log_failure("startup", exc)
                    await send({"type": "lifespan.startup.failed", "message": _one_line(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    _log_failure("shutdown", exc)
                    await send({"type": "lifespan.shutdown.failed", "message": _one_line(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self._relay
        if relay is None:
            # No lifespan from the server (or mounted in a framework): start on first use.
            try:
                await self.startup()
            except Exception as exc:
                _log_failure("startup", exc)
                body = error_body(f"relay cannot start: {_one_line(exc)}")
                await respond(send, 503, body, [("Content-Type", "application/json")])
                return
            relay = self.relay
        await handle(relay, self._streams, scope, receive, send)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _log_failure(what: str, exc: Exception) -> None:
    if isinstance(exc, SseRelayError):
        log.error("%s failed: %s", what, exc)  # a configuration problem: the message says it
    else:
        log.exception("%s failed", what)


def create_app(settings: Settings | None = None, dsn: str | None = None) -> RelayApp:
    """A new relay app. ``settings=None`` reads the environment now (errors surface here)."""
    return RelayApp(settings if settings is not None else load_settings(), dsn=dsn)


#: ``uvicorn sserelay.asgi:app``: configured from the environment when it starts, so
#: importing this module connects to nothing and reads nothing.
app = RelayApp()
