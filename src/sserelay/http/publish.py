"""``POST /publish``: publishing over HTTP, for backends that are not Python or cannot
reach the bus. Shared by the native server and the ASGI app, which only move bytes.

A request carries ``channel``, ``data`` and optionally ``event`` and ``id``, as JSON
(``data`` any JSON value) or as a form (``data`` text), and a publisher token in
``Authorization: Bearer`` (or ``?token=``; never a cookie, so that a page on another
site cannot make a browser publish with its user's cookie). It goes through the same
path as :func:`sserelay.apublish` (durable where the bus has a log, else a raw
notification), on the relay's own connections. The body is parsed and checked once
(:mod:`sserelay.http.body`) into the message the bus sends.

Without a key configured the endpoint is disabled: an open relay must not let anyone
on the internet publish. Every refusal is a 4xx with a one-line reason (503 when the
bus cannot be reached); never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..access.limits import RateLimiter
from ..access.policy import ChannelPolicy, policy_from_settings, token_from
from ..access.revocations import Revocations
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
from ..wire.message import Message
from .body import content_type, parse, query_params
from .responses import error_body

if TYPE_CHECKING:
    from ..config import Settings
    from ..core.protocols import PublishFn
    from .revoke import RevokeEndpoint

log = logging.getLogger("sserelay.publishing")

DISABLED_REASON = (
    "publishing over HTTP needs a JWT key (the README's Security section: "
    "--jwt-secret or SSERELAY_JWT_SECRET)"
)
#: Seconds a client told 503 should wait before trying again.
RETRY_AFTER_UNAVAILABLE = 2


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer: status, headers (without Content-Length) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _error(status: int, reason: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, [("Content-Type", "application/json"), *headers], error_body(reason))


def _http_error(exc: HttpError) -> Reply:
    return _error(exc.status, exc.reason, *exc.headers)


class Publisher:
    """The ``POST /publish`` endpoint of one relay: policy, limits, and its tasks."""

    def __init__(
        self,
        settings: Settings,
        publish: PublishFn,
        policy: ChannelPolicy | None = None,
        *,
        raw_limit: int = 7999,
    ) -> None:
        self.settings = settings
        self.publish = publish
        self.policy = policy if policy is not None else policy_from_settings(settings)
        self.limit = settings.max_publish_bytes
        #: The bus's limit for a plain (non-durable) event, for the 413's reason.
        self.raw_limit = raw_limit
        self.limiter = RateLimiter(settings.publish_rate, settings.publish_burst)
        self.published = 0
        #: ``POST /revoke`` (read the same way: a token, a small body), set by the relay.
        self.revoke: RevokeEndpoint | None = None
        #: Tokens withdrawn before they expire: refused for publishing too.
        self.revocations = Revocations()

    @property
    def enabled(self) -> bool:
        return not self.policy.is_open

    # -- the request -----------------------------------------------------------------

    def precheck(self, headers: Mapping[str, str], path: str = "/publish") -> HttpError | None:
        """What to refuse from the head alone, before reading the body (None: read it)."""
        if not self.enabled:
            verb = "revoking" if path == "/revoke" else "publishing"
            return HttpError(403, DISABLED_REASON.replace("publishing", verb))
        length = headers.get("content-length")
        if length is not None:
            text = length.strip()
            if not text.isdigit() or not text.isascii():
                return HttpError(400, "Content-Length is not a number")
            if int(text) > self.limit:
                return self.too_large(int(text))
        try:
            content_type(headers)
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
        path: str = "/publish",
    ) -> Reply:
        """Answer one ``POST /publish`` (or ``POST /revoke``) whose body has been read (at
        most the limit)."""
        try:
            if path == "/revoke":
                return await self._revoke(headers, query, body)
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
        params = query_params(query)
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
        message = parse(content_type(headers), body)
        try:
            self.policy.check_publish(message.channel, access)
            revoked = self.revocations.refusal(access, (message.channel,))
            if revoked is not None:
                raise AuthError(401, revoked)
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

    async def _revoke(self, headers: Mapping[str, str], query: str, body: bytes) -> Reply:
        refused = self.precheck(headers, "/revoke")
        if refused is not None:
            raise refused
        if self.revoke is None:
            raise HttpError(404, "this relay does not revoke (no bus to revoke on)")
        token = headers.get("authorization")
        try:
            answer = await self.revoke.handle(headers, query, body)
        except AuthError as exc:
            return self._auth_refusal(exc, token)
        reply_headers = [("Content-Type", "application/json"), ("Cache-Control", "no-cache")]
        return Reply(200, reply_headers, answer)

    def _auth_refusal(self, exc: AuthError, token: str | None) -> Reply:
        if exc.status == 401:
            challenge = 'Bearer error="invalid_token"' if token is not None else "Bearer"
            return _error(401, exc.reason, ("WWW-Authenticate", challenge))
        return _error(exc.status, exc.reason)

    async def _publish(self, message: Message) -> int | str | None:
        unavailable = (("Retry-After", str(RETRY_AFTER_UNAVAILABLE)),)
        try:
            # The bus decides raw or durable, once: PostgreSQL through its pool, or Redis.
            return await self.publish(message, None)
        except InvalidChannel as exc:
            raise HttpError(400, f"invalid channel {message.channel[:80]!r}: {exc}") from None
        except PayloadTooLarge as exc:
            raise HttpError(
                413,
                f"{exc} (a plain event; events in the durable log may be up to {self.limit} bytes)",
            ) from None
        except InvalidEvent as exc:
            raise HttpError(400, str(exc).strip().splitlines()[0]) from None
        except SchemaMissing as exc:
            log.warning("POST /publish: %s", exc)
            raise HttpError(503, "the event log is not available", unavailable) from None
        except (PublishError, BrokerUnavailable) as exc:
            log.warning("POST /publish on %r: bus unavailable: %s", message.channel, exc)
            raise HttpError(503, "database unavailable; try again later", unavailable) from None
