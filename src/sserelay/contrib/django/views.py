"""The in-process stream view, for Django served under ASGI (uvicorn, daphne, granian).

``path("sse/", include("sserelay.contrib.django.urls"))`` serves ``/sse/events/<channel>``
and ``/sse/events/?channel=a&channel=b`` from Django itself: seed 000's approach, done
right. Every stream of the process is a subscriber of one hub fed by one PostgreSQL
listener (:mod:`~sserelay.contrib.django.runtime`), with the relay's replay
(``Last-Event-ID``, ``?lastEventId=``, ``?history=``), heartbeats, token checks,
limits and shutdown ``retry:``; no stream opens a database connection of its own.

Under WSGI this view answers 503: a WSGI worker would be held by each stream. Run
``sserelay serve`` next to the site and set ``SSERELAY["STREAM_URL"]`` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

import django
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from ...access.limits import Lease
from ...core.hub import retry_hint
from ...core.replay import CatchUp, catch_up_request
from ...errors import HttpError
from ...http.asgi import AsgiStream
from ...http.responses import SSE_HEADERS, cors_headers, error_body, preflight_headers
from ...http.routes import StreamRoute, route
from ...relay import Relay
from .runtime import RelayRuntime, runtime

__all__ = ["DjangoStream", "RequestState", "stream"]

log = logging.getLogger("sserelay.django")

#: The ASGI scope key where :func:`~sserelay.contrib.django.asgi.get_asgi_application`
#: leaves a :class:`RequestState` for the view.
STATE_KEY = "sserelay.request"


class DjangoStream(AsgiStream):
    """One stream, as the hub sees it: the ASGI app's :class:`~sserelay.asgi.AsgiStream`
    (same buffer, same slow-client rule), read by Django's response loop through
    :meth:`chunks` instead of pumped into an ASGI ``send``."""

    @property
    def gone(self) -> bool:
        """The client left (the ASGI wrapper saw ``http.disconnect``)."""
        return self._gone

    def client_gone(self) -> None:
        self.disconnected()

    async def chunks(self) -> AsyncIterator[bytes]:
        """What the hub writes, as it comes, until the hub ends the stream or the client
        leaves."""
        async for data, _ending in self.batches():
            if data:
                yield data


class RequestState:
    """What the ASGI wrapper and the view share about one request."""

    def __init__(self) -> None:
        self.stream: DjangoStream | None = None
        self.client_left = False
        #: Set when the stream's response body has ended.
        self.finished = asyncio.Event()

    def client_gone(self) -> None:
        self.client_left = True
        if self.stream is not None:
            self.stream.client_gone()


def _error(
    status: int, reason: str, headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()
) -> HttpResponse:
    response = HttpResponse(error_body(reason), status=status, content_type="application/json")
    for name, value in headers:
        response[name] = value
    return response


def _request_headers(request: HttpRequest) -> dict[str, str]:
    out = {}
    for name in ("origin", "last-event-id", "authorization", "cookie"):
        value = request.headers.get(name)
        if value is not None:
            out[name] = value
    return out


async def stream(
    request: HttpRequest, channel: str | None = None
) -> HttpResponse | StreamingHttpResponse:
    """``GET events/<channel>`` or ``GET events/?channel=a&channel=b``: an SSE stream."""
    rt = runtime()
    if not isinstance(request, ASGIRequest):
        log.error("the sserelay stream view needs ASGI; under WSGI use `sserelay serve`")
        return _error(503, "streams need an ASGI server here; see docs/django.md")
    headers = _request_headers(request)
    origin = headers.get("origin")
    if request.method == "OPTIONS":
        settings = (await rt.get()).settings
        response = HttpResponse(status=204)
        for name, value in preflight_headers(origin, settings.allowed_origins):
            response[name] = value
        return response
    try:
        relay = await rt.get()
    except Exception as exc:
        log.exception("the in-process relay cannot start")
        return _error(503, f"relay cannot start: {str(exc).splitlines()[0] if str(exc) else exc}")
    settings = relay.settings
    path = "/events" if channel is None else "/events/" + quote(channel, safe="")
    extra = cors_headers(origin, settings.allowed_origins)
    try:
        target = route(
            request.method or "GET",
            path,
            request.META.get("QUERY_STRING", ""),
            max_channels=settings.max_channels_per_stream,
        )
        if relay.hub.closing:
            raise HttpError(503, "relay is shutting down", (("Retry-After", "1"),))
        assert isinstance(target, StreamRoute)  # /events... is always a stream route
        last_event_id = headers.get("last-event-id")
        try:
            catch_up = catch_up_request(target.channels, target.query, last_event_id)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        lease = relay.access.admit(
            target.channels, headers, target.query, request.META.get("REMOTE_ADDR")
        )
    except HttpError as exc:
        relay.count_rejected(exc.status)
        return _error(exc.status, exc.reason, [*exc.headers, *extra])
    sub = DjangoStream(
        target.channels, limit=settings.max_client_buffer, last_event_id=last_event_id
    )
    state = request.scope.get(STATE_KEY)
    if isinstance(state, RequestState):
        state.stream = sub
        if state.client_left:
            sub.client_gone()
    elif django.VERSION < (5, 0) and not rt.warned_no_disconnect:
        rt.warned_no_disconnect = True
        log.warning(
            "Django %s does not tell a streaming view that its client left: serve Django "
            "with sserelay.contrib.django.asgi.get_asgi_application() (docs/django.md)",
            django.get_version(),
        )
    body = _events(rt, relay, sub, catch_up, lease, state)
    streaming = _StreamResponse(body, lease)
    for name, value in [*SSE_HEADERS, *extra]:
        streaming[name] = value
    return streaming


class _StreamResponse(StreamingHttpResponse):
    """Gives the stream's place in the limits back when Django closes the response, also
    when the body was never iterated (an exception in middleware, a client gone before
    the first byte); releasing is idempotent, so the normal path is unaffected."""

    def __init__(self, body: AsyncIterator[bytes], lease: Lease) -> None:
        super().__init__(body)
        self._lease = lease

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._lease.release()


async def _events(
    rt: RelayRuntime,
    relay: Relay,
    sub: DjangoStream,
    catch_up: CatchUp | None,
    lease: Lease,
    state: object,
) -> AsyncIterator[bytes]:
    """The response body: subscribe, pass on what the hub writes, unsubscribe."""
    retry_ms = relay.settings.retry_ms
    sub.write(retry_hint(retry_ms))
    relay.hub.subscribe(sub, catch_up, lease=lease)
    rt.streams.opened()
    try:
        async for chunk in sub.chunks():
            yield chunk
    except asyncio.CancelledError:
        # The client left (Django 5 cancels the view) or the server gave up waiting at
        # shutdown: tell the browser when to come back, jittered as a graceful shutdown.
        relay.hub.unsubscribe(sub)
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if not sub.gone:
            yield sub.take() + retry_hint(retry_ms, farewell=True)
    finally:
        relay.hub.unsubscribe(sub)
        rt.streams.ended()
        if isinstance(state, RequestState):
            state.finished.set()
