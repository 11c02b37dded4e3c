"""The native HTTP front: an asyncio ``Protocol`` per connection, parsed by httptools.

Each connection reads one request head (bounded in size and time), then either answers
and closes, or becomes an SSE stream: it registers itself as a
:class:`~sserelay.core.protocols.Subscriber` and from then on is written to directly by
the hub's fan-out loop, with each event's bytes already chunk-framed. What a request
gets is decided by :func:`sserelay.http.front.dispatch`, as on the other fronts.

``POST /publish`` is the one request with a body: it is refused from its head when it can
be (no key, too large, wrong type), read up to ``max_publish_bytes`` within the same
deadline as the head, and answered by :class:`~sserelay.http.publish.Publisher` in a
job of its own. Trailers after a chunked body count toward ``max_header_bytes`` and are
never kept (:class:`~sserelay.http.request.HeaderCollector`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import httptools

from ..errors import HttpError
from ..wire import sse
from ..wire.envelope import Event
from . import presence
from .front import PUBLISH, Admission, Response, dispatch, refusal, start_stream
from .presence import Lookup
from .request import HeaderCollector, Request, head_too_large
from .responses import cors_headers, head
from .routes import WITH_BODY, request_timeout

if TYPE_CHECKING:
    from ..relay import Relay

log = logging.getLogger("sserelay.server")


class HttpConnection(asyncio.Protocol):
    """One client connection: a request, then a response or a stream."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.settings = relay.settings
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.head = HeaderCollector(relay.settings.max_header_bytes)
        self.headers: dict[str, str] = {}
        self.client: str | None = None  # the peer's address, for the per-client limit
        self.received = 0
        self.body: bytearray | None = None  # POST /publish only: the body read so far
        self.done = False  # a response was started; ignore further input
        self.timer: asyncio.TimerHandle | None = None
        self.method = b""
        # Subscriber state (see core.protocols.Subscriber)
        self.channels: tuple[str, ...] = ()
        self.pending: set[str] = set()
        self.next_ping = 0.0
        self.chunked = True
        self.streaming = False
        self.id_key: tuple[str, ...] | None = None
        self.max_buffer = relay.settings.max_client_buffer
        self._write: Callable[[bytes], object] = _closed
        self._buffered: Callable[[], int] = _nothing_buffered
        self._resumed: asyncio.Event | None = None  # set while the transport takes writes

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
            if isinstance(exc.__context__, HttpError) and not self.done:
                self.fail(exc.__context__)  # from a callback: the head or trailers too large
                return
            if self.done:
                return  # junk pipelined after a complete request: ignored, like any later input
            reason = str(exc).split(":")[0] or "malformed request"
            self.fail(HttpError(400, f"malformed HTTP request ({reason})"))
            return
        limit = self.settings.max_header_bytes
        if not self.done and self.body is None and self.received > limit:
            # Without a body to read (see on_headers_complete) every byte is head.
            self.fail(head_too_large(limit))

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.relay.connection_closed(self)
        if self._resumed is not None:
            self._resumed.set()  # a catch-up waiting for the client: the client is gone
        if self.streaming:
            self.streaming = False
            self.relay.unsubscribe(self)

    def pause_writing(self) -> None:
        if self._resumed is None:
            self._resumed = asyncio.Event()
        self._resumed.clear()

    def resume_writing(self) -> None:
        if self._resumed is not None:
            self._resumed.set()

    # -- httptools callbacks ---------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head.count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.add(name, value)  # a trailer once the head is complete: counted, not kept

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()
        self.headers = self.head.finish()
        path = self._path().decode("latin-1")
        if self.method == b"POST" and path in WITH_BODY:
            refused = self.relay.publisher.precheck(self.headers, path)
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
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            # httptools accepts HTTP/0.9 (no version) and "HTTP/2.0" in text: neither
            # client could read the chunked HTTP/1.1 stream they would otherwise get.
            self.fail(HttpError(400, f"HTTP/{version} is not supported; use HTTP/1.1"))
            return
        self.chunked = version != "1.0"
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self.fail(HttpError(400, "malformed request target"))
            return
        request = Request(
            self.method.decode("latin-1"),
            url.path.decode("latin-1"),
            (url.query or b"").decode("latin-1"),
            self.headers,
            self.client,
            version,
        )
        outcome = dispatch(self.relay, request)
        if isinstance(outcome, Response):
            self.respond(outcome.status, outcome.body, outcome.headers)
        elif isinstance(outcome, Admission):
            self.start(outcome)
        elif outcome is PUBLISH:
            self.done = True  # read no more: the answer comes from the job
            extra = cors_headers(request.origin, self.settings.allowed_origins)
            self.relay.tasks.spawn(self.publish(request, extra), "publish")
        elif isinstance(outcome, Lookup):
            self.done = True
            self.relay.tasks.spawn(self.lookup(outcome), "presence")

    def start(self, admission: Admission) -> None:
        self.done = True
        self.channels = admission.channels
        headers = list(admission.headers)
        if self.chunked:
            headers.append(("Transfer-Encoding", "chunked"))
            version = "1.1"
        else:
            headers.append(("Connection", "close"))
            version = "1.0"
        self.transport.write(head(200, headers, version))
        self.streaming = True
        start_stream(self.relay, self, admission)

    async def publish(self, request: Request, extra: list[tuple[str, str]]) -> None:
        body = bytes(self.body or b"")
        reply = await self.relay.publisher.handle(
            request.headers, request.query, body, request.client, request.path
        )
        if reply.status >= 400:
            self.relay.count_rejected(reply.status)
        if not self.transport.is_closing():
            self.respond(reply.status, reply.body, [*reply.headers, *extra])

    async def lookup(self, outcome: Lookup) -> None:
        status, headers, body = await presence.answer(self.relay, outcome)
        if not self.transport.is_closing():
            self.respond(status, body, headers)

    def respond(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.done = True
        if status != 304:
            headers = [*headers, ("Content-Length", str(len(body)))]
        headers.append(("Connection", "close"))
        if self.method == b"HEAD":
            body = b""  # a response to HEAD has no content (RFC 9110, 9.3.2)
        self.transport.write(head(status, headers) + body)
        self.transport.close()

    def fail(self, error: HttpError) -> None:
        answer = refusal(self.relay, error, self.headers.get("origin"))
        self.respond(answer.status, answer.body, answer.headers)

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

    # -- core.protocols.Subscriber ---------------------------------------------------

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

    def backlog(self) -> int:
        return self._buffered()

    async def drained(self) -> None:
        if self._resumed is not None and not self.transport.is_closing():
            await self._resumed.wait()


def _closed(data: bytes) -> None:
    """``_write`` before the connection is made."""


def _nothing_buffered() -> int:
    return 0


def protocol_factory(relay: Relay) -> Callable[[], Any]:
    return lambda: HttpConnection(relay)
