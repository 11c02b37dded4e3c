"""The relay as an ASGI application, on the same hub as the native server.

``uvicorn sserelay.asgi:app`` serves :data:`app`, configured from the environment
when it starts; :func:`create_app` builds one to mount in Starlette or FastAPI.
Each app instance owns one :class:`~sserelay.relay.Relay` run without its TCP
server: one hub and one PostgreSQL listener per process, started on ASGI
lifespan startup (or by the first request, when the server runs no lifespan)
and stopped on lifespan shutdown.

Endpoints, errors, CORS and headers come from :mod:`~sserelay.routes` and
:mod:`~sserelay.responses`, exactly as in the native server. What ASGI changes
is the write path: the hub cannot write to a socket, so each stream buffers
what the hub hands it and one coroutine per stream sends the accumulated bytes
with ``await send()``. That costs latency and memory at large fan-out; the
native server (``sserelay serve``) stays the fast path (see ``docs/asgi.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

from . import assets
from .cli import resolve_dsn
from .config import Settings, load_settings
from .errors import SseRelayError
from .events import Event
from .hub import Hub, retry_hint
from .publishing import Publisher, Reply
from .relay import OpenStreams, Relay
from .replay import catch_up_request
from .responses import SSE_HEADERS, cors_headers, error_body, preflight_headers
from .routes import AssetRoute, Endpoint, HttpError, StreamRoute, request_timeout, route

__all__ = ["AsgiStream", "RelayApp", "app", "create_app", "route_path"]

log = logging.getLogger("sserelay.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Seconds a cancelled stream may spend sending its farewell ``retry:``.
FAREWELL_TIMEOUT = 1.0

#: The request headers read (the last of each; Cookie headers are joined), as the native
#: server keeps them.
_REQUEST_HEADERS = frozenset(
    {
        "origin",
        "last-event-id",
        "authorization",
        "cookie",
        "content-type",
        "content-length",
        "if-none-match",
        "accept-encoding",
    }
)


class AsgiStream:
    """One ASGI stream, as the hub sees it (a :class:`~sserelay.hub.Subscriber`).

    The hub's fan-out loop only appends to this stream's buffer and sets an event;
    :meth:`pump`, running in the request's coroutine, sends everything that has
    accumulated in one ``http.response.body`` message. The server does the HTTP
    framing, so the buffer holds ``event.frame``, not ``event.chunked``.

    A client counts as slow when a ``send()`` is blocked (the server is applying
    backpressure) and the bytes not yet handed to the server pass ``limit``. Bytes
    that only wait for the pump's next turn of the event loop are not the client's
    fault: a burst dispatched in one loop iteration does not drop every stream.
    """

    def __init__(
        self, channels: tuple[str, ...], *, limit: int, last_event_id: str | None = None
    ) -> None:
        self.channels = channels
        self.pending: set[str] = set()
        self.next_ping = 0.0
        self.last_event_id = last_event_id
        self.id_key: tuple[str, ...] | None = None
        self.limit = limit
        #: The response is complete, or the client left: nothing more will be sent.
        self.finished = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self._sending = False
        self._ending = False  # closed or dropped by the hub: end the response
        self._gone = False  # the client disconnected

    # -- hub.Subscriber --------------------------------------------------------------

    def deliver(self, event: Event) -> bool:
        if self._ending:
            return True
        frame = event.frame
        self._chunks.append(frame)
        self._size += len(frame)
        self._wake.set()
        # As in the native server, a caught-up client may take one event bigger than the bound.
        return not self._sending or self._size <= self.limit or self._size <= len(frame)

    def write(self, data: bytes) -> None:
        if self._ending:
            return
        self._chunks.append(data)
        self._size += len(data)
        self._wake.set()

    def close(self, farewell: bytes = b"") -> None:
        self.write(farewell)
        self._ending = True
        self._wake.set()

    def abort(self) -> None:
        """Dropped as slow: discard what is unsent and end the response.

        ASGI cannot reset a connection: the end goes out once the server's buffer
        drains, or the server notices the client is gone.
        """
        self._chunks.clear()
        self._size = 0
        self._ending = True
        self._wake.set()

    # -- the request's side ----------------------------------------------------------

    def disconnected(self) -> None:
        """The client went away: stop sending."""
        self._gone = True
        self._wake.set()

    def take(self) -> bytes:
        """Everything buffered, emptying the buffer."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data

    async def batches(self) -> AsyncIterator[tuple[bytes, bool]]:
        """(bytes, ending) as the hub writes them, until it ends the stream (the last
        batch has ``ending`` true, maybe no bytes) or the client leaves. While the consumer
        holds a batch the stream counts as sending (see the class docstring)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._gone:
                self.finished = True
                return
            data = self.take()
            ending = self._ending
            if data or ending:
                self._sending = True
                try:
                    yield data, ending
                finally:
                    self._sending = False
            if ending:
                self.finished = True
                return

    async def pump(self, send: Send) -> None:
        """Send what the hub writes until the hub ends the stream or the client leaves."""
        async for data, ending in self.batches():
            await send({"type": "http.response.body", "body": data, "more_body": not ending})


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
            if not dsn:
                # Starting the embedded server blocks for a while: keep the loop free.
                dsn = await asyncio.to_thread(resolve_dsn, None, settings.data_dir, announce=True)
            relay = Relay(settings, dsn=dsn)
            await relay.start(serve=False)
            self._relay = relay
            self._running = True
            log.info("ASGI relay started")

    async def shutdown(self) -> None:
        """Send every stream a jittered ``retry:``, end it, and stop the tasks. Lifespan shutdown.

        Waits up to ``settings.shutdown_timeout`` for the streams to send their farewell.
        """
        async with self._startup_lock():
            relay = self._relay
            if relay is None or not self._running:
                return
            self._running = False
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
                await _respond(send, 503, body, [("Content-Type", "application/json")])
                return
            relay = self.relay
        settings = relay.settings
        headers = _request_headers(scope)
        origin = headers.get("origin")
        method = scope["method"]
        if method == "OPTIONS":
            await _respond(send, 204, b"", preflight_headers(origin, settings.allowed_origins))
            return
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        try:
            target = route(
                method, route_path(scope), query, max_channels=settings.max_channels_per_stream
            )
            if relay.hub.closing:
                raise HttpError(503, "relay is shutting down", (("Retry-After", "1"),))
        except HttpError as exc:
            relay.count_rejected(exc.status)
            log.debug("%s %s", exc.status, exc.reason)
            error_headers = [("Content-Type", "application/json"), *exc.headers]
            error_headers += cors_headers(origin, settings.allowed_origins)
            await _respond(send, exc.status, error_body(exc.reason), error_headers)
            return
        if isinstance(target, Endpoint) and target.name == "publish":
            extra = cors_headers(origin, settings.allowed_origins)
            await self._publish(relay, scope, headers, query, extra, receive, send)
            return
        if isinstance(target, Endpoint):
            status, ctype, body = relay.endpoint(target.name)
            await _respond(
                send, status, body, [("Content-Type", ctype), ("Cache-Control", "no-cache")]
            )
            return
        if isinstance(target, AssetRoute):
            origins = settings.allowed_origins
            status, reply, body = assets.respond(target.name, target.query, headers, origins)
            await _respond(send, status, body, reply)
            return
        extra = cors_headers(origin, settings.allowed_origins)
        await self._stream(relay, target, headers, _client(scope), extra, receive, send)

    async def _publish(
        self,
        relay: Relay,
        scope: Scope,
        headers: dict[str, str],
        query: str,
        extra_headers: list[tuple[str, str]],
        receive: Receive,
        send: Send,
    ) -> None:
        """``POST /publish``: refuse from the head if possible, else read the body (at most
        the limit, within the head timeout) and let the publisher answer."""
        publisher = relay.publisher
        reply: Reply | None = None
        refused = publisher.precheck(headers)
        if refused is None:
            try:
                async with asyncio.timeout(relay.settings.header_timeout):
                    body = await _read_body(receive, publisher)
            except HttpError as exc:
                refused = exc
            except TimeoutError:
                refused = request_timeout(relay.settings.header_timeout)
            else:
                if body is None:
                    return  # the client left
                reply = await publisher.handle(headers, query, body, _client(scope))
        if refused is not None:
            reply = Reply(
                refused.status,
                [("Content-Type", "application/json"), *refused.headers],
                error_body(refused.reason),
            )
        assert reply is not None
        if reply.status >= 400:
            relay.count_rejected(reply.status)
        await _respond(send, reply.status, reply.body, [*reply.headers, *extra_headers])

    async def _stream(
        self,
        relay: Relay,
        target: StreamRoute,
        request_headers: dict[str, str],
        client: str | None,
        extra_headers: list[tuple[str, str]],
        receive: Receive,
        send: Send,
    ) -> None:
        settings = relay.settings
        last_event_id = request_headers.get("last-event-id")
        try:
            catch_up = catch_up_request(target.channels, target.query, last_event_id)
        except ValueError as exc:
            relay.count_rejected(400)
            await _respond(send, 400, error_body(str(exc)), [("Content-Type", "application/json")])
            return
        try:
            lease = relay.access.admit(target.channels, request_headers, target.query, client)
        except HttpError as exc:
            relay.count_rejected(exc.status)
            error_headers = [("Content-Type", "application/json"), *exc.headers, *extra_headers]
            await _respond(send, exc.status, error_body(exc.reason), error_headers)
            return
        stream = AsgiStream(
            target.channels, limit=settings.max_client_buffer, last_event_id=last_event_id
        )
        stream.write(retry_hint(settings.retry_ms))
        # No await since the `closing` check: shutdown cannot miss this stream.
        relay.hub.subscribe(stream, catch_up, lease=lease)
        self._streams.opened()
        watcher = asyncio.create_task(
            _watch_disconnect(receive, stream), name="sserelay-asgi-disconnect"
        )
        started = False
        try:
            headers = _encode_headers([*SSE_HEADERS, *extra_headers])
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            started = True
            await stream.pump(send)
        except OSError as exc:
            # ASGI servers may raise an OSError from send() once the client has gone.
            log.debug("stream send failed: %r", exc)
        except asyncio.CancelledError:
            # The server gave up waiting (uvicorn after --timeout-graceful-shutdown, which
            # sends lifespan shutdown only after every response has ended): still tell
            # the browser when to come back, with the same jitter as a graceful shutdown.
            relay.hub.unsubscribe(stream)
            farewell = stream.take() + retry_hint(settings.retry_ms, farewell=True)
            if not started or stream.finished or not await _farewell(send, farewell):
                raise
            # The response is complete, so the stream has done what the cancellation
            # asked (stop). Ending normally spares the server logging every open stream
            # as a failed request; uncancel() keeps the task's cancel count consistent.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            relay.hub.unsubscribe(stream)
            self._streams.ended()
            await _stop(watcher)


def route_path(scope: Scope) -> str:
    """The request path relative to ``root_path``, percent-encoded as the client sent it.

    :func:`~sserelay.routes.route` percent-decodes it exactly as the native server
    does, so the raw path is used when the server provides one. uvicorn's
    ``--root-path`` and Starlette's ``Mount`` put ``root_path`` (decoded) in front
    of ``raw_path``; older Starlette also removes it from ``path``.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "").rstrip("/")
    raw = scope.get("raw_path")
    if raw is not None:
        # The spec leaves the query out of raw_path; not every server did.
        text = bytes(raw).decode("latin-1").partition("?")[0]
        if not root:
            return text or "/"
        relative = _strip_root(text, root)
        if relative is not None:
            return relative
        if unquote(text) == path:
            return text or "/"  # the server left the root out of raw_path
    # No usable raw path: encode the decoded one again (a "%2F" in it reads as "/").
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return quote(path, safe="/") or "/"


