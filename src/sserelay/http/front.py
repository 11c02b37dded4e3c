"""The one path every HTTP front takes: from a request's head to an answer or a stream.

The native server, the ASGI app and the Django view differ only in how bytes move;
what a request gets is decided here, once: the route, the shutting-down check, the
catch-up request, the token and the limits for a stream, and the exact answer to every
refusal (status, one-line JSON reason, ``Retry-After``/``WWW-Authenticate``, CORS
headers so a page can read it). :func:`dispatch` returns one of

- a :class:`Response` to send as it is (an error, ``/healthz``, ``/metrics``, a
  preflight, the browser client's files);
- an :class:`Admission`: a stream that may start (its response headers, channels,
  catch-up request and lease), which the front opens with :func:`start_stream`;
- :data:`PUBLISH`: a ``POST /publish`` or ``POST /revoke`` whose body the front reads
  next (see :mod:`sserelay.http.publish` and :mod:`sserelay.http.revoke`);
- a :class:`~sserelay.http.presence.Lookup`: an authorised ``GET /presence/{channel}``,
  whose answer the front awaits (:func:`sserelay.http.presence.answer`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..access.limits import Lease
from ..core.catchup import CatchUp, catch_up_request
from ..core.hub import retry_hint
from ..core.protocols import Subscriber
from ..errors import HttpError
from . import assets
from .presence import Lookup, check
from .request import Request, client_address
from .responses import SSE_HEADERS, cors_headers, error_body, preflight_headers
from .routes import AdminRoute, AssetRoute, Endpoint, PresenceRoute, StreamRoute, route

if TYPE_CHECKING:
    from ..relay import Relay

log = logging.getLogger("sserelay.http")

Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer (the front adds ``Content-Length`` and closes)."""

    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class Admission:
    """A stream that may start."""

    channels: tuple[str, ...]
    catch_up: CatchUp | None
    lease: Lease
    #: The response head's headers (SSE and CORS; the front adds its framing).
    headers: Headers


class _Publish:
    def __repr__(self) -> str:
        return "PUBLISH"


#: ``POST /publish``: the front reads the body, then calls the relay's publisher.
PUBLISH: Final = _Publish()

Outcome = Response | Admission | _Publish | Lookup


def refusal(relay: Relay, error: HttpError, origin: str | None) -> Response:
    """The answer to a refused request, the same on every front."""
    relay.count_rejected(error.status)
    return refused(error, origin, relay.settings.allowed_origins)


def refused(error: HttpError, origin: str | None, allowed: tuple[str, ...]) -> Response:
    """The same answer where no relay is at hand to count it (see :func:`static`)."""
    log.debug("%s %s", error.status, error.reason)
    headers: Headers = [("Content-Type", "application/json"), *error.headers]
    headers += cors_headers(origin, allowed)
    return Response(error.status, headers, error_body(error.reason))


def dispatch(relay: Relay, request: Request) -> Outcome:
    """What ``request`` gets (see the module docstring)."""
    settings = relay.settings
    origin = request.origin
    # Behind a trusted proxy, the client is the one it names (per-client limits, logs).
    request.client = client_address(request.client, request.headers, settings.forwarded_allow_ips)
    if request.method == "OPTIONS":
        return Response(204, preflight_headers(origin, settings.allowed_origins), b"")
    try:
        target = route(
            request.method,
            request.path,
            request.query,
            max_channels=settings.max_channels_per_stream,
        )
        if isinstance(target, Endpoint) and target.name not in ("publish", "revoke"):
            # Answered while closing too: /healthz then says why not.
            status, ctype, body = relay.endpoint(target.name, request.headers)
            return Response(status, [("Content-Type", ctype), ("Cache-Control", "no-cache")], body)
        if isinstance(target, AssetRoute):  # static bytes: answered while closing too
            return _asset(target, request, settings.allowed_origins)
        if isinstance(target, AdminRoute):
            return _operator(relay, request, target)
        _refuse_if_closing(relay)
        if isinstance(target, Endpoint):
            return PUBLISH
        if isinstance(target, PresenceRoute):
            return check(relay, request, target)
        return _admit(relay, request, target)
    except HttpError as exc:
        return refusal(relay, exc, origin)


def _refuse_if_closing(relay: Relay) -> None:
    """503 while no new stream is admitted: shutting down, or failed."""
    if relay.closing:
        problem = relay.problem()
        reason = "relay is shutting down"
        if problem != "shutting down":
            reason = f"relay unavailable ({problem})"
        raise HttpError(503, reason, (("Retry-After", "1"),))


def _operator(relay: Relay, request: Request, target: AdminRoute) -> Response | Admission:
    """The operator's page (answered while closing too: it says why) or its stream."""
    operator = relay.operator
    if operator is None:
        raise HttpError(
            404,
            "the operator's page is off (the admin setting, docs/admin.md); "
            "a channel named 'admin' is at /events/admin",
        )
    operator.auth.check(request.headers, target.query)
    if not target.stream:
        form = dict(target.query).get("format", "html")
        if form not in ("html", "json"):
            raise HttpError(400, f"format must be html or json, not {form[:20]!r}")
        # Behind a TLS proxy the cookie is marked Secure (a client that claims HTTPS
        # falsely only makes its own cookie stricter).
        https = request.headers.get("x-forwarded-proto", "").lower() == "https"
        headers, body = operator.json() if form == "json" else operator.page(secure=https)
        return Response(200, headers, body)
    _refuse_if_closing(relay)
    # A stream like the others in the limits of the process (never per subject).
    lease = relay.access.limits.acquire(request.client, None, None)
    return Admission((operator.channel,), None, lease, [*SSE_HEADERS])


def static(request: Request, allowed_origins: tuple[str, ...]) -> Response:
    """What a request for one of the browser client's files gets where no relay is at hand
    (the Django URLconf serves them under WSGI too): as :func:`dispatch` answers it, from
    the same route; any other request is a 404."""
    try:
        target = route(request.method, request.path, request.query, max_channels=1)
        if not isinstance(target, AssetRoute):
            raise HttpError(404, f"no such file {request.path[:80]!r}")
    except HttpError as exc:
        return refused(exc, request.origin, allowed_origins)
    return _asset(target, request, allowed_origins)


def _asset(target: AssetRoute, request: Request, allowed_origins: tuple[str, ...]) -> Response:
    status, headers, body = assets.respond(
        target.name, target.query, request.headers, allowed_origins
    )
    return Response(status, headers, body)


def _admit(relay: Relay, request: Request, target: StreamRoute) -> Admission:
    try:
        catch_up = catch_up_request(
            target.channels, target.query, request.headers.get("last-event-id"), relay.log
        )
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    lease = relay.access.admit(target.channels, request.headers, target.query, request.client)
    headers = [*SSE_HEADERS, *cors_headers(request.origin, relay.settings.allowed_origins)]
    return Admission(target.channels, catch_up, lease, headers)


def start_stream(relay: Relay, sub: Subscriber, admission: Admission) -> None:
    """Open an admitted stream: its first ``retry:`` (jittered), then the subscription.

    Call it with no ``await`` since :func:`dispatch`: shutdown cannot then miss the
    stream, nor a lease be held by a stream that never started."""
    sub.write(retry_hint(relay.settings.retry_ms))
    relay.subscribe(sub, admission.catch_up, admission.lease)
