"""``POST /publish``: publishing over HTTP, for backends that are not Python or cannot
reach PostgreSQL. Shared by the native server and the ASGI app, which only move bytes.

A request carries ``channel``, ``data`` and optionally ``event`` and ``id``, as JSON
(``data`` any JSON value) or as a form (``data`` text), and a publisher token in
``Authorization: Bearer`` (or ``?token=``; never a cookie, so that a page on another
site cannot make a browser publish with its user's cookie). It goes through the same
path as :func:`sserelay.apublish` (durable where the schema is installed, else a raw
NOTIFY) on a connection from the relay's reader pool.

Without a key configured the endpoint is disabled: an open relay must not let anyone
on the internet publish. Every refusal is a 4xx with a one-line reason (503 when the
database cannot be reached); never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import psycopg
from psycopg_pool import PoolTimeout

from ..access.limits import RateLimiter
from ..access.policy import ChannelPolicy, policy_from_settings, token_from
from ..errors import (
    AuthError,
    BrokerUnavailable,
    HttpError,
    InvalidChannel,
    InvalidEvent,
    PayloadTooLarge,
    PublishError,
    SchemaMissing,
)
from ..wire.channels import validate_channel
from .responses import error_body

if TYPE_CHECKING:
    from ..config import Settings
    from ..core.protocols import EventLog

log = logging.getLogger("sserelay.publishing")

DISABLED_REASON = "publishing over HTTP needs a JWT key; see docs/security.md"
FIELDS = ("channel", "data", "event", "id")
#: Seconds to wait for a database connection before answering 503.
CONNECT_TIMEOUT = 5.0
#: Seconds a client told 503 should wait before trying again.
RETRY_AFTER_UNAVAILABLE = 2
MAX_FORM_FIELDS = 16

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer: status, headers (without Content-Length) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed publish request."""

    channel: str
    data: Any
    event: str | None = None
    id: str | int | None = None


def _error(status: int, reason: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, [("Content-Type", "application/json"), *headers], error_body(reason))


def _http_error(exc: HttpError) -> Reply:
    return _error(exc.status, exc.reason, *exc.headers)


class Publisher:
    """The ``POST /publish`` endpoint of one relay: policy, limits, and its tasks."""

    def __init__(
        self,
        settings: Settings,
        reader: EventLog,
        policy: ChannelPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.policy = policy if policy is not None else policy_from_settings(settings)
        self.limit = settings.max_publish_bytes
        self.limiter = RateLimiter(settings.publish_rate, settings.publish_burst)
        self.connect_timeout = CONNECT_TIMEOUT
        self.published = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return not self.policy.is_open

    # -- tasks (the native server runs each request in one; shutdown cancels them) -----

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name="sserelay-publish")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancel the requests in flight and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- the request -----------------------------------------------------------------

    def precheck(self, headers: Mapping[str, str]) -> HttpError | None:
        """What to refuse from the head alone, before reading the body (None: read it)."""
        if not self.enabled:
            return HttpError(403, DISABLED_REASON)
        length = headers.get("content-length")
        if length is not None:
            text = length.strip()
            if not text.isdigit() or not text.isascii():
                return HttpError(400, "Content-Length is not a number")
            if int(text) > self.limit:
                return self.too_large(int(text))
        try:
            _content_type(headers)
        except HttpError as exc:
            return exc
        return None

    def too_large(self, size: int | None = None) -> HttpError:
        what = f"request body is {size} bytes" if size is not None else "request body is"
        return HttpError(413, f"{what} over the limit of {self.limit} bytes")

    async def handle(
        self,
        headers: Mapping[str, str],
        query: str,
        body: bytes,
        client: str | None,
    ) -> Reply:
        """Answer one ``POST /publish`` whose body has been read (at most the limit)."""
        try:
            return await self._handle(headers, query, body, client)
        except HttpError as exc:
            return _http_error(exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: still an answer, never a 500 nor a dropped connection
            log.exception("POST /publish failed")
            return _error(
                503, "publishing failed unexpectedly", ("Retry-After", str(RETRY_AFTER_UNAVAILABLE))
            )

    async def _handle(
        self, headers: Mapping[str, str], query: str, body: bytes, client: str | None
    ) -> Reply:
        refused = self.precheck(headers)
        if refused is not None:
            raise refused
        if len(body) > self.limit:
            raise self.too_large(len(body))
        params = _query(query)
        # Never the cookie: a cross-site form would carry it (CSRF).
        token = token_from({"authorization": headers.get("authorization", "")}, params, "")
        # The token is verified once, before the body is parsed: a bad token is a 401
        # whatever the body holds.
        try:
            if token is None:
                raise AuthError(401, "publishing needs a token")
            assert self.policy.verifier is not None  # enabled
            access = self.policy.verifier.verify(token)
        except AuthError as exc:
            return self._auth_refusal(exc, token)
        message = parse(_content_type(headers), body)
        try:
            self.policy.check_publish(message.channel, access)
        except AuthError as exc:
            return self._auth_refusal(exc, token)
        key = f"sub:{access.subject}" if access.subject else f"addr:{client or '?'}"
        wait = self.limiter.take(key)
        if wait:
            seconds = max(1, math.ceil(wait))
            return _error(
                429,
                f"publish rate over {self.settings.publish_rate:g} events/s "
                f"(burst {self.settings.publish_burst}); retry in {seconds}s",
                ("Retry-After", str(seconds)),
            )
        event_id = await self._publish(message)
        self.published += 1
        body_out = json.dumps({"id": event_id, "channel": message.channel}).encode() + b"\n"
        reply_headers = [("Content-Type", "application/json"), ("Cache-Control", "no-cache")]
        return Reply(200, reply_headers, body_out)

    def _auth_refusal(self, exc: AuthError, token: str | None) -> Reply:
        if exc.status == 401:
            challenge = 'Bearer error="invalid_token"' if token is not None else "Bearer"
            return _error(401, exc.reason, ("WWW-Authenticate", challenge))
        return _error(exc.status, exc.reason)

    async def _publish(self, message: Message) -> int | str | None:
        unavailable = (("Retry-After", str(RETRY_AFTER_UNAVAILABLE)),)
        try:
            # The relay's log publishes: PostgreSQL through its pool, or Redis.
            return await self.reader.publish(
                message.channel,
                message.data,
                event=message.event,
                id=message.id,
                timeout=self.connect_timeout,
            )
        except InvalidChannel as exc:
            raise HttpError(400, f"invalid channel {message.channel[:80]!r}: {exc}") from None
        except PayloadTooLarge as exc:
            raise HttpError(
                413,
                f"{exc} (a plain NOTIFY; events in the durable log may be up to "
                f"{self.limit} bytes)",
            ) from None
        except InvalidEvent as exc:
            raise HttpError(400, _one_line(str(exc))) from None
        except SchemaMissing as exc:
            log.warning("POST /publish: %s", exc)
            raise HttpError(503, "the event log is not available", unavailable) from None
        except (PublishError, BrokerUnavailable, PoolTimeout, psycopg.Error, OSError) as exc:
            log.warning("POST /publish on %r: database unavailable: %s", message.channel, exc)
            raise HttpError(503, "database unavailable; try again later", unavailable) from None


# -- parsing -------------------------------------------------------------------------


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "invalid request"


def _query(raw: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw, keep_blank_values=True, errors="strict", max_num_fields=256)
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "query string is not valid") from None


