"""Who may open a stream, and how many: the decisions both HTTP fronts share.

The native server and the ASGI app each hand :meth:`StreamAccess.admit` the request's
channels, headers (lower-case names), query and client address. It answers with a
:class:`Lease` (the stream's place in the limits and the time it must end by), which
the front passes to :meth:`Hub.subscribe <sserelay.hub.Hub.subscribe>`; the hub
releases it when it forgets the stream and ends the stream at its deadline. Or it
raises :class:`~sserelay.routes.HttpError`: 401/403 (the token), 503 (the process is
full), 429 (this client or this subject holds too many streams).

Every check is O(1) in the number of open streams (plus the channels of the request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from .. import jitter
from ..config import Settings
from ..errors import AuthError
from ..http.routes import HttpError
from .tokens import ChannelPolicy, policy_from_settings, token_from

__all__ = ["Lease", "StreamAccess", "StreamLimits"]

log = logging.getLogger("sserelay.access")

#: A stream's maximum lifetime is shortened by up to this fraction, per stream, so the
#: streams opened together do not all end (and reconnect) together.
LIFETIME_JITTER = 0.10


def retry_after() -> tuple[tuple[str, str], ...]:
    """A ``Retry-After`` of 1 to 5 s, jittered so refused clients do not return together."""
    return (("Retry-After", str(jitter.randint(1, 5))),)


class Lease:
    """One admitted stream's place in the limits (a :class:`~sserelay.hub.Lease`)."""

    __slots__ = ("client", "deadline", "limits", "released", "subject")

    def __init__(
        self,
        limits: StreamLimits,
        client: str | None,
        subject: str | None,
        deadline: float | None,
    ) -> None:
        self.limits = limits
        self.client = client
        self.subject = subject
        #: Monotonic time the stream must end by (token expiry, maximum lifetime), or None.
        self.deadline = deadline
        self.released = False

    def release(self) -> None:
        """Give the place back (idempotent)."""
        if not self.released:
            self.released = True
            self.limits.release(self)


def _decrement(counts: dict[str, int], key: str | None) -> None:
    if key is None:
        return
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class StreamLimits:
    """Counts of open streams: in all, per client address, per token subject."""

    def __init__(self, max_streams: int, per_client: int, per_subject: int) -> None:
        self.max_streams = max_streams
        self.per_client = per_client
        self.per_subject = per_subject
        self.total = 0
        self.clients: dict[str, int] = {}
        self.subjects: dict[str, int] = {}

    def acquire(self, client: str | None, subject: str | None, deadline: float | None) -> Lease:
        """A lease for one more stream, or HttpError 503 (process full) / 429 (too many
        for this client or subject), with a jittered ``Retry-After``."""
        if self.total >= self.max_streams:
            raise HttpError(
                503, f"relay is at its limit of {self.max_streams} streams", retry_after()
            )
        if (
            self.per_client
            and client is not None
            and self.clients.get(client, 0) >= self.per_client
        ):
            raise HttpError(
                429,
                f"too many streams from this client (at most {self.per_client})",
                retry_after(),
            )
        if (
            self.per_subject
            and subject is not None
            and self.subjects.get(subject, 0) >= self.per_subject
        ):
            raise HttpError(
                429,
                f"too many streams for this token subject (at most {self.per_subject})",
                retry_after(),
            )
        self.total += 1
        if self.per_client and client is not None:
            self.clients[client] = self.clients.get(client, 0) + 1
        if self.per_subject and subject is not None:
            self.subjects[subject] = self.subjects.get(subject, 0) + 1
        # The lease names only what was counted, so that release uncounts exactly that.
        return Lease(
            self,
            client if self.per_client else None,
            subject if self.per_subject else None,
            deadline,
        )

    def release(self, lease: Lease) -> None:
        self.total -= 1
        _decrement(self.clients, lease.client)
        _decrement(self.subjects, lease.subject)


class StreamAccess:
    """The subscriber checks of one relay process: the token policy, then the limits."""

    def __init__(self, settings: Settings, policy: ChannelPolicy | None = None) -> None:
        self.settings = settings
        self.policy = policy if policy is not None else policy_from_settings(settings)
        self.limits = StreamLimits(
            settings.max_streams, settings.max_streams_per_client, settings.max_streams_per_subject
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
        token = token_from(headers, query, self.settings.token_cookie)
        try:
            access = self.policy.authorise_subscribe(channels, token)
        except AuthError as exc:
            self._refused(exc.status, exc.reason, exc.subject, client)
            challenge = "Bearer" if token is None else 'Bearer error="invalid_token"'
            if exc.status == 403:
                challenge = 'Bearer error="insufficient_scope"'
            raise HttpError(exc.status, exc.reason, (("WWW-Authenticate", challenge),)) from None
        subject = access.subject if access is not None else None
        deadline = self._deadline(access.expires_at if access is not None else None)
        try:
            lease = self.limits.acquire(client, subject, deadline)
        except HttpError as exc:
            self._refused(exc.status, exc.reason, subject, client)
            raise
        log.debug(
            "stream on %s: sub=%s client=%s", ",".join(channels)[:200], subject or "-", client
        )
        return lease

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