def _strip_root(raw: str, root: str) -> str | None:
    """``raw`` without the leading segments that decode to ``root``, or None."""
    end = 0
    while True:
        if unquote(raw[:end]) == root:
            return raw[end:] or "/"
        end = raw.find("/", end + 1)
        if end < 0:
            return "/" if unquote(raw) == root else None


async def _farewell(send: Send, body: bytes) -> bool:
    """Send the last body message (bounded in time); True if it went out."""
    try:
        async with asyncio.timeout(FAREWELL_TIMEOUT):
            await send({"type": "http.response.body", "body": body, "more_body": False})
    except (OSError, TimeoutError) as exc:
        log.debug("farewell not sent: %r", exc)
        return False
    return True


async def _watch_disconnect(receive: Receive, stream: AsgiStream) -> None:
    """Read the request's messages until ``http.disconnect``, then tell the stream."""
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.disconnected()


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, without swallowing a cancellation of our own."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.debug("disconnect watcher failed: %r", task.exception())


def _request_headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = bytes(name).decode("latin-1").lower()
        if key == "cookie" and key in out:  # several Cookie headers: one list
            out[key] += "; " + bytes(value).decode("latin-1")
        elif key in _REQUEST_HEADERS:
            out[key] = bytes(value).decode("latin-1")
    return out


async def _read_body(receive: Receive, publisher: Publisher) -> bytes | None:
    """The request body, or None if the client disconnected; HttpError 413 past the
    publisher's limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > publisher.limit:
            raise publisher.too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _client(scope: Scope) -> str | None:
    """The client's address (for the per-client limit), if the server gives one."""
    client = scope.get("client")
    if client and client[0] is not None:
        return str(client[0])
    return None


def _encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    if status != 304:  # a 304's Content-Length would have to be the 200's (RFC 9110)
        headers = [*headers, ("Content-Length", str(len(body)))]
    await send(
        {"type": "http.response.start", "status": status, "headers": _encode_headers(headers)}
    )
    await send({"type": "http.response.body", "body": body})


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