def _content_type(headers: Mapping[str, str]) -> str:
    """``application/json`` or the form type, else HttpError(415); charset must be UTF-8."""
    raw = headers.get("content-type")
    if raw is None:
        raise HttpError(415, f"no Content-Type; send {JSON_TYPE} or {FORM_TYPE}")
    kind, *params = (part.strip() for part in raw.split(";"))
    kind = kind.lower()
    if kind not in (JSON_TYPE, FORM_TYPE):
        raise HttpError(
            415, f"Content-Type {kind[:60]!r} not supported; send {JSON_TYPE} or {FORM_TYPE}"
        )
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise HttpError(415, f"charset {value.strip()[:20]!r} not supported; send UTF-8")
    return kind


def parse(content_type: str, body: bytes) -> Message:
    """The message in ``body``, or HttpError(400) with a one-line reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "request body is not valid UTF-8") from None
    fields = _json_fields(text) if content_type == JSON_TYPE else _form_fields(text)
    unknown = [name for name in fields if name not in FIELDS]
    if unknown:
        raise HttpError(
            400, f"unknown field {unknown[0][:40]!r}; a message has {', '.join(FIELDS)}"
        )
    if "channel" not in fields:
        raise HttpError(400, "no channel given")
    if "data" not in fields:
        raise HttpError(400, "no data given")
    channel = fields["channel"]
    try:
        validate_channel(channel)
    except InvalidChannel as exc:
        shown = channel[:80] if isinstance(channel, str) else channel
        raise HttpError(400, f"invalid channel {shown!r}: {exc}") from None
    event = fields.get("event")
    if event is not None and not isinstance(event, str):
        raise HttpError(400, "event must be a string")
    if event is not None and any(c in event for c in "\r\n\x00"):
        raise HttpError(400, "event may not contain a line break or NUL")
    if event is not None and not _valid_unicode(event):
        raise HttpError(400, "event is not valid unicode (it has a lone surrogate)")
    event_id = fields.get("id")
    if event_id is not None:
        if isinstance(event_id, bool) or not isinstance(event_id, str | int):
            raise HttpError(400, "id must be a string or an integer")
        if isinstance(event_id, str) and any(c in event_id for c in "\r\n\x00"):
            raise HttpError(400, "id may not contain a line break or NUL")
        if isinstance(event_id, str) and not _valid_unicode(event_id):
            raise HttpError(400, "id is not valid unicode (it has a lone surrogate)")
    if event == "":
        event = None
    if event_id == "":
        event_id = None
    return Message(channel, fields["data"], event, event_id)


def _valid_unicode(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_fields(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise HttpError(400, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, over-long integers
        raise HttpError(400, f"invalid JSON: {_one_line(str(exc))}") from None
    if not isinstance(value, dict):
        raise HttpError(400, f"the JSON body must be an object, not {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _form_fields(text: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError:
        raise HttpError(400, "invalid form: not valid UTF-8 after percent-decoding") from None
    except ValueError:
        raise HttpError(400, f"invalid form: more than {MAX_FORM_FIELDS} fields") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise HttpError(400, f"field {name[:40]!r} given twice")
        fields[name] = value
    if not fields and text.strip():
        raise HttpError(400, "invalid form: no name=value field")
    return fields
