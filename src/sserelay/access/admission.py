"""Who may open a stream, and how many: the check every front runs before a stream starts.

:func:`sserelay.http.front.dispatch` hands :meth:`StreamAccess.admit` a request's
channels, headers (lower-case names), query and client address. It answers with a
:class:`~sserelay.access.limits.Lease` (the stream's place in the limits and the time it
must end by), which the hub releases when it forgets the stream (ending the stream at its
deadline). Or it raises :class:`~sserelay.errors.HttpError`: 401/403 (the token), 503
(the process is full), 429 (this client or this subject holds too many streams).

Every check is O(1) in the number of open streams (plus the channels of the request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .. import jitter
from ..core.endings import Endings
from ..errors import AuthError, HttpError
from .limits import Lease, StreamLimits
from .policy import ChannelPolicy, policy_from_settings, token_from
from .revocations import Revocations
from .tokens import Access

if TYPE_CHECKING:
    from ..config import Settings
    from .tokens import Access

__all__ = ["StreamAccess"]

log = logging.getLogger("sserelay.access")

#: A stream's maximum lifetime is shortened by up to this fraction, per stream, so the
#: streams opened together do not all end (and reconnect) together.
LIFETIME_JITTER = 0.10


class StreamAccess:
    """The subscriber checks of one relay process: the token policy, then the limits."""

    def __init__(
        self,
        settings: Settings,
        policy: ChannelPolicy | None = None,
        *,
        endings: Endings | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self.settings = settings
        #: Where a refusal by the limits is recorded (reason ``limit``), if anywhere.
        self.endings = endings
        self.policy = policy if policy is not None else policy_from_settings(settings)
        #: Tokens withdrawn before they expire (kept up to date by the relay from its bus).
        self.revocations = revocations if revocations is not None else Revocations()
        self.limits = StreamLimits(
            settings.max_streams,
            settings.max_streams_per_client,
            settings.max_streams_per_subject,
            max_channels=settings.max_distinct_channels,
            channels_per_owner=settings.max_channels_per_client,
        )

    def admit(
        self,
        channels: Iterable[str],
        headers: Mapping[str, str],
        query: Iterable[tuple[str, str]],
        client: str | None,
    ) -> Lease:
        """A lease for a stream of ``channels``, or HttpError (401, 403, 429, 503).

        Refusals are logged at INFO with who (the token's ``sub`` when it verifies, the
        client address) and why; the token itself is never logged.
        """
        channels = tuple(channels)
        access = self.authorise(channels, headers, query, client)
        token_subject = subject = access.subject if access is not None else None
        if access is not None and subject is None and client is not None:
            # A token without ``sub`` must not escape the per-subject limit: its bearer is
            # counted by address (as the publish rate does).
            subject = f"address {client}"
        deadline = self._deadline(access.expires_at if access is not None else None)
        try:
            lease = self.limits.acquire(client, subject, deadline, channels)
        except HttpError as exc:
            self._refused(exc.status, exc.reason, subject, client)
            if self.endings is not None:
                self.endings.record("limit", channels, token_subject, client)
            raise
        lease.sub, lease.peer = token_subject, client
        lease.access = access
        log.debug(
            "stream on %s: sub=%s client=%s", ",".join(channels)[:200], subject or "-", client
        )
        return lease

    def authorise(
        self,
        channels: tuple[str, ...],
        headers: Mapping[str, str],
        query: Iterable[tuple[str, str]],
        client: str | None,
    ) -> Access | None:
        """What the request's token grants for reading ``channels`` (None: no token needed
        or given, or a revoked one on public channels), or HttpError 401/403 with its
        ``WWW-Authenticate`` challenge."""
        token = token_from(headers, query, self.settings.token_cookie)
        try:
            access = self.policy.authorise_subscribe(channels, token)
            if access is not None:
                access = self._unless_revoked(access, channels)
            return access
        except AuthError as exc:
            self._refused(exc.status, exc.reason, exc.subject, client)
            challenge = "Bearer" if token is None else 'Bearer error="invalid_token"'
            if exc.status == 403:
                challenge = 'Bearer error="insufficient_scope"'
            raise HttpError(exc.status, exc.reason, (("WWW-Authenticate", challenge),)) from None

    def _unless_revoked(self, access: Access, channels: tuple[str, ...]) -> Access | None:
        """``access``, or AuthError(401) if it was revoked; on public channels only, a
        revoked token is ignored as an invalid one is (the stream is anonymous)."""
        reason = self.revocations.refusal(access, channels)
        if reason is None:
            return access
        if all(self.policy.is_public(channel) for channel in channels):
            return None
        raise AuthError(401, reason, subject=access.subject)

    def _deadline(self, expires_at: float | None) -> float | None:
        """The monotonic time a stream admitted now must end by, or None."""
        now = time.monotonic()
        deadline = None
        if expires_at is not None:
            deadline = now + (expires_at - time.time())
        lifetime = self.settings.max_stream_lifetime
        if lifetime is not None:
            end = now + lifetime * jitter.uniform(1 - LIFETIME_JITTER, 1.0)
            deadline = end if deadline is None else min(deadline, end)
        return deadline

    @staticmethod
    def _refused(status: int, reason: str, subject: str | None, client: str | None) -> None:
        log.info(
            "stream refused (%d): %s; sub=%s client=%s", status, reason, subject or "-", client
        )
