"""The native HTTP front: an asyncio ``Protocol`` per connection, parsed by httptools.

Each connection reads one request head (bounded in size and time), then either
answers and closes, or becomes an SSE stream: it registers itself with the hub
as a :class:`~sserelay.hub.Subscriber` and from then on is written to directly
by the hub's fan-out loop, with each event's bytes already chunk-framed.

``POST /publish`` is the one request with a body: it is refused from its head when it
can be (no key, too large, wrong type), read up to ``max_publish_bytes`` within the
same deadline as the head, and answered by :class:`~sserelay.publishing.Publisher`
in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import httptools

from . import assets, sse
from .events import Event
from .hub import retry_hint
from .replay import catch_up_request
from .responses import SSE_HEADERS, cors_headers, error_body, head, preflight_headers
from .routes import AssetRoute, Endpoint, HttpError, StreamRoute, request_timeout, route

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("sserelay.server")

#: The request headers kept (the last of each; Cookie lines are joined).
_KEPT_HEADERS = frozenset(
    {
        "origin",
        "last-event-id",
        "access-control-request-method",
        "authorization",
        "cookie",
        "content-type",
        "content-length",
        "expect",
        "if-none-match",
        "accept-encoding",
    }
)


class HttpConnection(asyncio.Protocol):
    """One client connection: a request, then a response or a stream."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.settings = relay.settings
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.method = b""
        self.headers: dict[str, str] = {}
        self.client: str | None = None  # the peer's address, for the per-client limit
        self.received = 0
        self.head_bytes = 0  # request target and header lines, as parsed
        self.body: bytearray | None = None  # POST /publish only: the body read so far
        self.done = False  # a response was started; ignore further input
        self.timer: asyncio.TimerHandle | None = None
        # Subscriber state (see hub.Subscriber)
        self.channels: tuple[str, ...] = ()
        self.pending: set[str] = set()
        self.next_ping = 0.0
        self.chunked = True
        self.streaming = False
        self.id_key: tuple[str, ...] | None = None
        self.max_buffer = relay.settings.max_client_buffer
        self._write: Callable[[bytes], object] = _closed
        self._buffered: Callable[[], int] = _nothing_buffered

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        self._write = self.transport.write
        self._buffered = self.transport.get_write_buffer_size
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client = str(peer[0])
        self.relay.connections.add(self)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.settings.header_timeout, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return  # a stream's client has nothing more to say; ignore it
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # Upgrade requests are answered as plain HTTP (on_message_complete ran)
        except httptools.HttpParserError as exc:
            if self.done:
                return  # junk pipelined after a complete request: ignored, like any later input
            reason = str(exc).split(":")[0] or "malformed request"
            self.fail(HttpError(400, f"malformed HTTP request ({reason})"))
            return
        if not self.done and self.body is None and self.received > self.settings.max_header_bytes:
            # Without a body to read (see on_headers_complete) every byte is head.
            self.fail(HttpError(431, f"request head over {self.settings.max_header_bytes} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.relay.connection_closed(self)
        if self.streaming:
            self.streaming = False
            self.relay.hub.unsubscribe(self)

    # -- httptools callbacks ---------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        key = name.decode("latin-1").lower()
        if key == "cookie" and key in self.headers:  # several Cookie lines: one list
            self.headers[key] += "; " + value.decode("latin-1")
        elif key in _KEPT_HEADERS:
            self.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()
        # data_received's count misses a head that arrives whole in one read: it is
        # parsed (and would be handled) before that check runs.
        if self.head_bytes > self.settings.max_header_bytes:
            self.fail(HttpError(431, f"request head over {self.settings.max_header_bytes} bytes"))
            return
        if self.method == b"POST" and self._path() == b"/publish":
            publisher = self.relay.publisher
            refused = publisher.precheck(self.headers)
            if refused is not None:
                self.fail(refused)
                return
            self.body = bytearray()
            if self.headers.get("expect", "").lower() == "100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.body is None or self.done:
            return  # a body on another request: counted as head by data_received
        self.body += body
        if len(self.body) > self.relay.publisher.limit:
            self.fail(self.relay.publisher.too_large())

    def on_message_complete(self) -> None:
        self._cancel_timer()
        if not self.done:
            self.handle()

    # -- request handling ------------------------------------------------------------

    def handle(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            # httptools accepts HTTP/0.9 (no version) and "HTTP/2.0" in text: neither
            # client could read the chunked HTTP/1.1 stream they would otherwise get.
            self.fail(HttpError(400, f"HTTP/{version} is not supported; use HTTP/1.1"))
            return
        self.chunked = version != "1.0"
        origin = self.headers.get("origin")
        if method == "OPTIONS":
            headers = preflight_headers(origin, self.settings.allowed_origins)
            self.respond(204, b"", headers)
            return
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self.fail(HttpError(400, "malformed request target"))
            return
        path = url.path.decode("latin-1")
        query = (url.query or b"").decode("latin-1")
        try:
            target = route(method, path, query, max_channels=self.settings.max_channels_per_stream)
            if self.relay.hub.closing:
                raise HttpError(503, "relay is shutting down", (("Retry-After", "1"),))
        except HttpError as exc:
            self.fail(exc)
            return
        if isinstance(target, Endpoint) and target.name == "publish":
            self.done = True  # read no more: the answer comes from the task
            self.relay.publisher.spawn(
                self.publish(query, cors_headers(origin, self.settings.allowed_origins))
            )
        elif isinstance(target, Endpoint):
            status, ctype, body = self.relay.endpoint(target.name)
            self.respond(status, body, [("Content-Type", ctype), ("Cache-Control", "no-cache")])
        elif isinstance(target, AssetRoute):
            allowed = self.settings.allowed_origins
            status, headers, body = assets.respond(target.name, target.query, self.headers, allowed)
            self.respond(status, body, headers)
        else:
            self.start_stream(target, cors_headers(origin, self.settings.allowed_origins))

    def start_stream(self, target: StreamRoute, extra: list[tuple[str, str]]) -> None:
        try:
            catch_up = catch_up_request(
                target.channels, target.query, self.headers.get("last-event-id")
            )
        except ValueError as exc:
            self.fail(HttpError(400, str(exc)))
            return
        try:
            lease = self.relay.access.admit(
                target.channels, self.headers, target.query, self.client
            )
        except HttpError as exc:
            self.fail(exc)
            return
        self.done = True
        self.channels = target.channels
        headers = [*SSE_HEADERS, *extra]
        if self.chunked:
            headers.append(("Transfer-Encoding", "chunked"))
            version = "1.1"
        else:
            headers.append(("Connection", "close"))
            version = "1.0"
        self.transport.write(head(200, headers, version))
        self.write(retry_hint(self.settings.retry_ms))
        self.streaming = True
        self.relay.hub.subscribe(self, catch_up, lease=lease)

    async def publish(self, query: str, extra: list[tuple[str, str]]) -> None:
        body = bytes(self.body or b"")
        reply = await self.relay.publisher.handle(self.headers, query, body, self.client)
        if reply.status >= 400:
            self.relay.count_rejected(reply.status)
        if not self.transport.is_closing():
            self.respond(reply.status, reply.body, [*reply.headers, *extra])

    def respond(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.done = True
        if status != 304:  # a 304's Content-Length would have to be the 200's (RFC 9110)
            headers = [*headers, ("Content-Length", str(len(body)))]
        headers = [*headers, ("Connection", "close")]
        if self.method == b"HEAD":
            body = b""  # a response to HEAD has no content (RFC 9110, 9.3.2)
        self.transport.write(head(status, headers) + body)
        self.transport.close()

    def fail(self, error: HttpError) -> None:
        self.relay.count_rejected(error.status)
        log.debug("%s %s", error.status, error.reason)
        headers = [("Content-Type", "application/json"), *error.headers]
        headers += cors_headers(self.headers.get("origin"), self.settings.allowed_origins)
        self.respond(error.status, error_body(error.reason), headers)

    def _path(self) -> bytes:
        try:
            return httptools.parse_url(self.url).path or b""
        except httptools.HttpParserInvalidURLError:
            return b""  # answered 400 when the request is complete

    def _head_timeout(self) -> None:
        self.timer = None
        if not self.done:
            self.fail(request_timeout(self.settings.header_timeout))

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- hub.Subscriber --------------------------------------------------------------

    def deliver(self, event: Event) -> bool:
        # The hot path: bound methods and a cached bound, no attribute chains (see bench/).
        frame = event.chunked if self.chunked else event.frame
        self._write(frame)
        size = self._buffered()
        # Usually the kernel took it all (0). A client that had caught up may take one
        # event bigger than the bound.
        return not size or size <= self.max_buffer or size <= len(frame)

    def write(self, data: bytes) -> None:
        self.transport.write(sse.chunk(data) if self.chunked else data)

    def close(self, farewell: bytes = b"") -> None:
        self.streaming = False
        if farewell:
            self.write(farewell)
        if self.chunked:
            self.transport.write(sse.LAST_CHUNK)
        self.transport.close()

    def abort(self) -> None:
        self.streaming = False
        self.transport.abort()


def _closed(data: bytes) -> None:
    """``_write`` before the connection is made."""


def _nothing_buffered() -> int:
    return 0


def protocol_factory(relay: Relay) -> Callable[[], Any]:
    return lambda: HttpConnection(relay)
