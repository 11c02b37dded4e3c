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
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import django
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from ...access.limits import Lease
from ...core.hub import retry_hint
from ...errors import HttpError
from ...http.asgi import route_path, strip_root
from ...http.buffered import BufferedStream
from ...http.front import Admission, Response, dispatch, refusal, start_stream
from ...http.presence import Lookup
from ...http.presence import answer as presence_answer
from ...http.request import HeaderCollector, Request
from ...http.responses import error_body
from ...relay import Relay
from .runtime import RelayRuntime, runtime

__all__ = ["DjangoStream", "RequestState", "operator", "presence", "stream"]

log = logging.getLogger("sserelay.django")

#: The ASGI scope key where :func:`~sserelay.contrib.django.asgi.get_asgi_application`
#: leaves a :class:`RequestState` for the view.
STATE_KEY = "sserelay.request"


class DjangoStream(BufferedStream):
    """One stream, as the hub sees it: the ASGI front's buffered stream (same buffer, same
    slow-client rule), read by Django's response loop through :meth:`chunks`."""

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


def django_response(answer: Response) -> HttpResponse:
    """A front's :class:`~sserelay.http.front.Response` as Django's."""
    response = HttpResponse(answer.body, status=answer.status)
    if not any(name.lower() == "content-type" for name, _ in answer.headers):
        del response["Content-Type"]  # Django's default; the other fronts send none
    for name, value in answer.headers:
        response[name] = value
    return response


def _path(request: HttpRequest, channel: str | None) -> str:
    """``/events`` or ``/events/<channel>``, the channel percent-encoded as the client sent
    it (so that, as on the other fronts, a name that is not valid UTF-8 is refused as such,
    not read with replacement characters)."""
    if channel is None:
        return "/events"
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and scope.get("raw_path") is not None:
        # The matched prefix (".../events/"), decoded, is what precedes the channel.
        prefix = request.path_info[: len(request.path_info) - len(channel)].rstrip("/")
        relative = strip_root(route_path(scope), prefix)
        if relative is not None and relative != "/":
            return "/events" + relative
    return "/events/" + quote(channel, safe="")


def front_request(request: HttpRequest, path: str, max_header_bytes: int) -> Request:
    """``request`` as the fronts share it, for ``path`` (as the relay would see it); its
    headers through the one extraction (HttpError 431 past ``max_header_bytes``)."""
    collector = HeaderCollector(max_header_bytes)
    for name, value in request.headers.items():
        collector.add(name, value)
    return Request(
        request.method or "GET",
        path,
        request.META.get("QUERY_STRING", ""),
        collector.finish(),
        request.META.get("REMOTE_ADDR"),
    )


async def stream(
    request: HttpRequest, channel: str | None = None
) -> HttpResponse | StreamingHttpResponse:
    """``GET events/<channel>`` or ``GET events/?channel=a&channel=b``: an SSE stream."""
    return await _answer(request, lambda: _path(request, channel))


async def operator(
    request: HttpRequest, stream: bool = False
) -> HttpResponse | StreamingHttpResponse:
    """``GET admin`` (the operator's page) or ``GET admin/stream`` (its updates), when
    ``SSERELAY["ADMIN"]`` is on (docs/admin.md)."""
    return await _answer(request, lambda: "/admin/stream" if stream else "/admin")


async def presence(request: HttpRequest, channel: str) -> HttpResponse:
    """``GET presence/<channel>``: who is subscribed to a presence channel, across the
    relays (docs/presence.md), with the same token rules as its stream."""
    answer = await _answer(request, lambda: "/presence" + _path(request, channel)[len("/events") :])
    assert isinstance(answer, HttpResponse)  # a lookup is never a stream
    return answer


async def _answer(
    request: HttpRequest, path: Callable[[], str]
) -> HttpResponse | StreamingHttpResponse:
    """What every request of the view gets, through the fronts' one path."""
    rt = runtime()
    if not isinstance(request, ASGIRequest):
        log.error("the sserelay stream view needs ASGI; under WSGI use `sserelay serve`")
        body = error_body("streams need an ASGI server here (the README's 'Django' section)")
        return HttpResponse(body, status=503, content_type="application/json")
    try:
        relay = await rt.get()
    except Exception as exc:
        log.exception("the in-process relay cannot start")
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        body = error_body(f"relay cannot start: {reason}")
        return HttpResponse(body, status=503, content_type="application/json")
    try:
        head = front_request(request, path(), relay.settings.max_header_bytes)
    except HttpError as exc:  # a head over max_header_bytes: 431, as on the other fronts
        return django_response(refusal(relay, exc, None))
    outcome = dispatch(relay, head)
    if isinstance(outcome, Response):
        return django_response(outcome)
    if isinstance(outcome, Lookup):
        status, headers, body = await presence_answer(relay, outcome)
        return django_response(Response(status, headers, body))
    assert isinstance(outcome, Admission)  # a stream route: never POST /publish
    sub = DjangoStream(outcome.channels, limit=relay.settings.max_client_buffer)
    state = request.scope.get(STATE_KEY)
    if isinstance(state, RequestState):
        state.stream = sub
        if state.client_left:
            sub.client_gone()
    elif django.VERSION < (5, 0) and not rt.warned_no_disconnect:
        rt.warned_no_disconnect = True
        log.warning(
            "Django %s does not tell a streaming view that its client left: serve Django "
            "with sserelay.contrib.django.asgi.get_asgi_application() (README: 'Django')",
            django.get_version(),
        )
    # Subscribed now, with no await since dispatch: shutdown cannot miss this stream.
    start_stream(relay, sub, outcome)
    streaming = _StreamResponse(
        _events(rt, relay, sub, state), outcome.lease, lambda: relay.unsubscribe(sub)
    )
    for name, value in outcome.headers:
        streaming[name] = value
    return streaming


class _StreamResponse(StreamingHttpResponse):
    """Ends the stream (and gives its place in the limits back) when Django closes the
    response, also when the body was never iterated (an exception in middleware, a
    client gone before the first byte); both are idempotent, so the normal path is
    unaffected."""

    def __init__(self, body: AsyncIterator[bytes], lease: Lease, end: Callable[[], None]) -> None:
        super().__init__(body)
        self._lease = lease
        self._end = end

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._end()
            self._lease.release()


async def _events(
    rt: RelayRuntime, relay: Relay, sub: DjangoStream, state: object
) -> AsyncIterator[bytes]:
    """The response body: pass on what the hub writes, unsubscribe at the end."""
    retry_ms = relay.settings.retry_ms
    rt.streams.opened()
    try:
        async for chunk in sub.chunks():
            yield chunk
    except asyncio.CancelledError:
        # The client left (Django 5 cancels the view) or the server gave up waiting at
        # shutdown: tell the browser when to come back, jittered as a graceful shutdown.
        relay.unsubscribe(sub)
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if not sub.gone:
            yield sub.take() + retry_hint(retry_ms, farewell=True)
    finally:
        relay.unsubscribe(sub)
        rt.streams.ended()
        if isinstance(state, RequestState):
            state.finished.set()
