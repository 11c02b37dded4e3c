"""The relay over ASGI: one request, from its scope to its response.

Endpoints, errors, CORS and headers come from :func:`sserelay.http.front.dispatch`,
exactly as in the native server. What ASGI changes is the write path: the hub cannot
write to a socket, so each stream is a :class:`~sserelay.http.buffered.BufferedStream`
and the request's coroutine sends what accumulated with ``await send()``. That costs
latency and memory at large fan-out; the native server (``sserelay serve``) stays the
fast path (see ``docs/asgi.md``). The application object, its lifespan and its relay
are in :mod:`sserelay.asgi`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from ..core.hub import retry_hint
from ..errors import HttpError
from . import presence
from .buffered import BufferedStream
from .front import PUBLISH, Admission, Response, dispatch, refusal, start_stream
from .presence import Lookup
from .publish import Publisher, Reply
from .request import HeaderCollector, Request
from .responses import cors_headers
from .routes import request_timeout

if TYPE_CHECKING:
    from ..relay import OpenStreams, Relay

log = logging.getLogger("sserelay.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Seconds a cancelled stream may spend sending its farewell ``retry:``.
FAREWELL_TIMEOUT = 1.0


def request_from_scope(scope: Scope, max_header_bytes: int) -> Request:
    """The request's head as the fronts share it; HttpError 431 if its headers are over
    ``max_header_bytes``."""
    collector = HeaderCollector(max_header_bytes)
    for name, value in scope.get("headers", ()):
        collector.add(bytes(name), bytes(value))
    return Request(
        scope["method"],
        route_path(scope),
        bytes(scope.get("query_string", b"")).decode("latin-1"),
        collector.finish(),
        client_of(scope),
        str(scope.get("http_version", "1.1")),
    )


async def handle(
    relay: Relay, streams: OpenStreams, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer one HTTP request."""
    try:
        request = request_from_scope(scope, relay.settings.max_header_bytes)
    except HttpError as exc:
        answer = refusal(relay, exc, None)
        await respond(send, answer.status, answer.body, answer.headers)
        return
    outcome = dispatch(relay, request)
    if isinstance(outcome, Response):
        await respond(send, outcome.status, outcome.body, outcome.headers)
    elif outcome is PUBLISH:
        await publish(relay, request, receive, send)
    elif isinstance(outcome, Lookup):
        status, headers, body = await presence.answer(relay, outcome)
        await respond(send, status, body, headers)
    elif isinstance(outcome, Admission):
        await stream(relay, streams, outcome, receive, send)


async def publish(relay: Relay, request: Request, receive: Receive, send: Send) -> None:
    """``POST /publish``: refuse from the head if possible, else read the body (at most
    the limit, within the head timeout) and let the publisher answer."""
    publisher = relay.publisher
    reply: Reply | None = None
    refused = publisher.precheck(request.headers, request.path)
    if refused is None:
        try:
            async with asyncio.timeout(relay.settings.header_timeout):
                body = await read_body(receive, publisher)
        except HttpError as exc:
            refused = exc
        except TimeoutError:
            refused = request_timeout(relay.settings.header_timeout)
        else:
            if body is None:
                return  # the client left
            reply = await publisher.handle(
                request.headers, request.query, body, request.client, request.path
            )
    if refused is not None:
        answer = refusal(relay, refused, request.origin)
        await respond(send, answer.status, answer.body, answer.headers)
        return
    assert reply is not None
    if reply.status >= 400:
        relay.count_rejected(reply.status)
    extra = cors_headers(request.origin, relay.settings.allowed_origins)
    await respond(send, reply.status, reply.body, [*reply.headers, *extra])


async def stream(
    relay: Relay, streams: OpenStreams, admission: Admission, receive: Receive, send: Send
) -> None:
    """An admitted stream: send what the hub writes until it ends or the client leaves."""
    sub = BufferedStream(admission.channels, limit=relay.settings.max_client_buffer)
    # No await since dispatch: shutdown cannot miss this stream.
    start_stream(relay, sub, admission)
    streams.opened()
    watcher = asyncio.create_task(watch_disconnect(receive, sub), name="sserelay-disconnect")
    started = False
    try:
        headers = encode_headers(admission.headers)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        started = True
        await sub.pump(send)
    except OSError as exc:
        # ASGI servers may raise an OSError from send() once the client has gone.
        log.debug("stream send failed: %r", exc)
    except asyncio.CancelledError:
        # The server gave up waiting (uvicorn after --timeout-graceful-shutdown): still
        # tell the browser when to come back, with the same jitter as a graceful shutdown.
        relay.unsubscribe(sub)
        farewell = sub.take() + retry_hint(relay.settings.retry_ms, farewell=True)
        if not started or sub.finished or not await send_farewell(send, farewell):
            raise
        # The response is complete, so the stream has done what the cancellation asked
        # (stop): ending normally spares the server logging every open stream as a
        # failed request; uncancel() keeps the task's cancel count consistent.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    finally:
        relay.unsubscribe(sub)
        streams.ended()
        watcher.cancel()
        await asyncio.wait([watcher])


def route_path(scope: Scope) -> str:
    """The request path relative to ``root_path``, percent-encoded as the client sent it.

    :func:`~sserelay.http.routes.route` percent-decodes it exactly as the native server
    does, so the raw path is used when the server provides one. uvicorn's ``--root-path``
    and Starlette's ``Mount`` put ``root_path`` (decoded) in front of ``raw_path``; older
    Starlette also removes it from ``path``.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "").rstrip("/")
    raw = scope.get("raw_path")
    if raw is not None:
        # The spec leaves the query out of raw_path; not every server did.
        text = bytes(raw).decode("latin-1").partition("?")[0]
        if not root:
            return text or "/"
        relative = strip_root(text, root)
        if relative is not None:
            return relative
        if unquote(text) == path:
            return text or "/"  # the server left the root out of raw_path
    # No usable raw path: encode the decoded one again (a "%2F" in it reads as "/").
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return quote(path, safe="/") or "/"


def strip_root(raw: str, root: str) -> str | None:
    """``raw`` without the leading segments that decode to ``root``, or None."""
    end = 0
    while True:
        if unquote(raw[:end]) == root:
            return raw[end:] or "/"
        end = raw.find("/", end + 1)
        if end < 0:
            return "/" if unquote(raw) == root else None


async def send_farewell(send: Send, body: bytes) -> bool:
    """Send the last body message (bounded in time); True if it went out."""
    try:
        async with asyncio.timeout(FAREWELL_TIMEOUT):
            await send({"type": "http.response.body", "body": body, "more_body": False})
    except (OSError, TimeoutError) as exc:
        log.debug("farewell not sent: %r", exc)
        return False
    return True


async def watch_disconnect(receive: Receive, sub: BufferedStream) -> None:
    """Read the request's messages until ``http.disconnect``, then tell the stream."""
    with contextlib.suppress(OSError):
        while (await receive())["type"] != "http.disconnect":
            pass
    sub.disconnected()


async def read_body(receive: Receive, publisher: Publisher) -> bytes | None:
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


def client_of(scope: Scope) -> str | None:
    """The client's address (for the per-client limits), if the server gives one."""
    client = scope.get("client")
    if client and client[0] is not None:
        return str(client[0])
    return None


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    if status != 304:
        headers = [*headers, ("Content-Length", str(len(body)))]
    await send(
        {"type": "http.response.start", "status": status, "headers": encode_headers(headers)}
    )
    await send({"type": "http.response.body", "body": body})
