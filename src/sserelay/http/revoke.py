"""``POST /revoke``: revoking over HTTP, with a token that has the admin grant
(``sserelay token --admin``; docs/revocation.md).

The body is a JSON object naming exactly one of ``subject``, ``jti`` or ``channel`` (a
pattern): ``{"subject": "u42"}``. The revocation goes to the bus (``sserelay.revoke`` on
PostgreSQL, the script on Redis), so every relay of the bus ends the streams it covers;
this one applies it before it answers. The answer is ``{"kind": "subject", "value":
"u42", "at": <seconds since the epoch>}``.

Every refusal is a 4xx with a one-line reason (503 when the bus cannot be reached):
403 on a relay without a JWT key, 401 without a valid token, 403 with one that lacks the
admin grant, 415 for a body that is not JSON, 400 for a body that does not name exactly
one valid thing to revoke.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from ..access.policy import ChannelPolicy, token_from
from ..access.revocations import KINDS, Revocation, Revocations, check_revocation
from ..errors import (
    AuthError,
    BrokerUnavailable,
    ConfigError,
    HttpError,
    PublishError,
    SchemaMissing,
)
from .body import JSON_TYPE, content_type, json_object, query_params

log = logging.getLogger("sserelay.revoking")

#: Revoke (kind, value) on the bus; the revocation's time (seconds since the epoch).
RevokeFn = Callable[[str, str], Awaitable[float]]


def revocation_from(body: bytes) -> tuple[str, str]:
    """The (kind, value) a ``POST /revoke`` body names, or HttpError(400) saying why not."""
    fields = json_object(body)
    unknown = [name for name in fields if name not in KINDS]
    if unknown:
        raise HttpError(400, f"unknown field {unknown[0][:40]!r}; give one of {', '.join(KINDS)}")
    if len(fields) != 1:
        raise HttpError(400, f"give exactly one of {', '.join(KINDS)}, not {len(fields) or 'none'}")
    ((kind, value),) = fields.items()
    try:
        return check_revocation(kind, value)
    except ConfigError as exc:
        raise HttpError(400, str(exc)) from None


class RevokeEndpoint:
    """``POST /revoke`` of one relay (called by the publisher for that path)."""

    def __init__(
        self,
        policy: ChannelPolicy,
        revocations: Revocations,
        revoke: RevokeFn,
        applied: Callable[[list[Revocation], bool], None] | None = None,
    ) -> None:
        self.policy = policy
        self.revocations = revocations
        self.revoke = revoke
        #: This relay's handler of revocations (as its feed calls it): a revocation made
        #: here holds here before the answer, not only once the bus echoes it.
        self.applied = applied
        self.revoked = 0

    def admin(self, headers: Mapping[str, str], query: str) -> None:
        """AuthError unless the request carries a valid, unrevoked admin token (never the
        cookie, as for publishing)."""
        token = token_from(
            {"authorization": headers.get("authorization", "")}, query_params(query), ""
        )
        if token is None:
            raise AuthError(401, "revoking needs a token with the admin grant")
        assert self.policy.verifier is not None  # the publisher checked that a key is set
        access = self.policy.verifier.verify(token)
        refused = self.revocations.refusal(access)
        if refused is not None:
            raise AuthError(401, refused)
        if not access.admin:
            raise AuthError(
                403,
                "token does not have the admin grant (sserelay token --admin)",
                subject=access.subject,
            )

    async def handle(self, headers: Mapping[str, str], query: str, body: bytes) -> bytes:
        """The answer's body, or HttpError."""
        self.admin(headers, query)
        if content_type(headers) != JSON_TYPE:
            raise HttpError(415, 'POST /revoke takes a JSON body, like {"subject": "u42"}')
        kind, value = revocation_from(body)
        try:
            at = await self.revoke(kind, value)
        except SchemaMissing as exc:
            log.warning("POST /revoke: %s", exc)
            raise HttpError(
                503, "revocation is not installed in the database (sserelay migrate)"
            ) from None
        except (PublishError, BrokerUnavailable) as exc:
            log.warning("POST /revoke: %s", exc)
            raise HttpError(
                503, "revoking failed: the bus is unavailable; try again", (("Retry-After", "2"),)
            ) from None
        self.revoked += 1
        if self.applied is not None:
            self.applied([Revocation(kind, value, at)], False)
        log.info("revoked %s %r (POST /revoke)", kind, value[:80])
        return json.dumps({"kind": kind, "value": value, "at": at}).encode() + b"\n"
