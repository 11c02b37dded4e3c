"""Which endpoint a request is for, the same on every front.

- ``GET /events/{channel}``: one channel (the rest of the path, percent-decoded).
- ``GET /events?channel=a&channel=b``: several channels on one stream.
- ``GET /{channel}``: one channel, as ``sse-relay-server`` serves it. Channels
  whose name is one of our endpoints (``admin``, ``events``, ``healthz``, ``metrics``,
  ``presence``, ``publish``, ``revoke``) are reachable under ``/events/`` only.
- ``GET /presence/{channel}``: who is subscribed to a presence channel
  (docs/presence.md).
- ``GET /healthz``, ``GET /metrics``.
- ``GET /admin``, ``GET /admin/stream``: the operator's page and its updates (off unless
  configured, see :mod:`sserelay.admin`); a channel named ``admin`` is at
  ``/events/admin``.
- ``GET /sserelay.js``, ``GET /sserelay.classic.js``: the browser client
  (:mod:`~sserelay.http.assets`).
- ``POST /publish``: publish one event (see :mod:`sserelay.http.publish`); every other
  method on ``/publish`` is a 405 with ``Allow: POST``.
- ``POST /revoke``: revoke tokens, with an admin token (see :mod:`sserelay.http.revoke`);
  the same 405 for any other method.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from ..errors import HttpError, InvalidChannel
from ..wire.channels import validate_channel
from .assets import NAMES as ASSET_NAMES

RESERVED_PATHS = frozenset(
    {"admin", "events", "healthz", "metrics", "presence", "publish", "revoke"}
)
#: Endpoints whose request has a body, read by the front before the answer.
WITH_BODY = ("/publish", "/revoke")
MAX_QUERY_FIELDS = 256


def request_timeout(seconds: float) -> HttpError:
    """408: the request (head, or a publish body) did not arrive in time."""
    return HttpError(408, f"request not received within {seconds:g}s")


@dataclass(frozen=True, slots=True)
class StreamRoute:
    channels: tuple[str, ...]
    query: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # "healthz", "metrics", "publish" or "revoke"


@dataclass(frozen=True, slots=True)
class AssetRoute:
    name: str  # one of sserelay.http.assets.NAMES
    query: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AdminRoute:
    """The operator's page (``stream`` False) or its stream of updates."""

    stream: bool
    query: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PresenceRoute:
    channel: str
    query: tuple[tuple[str, str], ...] = ()


Route = StreamRoute | Endpoint | AssetRoute | AdminRoute | PresenceRoute


def _decode(raw: str, what: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, f"{what} is not valid UTF-8 after percent-decoding") from None


def _query(raw: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(
            raw, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS
        )
    except UnicodeDecodeError:
        raise HttpError(400, "query string is not valid UTF-8 after percent-decoding") from None
    except ValueError:
        raise HttpError(400, f"query string has more than {MAX_QUERY_FIELDS} fields") from None


def _channel(name: str) -> str:
    try:
        return validate_channel(name)
    except InvalidChannel as exc:
        raise HttpError(400, f"invalid channel {name[:80]!r}: {exc}") from None


def route(method: str, path: str, query: str, *, max_channels: int) -> Route:
    """Map a request to a route, or raise :class:`HttpError` (404, 405, 400)."""
    if not path.startswith("/"):
        raise HttpError(400, "request target must be an absolute path")
    if path in WITH_BODY:
        if method == "POST":
            return Endpoint(path[1:])
        raise HttpError(
            405, f"method {method[:20]!r} not allowed; use POST", (("Allow", "POST, OPTIONS"),)
        )
    if method != "GET":
        raise HttpError(
            405, f"method {method[:20]!r} not allowed; use GET", (("Allow", "GET, OPTIONS"),)
        )
    params = _query(query)
    if path == "/healthz" or path == "/metrics":
        return Endpoint(path[1:])
    if path == "/admin" or path == "/admin/stream":
        return AdminRoute(path == "/admin/stream", tuple(params))
    if path[1:] in ASSET_NAMES:  # "sserelay.*" is no channel name, so no channel is hidden
        return AssetRoute(path[1:], tuple(params))
    if path.startswith("/presence/"):
        name = _decode(path[len("/presence/") :], "channel name")
        return PresenceRoute(_channel(name), tuple(params))
    if path == "/presence":
        raise HttpError(404, "no channel in the path; use /presence/{channel}")
    if path == "/events" or path == "/events/":
        names = [value for key, value in params if key == "channel"]
        if not names:
            raise HttpError(400, "no channel given; use /events/{channel} or ?channel=NAME")
    elif path.startswith("/events/"):
        names = [_decode(path[len("/events/") :], "channel name")]
    else:
        name = _decode(path[1:], "channel name")
        if not name:
            raise HttpError(404, "no channel in the path; use /events/{channel}")
        if "/" in path[1:]:
            raise HttpError(404, f"no such endpoint {path[:80]!r}; use /events/{{channel}}")
        if name in RESERVED_PATHS:
            raise HttpError(404, f"{name!r} is an endpoint name; use /events/{name}")
        names = [name]
    if len(names) > max_channels:
        raise HttpError(400, f"{len(names)} channels requested; at most {max_channels} per stream")
    channels = tuple(dict.fromkeys(_channel(n) for n in names))
    return StreamRoute(channels, tuple(params))
