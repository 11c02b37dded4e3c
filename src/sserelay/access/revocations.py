"""Revocations: tokens withdrawn before they expire (docs/revocation.md).

A revocation names a token's ``sub`` (every token of that subject), its ``jti`` (one
token) or a channel pattern (every stream on a matching channel), and the time it was
made. It refuses the tokens it names that were issued before that time (their ``iat``
is earlier), until the revocation is pruned (``revocation_ttl`` after it was made, which
should be at least the longest lifetime of a token). A token issued after it works.

A token without ``iat`` cannot show that it is newer than a revocation: it counts as
issued before every revocation that names it. :func:`~sserelay.access.tokens.mint_token`
sets ``iat`` with millisecond precision, so a token minted right after a revocation works;
an integer ``iat`` of the revocation's own second counts as before it.

A stream without a token (a public channel) counts from the time it was opened: a
channel revocation ends it, and a stream opened after the revocation is not ended.

This module is pure logic: the buses store the revocations and tell every relay about
new ones (``bus/postgres/revocations.py``, ``bus/redis/revocations.py``); the relay keeps
one :class:`Revocations` and ends the streams it names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..core.hub import retry_hint
from ..errors import ConfigError, InvalidChannel
from ..wire.sse import encode_event
from .patterns import CONTROL, matches_any, validate_pattern
from .tokens import MAX_SUBJECT_CHARS, Access

#: What a revocation may name, as ``sserelay.revoke(subject => ...)`` spells it.
KINDS = ("subject", "jti", "channel")
#: The ending reason of a stream closed by a revocation (logs, metrics, the admin view).
REASON = "revoked"
#: The SSE event a revoked stream gets before it ends.
EVENT = "sserelay.revoked"
#: A revoked stream is told to wait at least this long before it comes back (its browser
#: then gets a 401 and stops, unless its page has a new token).
MIN_RETRY_MS = 5000


def farewell(retry_ms: int) -> bytes:
    """What a revoked stream gets last: the ``sserelay.revoked`` event and a ``retry:`` of
    at least 5 s, jittered by up to as much again."""
    event = encode_event('{"reason": "revoked"}', event=EVENT)
    return event + retry_hint(max(retry_ms, MIN_RETRY_MS), farewell=True)


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation: ``kind`` (subject, jti or channel), the value it names, and when
    it was made (seconds since the epoch, the bus's clock)."""

    kind: str
    value: str
    at: float


def _any_channel(pattern: str, channels: Iterable[str]) -> bool:
    return any(matches_any((pattern,), channel) for channel in channels)


def check_revocation(kind: str, value: object) -> tuple[str, str]:
    """``(kind, value)`` checked: a known kind and a value it can name, or ConfigError
    (whose message says what is wrong)."""
    if kind not in KINDS:
        raise ConfigError(f"a revocation names a {', '.join(KINDS)}; not {kind!r}")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"the {kind} to revoke must be a non-empty string")
    if kind == "channel":
        try:
            return kind, validate_pattern(value)
        except InvalidChannel as exc:
            raise ConfigError(f"the channel pattern to revoke is invalid: {exc}") from None
    if len(value) > MAX_SUBJECT_CHARS or CONTROL.search(value):
        raise ConfigError(
            f"the {kind} to revoke must be at most {MAX_SUBJECT_CHARS} characters "
            "without control characters"
        )
    return kind, value


def one_of(
    subject: str | None = None, jti: str | None = None, channel: str | None = None
) -> tuple[str, str]:
    """The one ``(kind, value)`` that exactly one of the three arguments names."""
    named = (("subject", subject), ("jti", jti), ("channel", channel))
    given = [(kind, value) for kind, value in named if value is not None]
    if len(given) != 1:
        raise ConfigError("a revocation names exactly one of subject, jti or channel")
    return check_revocation(*given[0])


class Revocations:
    """A set of revocations (those in force on a relay, or those just made): by subject
    and by jti (one look-up each), and channel patterns (matched against the channels).
    Each (kind, value) is kept once, at its latest time."""

    def __init__(self, revocations: Iterable[Revocation] = ()) -> None:
        self._at: dict[tuple[str, str], float] = {}
        self._patterns: dict[str, float] = {}
        #: The revocations are known (loaded from the bus at least once).
        self.loaded = False
        for revocation in revocations:
            self.add(revocation)

    def __len__(self) -> int:
        return len(self._at)

    def add(self, revocation: Revocation) -> bool:
        """Add ``revocation``; False if one as recent was known already."""
        key = (revocation.kind, revocation.value)
        known = self._at.get(key)
        if known is not None and known >= revocation.at:
            return False
        self._at[key] = revocation.at
        if revocation.kind == "channel":
            self._patterns[revocation.value] = revocation.at
        return True

    def replace(self, revocations: Iterable[Revocation]) -> list[Revocation]:
        """Make ``revocations`` the whole set (a reload: older ones are forgotten); return
        those that are new, or more recent than what was known (missed messages)."""
        old = self._at
        self._at, self._patterns = {}, {}
        for revocation in revocations:
            self.add(revocation)
        self.loaded = True
        return [
            Revocation(kind, value, at)
            for (kind, value), at in self._at.items()
            if old.get((kind, value), -math.inf) < at
        ]

    def _revoked_at(self, access: Access) -> tuple[str, float] | None:
        issued = access.issued_at if access.issued_at is not None else -math.inf
        for kind, value in (("subject", access.subject), ("jti", access.jti)):
            at = self._at.get((kind, value)) if value is not None else None
            if at is not None and issued < at:
                return kind, at
        return None

    def _pattern(self, since: float, channels: Sequence[str]) -> str | None:
        for pattern, at in self._patterns.items():
            if since < at and _any_channel(pattern, channels):
                return pattern
        return None

    def refusal(self, access: Access, channels: Sequence[str] = ()) -> str | None:
        """Why ``access`` is refused (the reason of a 401), None if it is not revoked."""
        found = self._revoked_at(access)
        if found is not None:
            return f"token was revoked (its {found[0]} was revoked after it was issued)"
        issued = access.issued_at if access.issued_at is not None else -math.inf
        pattern = self._pattern(issued, channels)
        if pattern is not None:
            return f"token was revoked for the channels {pattern[:80]!r} after it was issued"
        return None

    def covers(self, access: Access | None, channels: Sequence[str], opened: float) -> bool:
        """Whether a stream of ``channels`` admitted with ``access`` (None: no token) and
        opened at ``opened`` (seconds since the epoch) is to be ended."""
        if access is None:
            return bool(self._patterns) and self._pattern(opened, channels) is not None
        return self.refusal(access, channels) is not None
