"""Which requests need which token (:class:`ChannelPolicy`), and where a request carries it
(:func:`token_from`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..errors import AuthError
from .keys import read_key_file
from .patterns import matches_any, validate_pattern
from .tokens import Access, TokenVerifier

if TYPE_CHECKING:
    from ..config import Settings


class ChannelPolicy:
    """Which requests need which token.

    Without a verifier the relay is open: everything is allowed and tokens are ignored.
    With one, channels matching ``public_patterns`` may be read without a token; every
    other channel needs a token whose subscribe patterns cover it, and publishing to
    any channel needs a token whose publish patterns cover it.
    """

    def __init__(
        self, public_patterns: Iterable[str] = (), verifier: TokenVerifier | None = None
    ) -> None:
        self.public_patterns = tuple(validate_pattern(p) for p in public_patterns)
        self.verifier = verifier

    @property
    def is_open(self) -> bool:
        return self.verifier is None

    def is_public(self, channel: str) -> bool:
        return self.verifier is None or matches_any(self.public_patterns, channel)

    def authorise_subscribe(self, channels: Iterable[str], token: str | None) -> Access | None:
        """The Access for a stream of ``channels``, None if no token is needed or given.

        Raises AuthError: 401 if a private channel is asked for without a valid token,
        403 (naming the first such channel) if the token does not cover one. A request
        for public channels only never fails: a valid token still gives its Access (so
        the subject is known), an invalid one is ignored (a stale cookie must not lock a
        browser out of the public channels).
        """
        if self.verifier is None:
            return None
        private = [channel for channel in channels if not self.is_public(channel)]
        if not private:
            if token is None:
                return None
            try:
                return self.verifier.verify(token)
            except AuthError:
                return None
        if token is None:
            raise AuthError(401, f"channel {private[0][:80]!r} is private; it needs a token")
        access = self.verifier.verify(token)
        for channel in private:
            if not access.can_subscribe(channel):
                raise AuthError(
                    403,
                    f"token does not allow subscribing to channel {channel[:80]!r}",
                    subject=access.subject,
                )
        return access

    def authorise_publish(self, channel: str, token: str | None) -> Access | None:
        """The Access to publish to ``channel`` (None on an open relay), or AuthError."""
        if self.verifier is None:
            return None
        if token is None:
            raise AuthError(401, "publishing needs a token")
        access = self.verifier.verify(token)
        self.check_publish(channel, access)
        return access

    @staticmethod
    def check_publish(channel: str, access: Access) -> None:
        """AuthError 403 unless the verified ``access`` covers publishing to ``channel``."""
        if not access.can_publish(channel):
            raise AuthError(
                403,
                f"token does not allow publishing to channel {channel[:80]!r}",
                subject=access.subject,
            )


def policy_from_settings(settings: Settings) -> ChannelPolicy:
    """The policy ``settings`` describe (open if they have no jwt_secret nor jwt_public_key)."""
    verifier = None
    if settings.jwt_secret is not None:
        verifier = TokenVerifier(secret=settings.jwt_secret)
    elif settings.jwt_public_key is not None:
        pem = read_key_file(settings.jwt_public_key, "jwt_public_key")
        verifier = TokenVerifier(public_key_pem=pem)
    return ChannelPolicy(settings.public_channels, verifier)


# -- where the token comes from ------------------------------------------------------


def token_from(
    headers: Mapping[str, str], query_params: Iterable[tuple[str, str]], cookie_name: str
) -> str | None:
    """The token a request carries, None if it carries none. Never raises.

    First ``Authorization: Bearer <token>``, then the cookie ``cookie_name``, then the
    first non-empty ``?token=``. ``headers`` has lower-case names (several ``Cookie``
    headers joined with ``"; "``). A Bearer header with a malformed or empty value gives
    that value, which the verifier then refuses (401), rather than falling back to the
    cookie. Other schemes (``Basic`` from a proxy) are not ours and are skipped.
    """
    authorization = headers.get("authorization", "").split(None, 1)
    if authorization and authorization[0].lower() == "bearer":
        return authorization[1].strip() if len(authorization) == 2 else ""
    cookie = _cookie(headers.get("cookie", ""), cookie_name)
    if cookie:
        return cookie
    for key, value in query_params:
        if key == "token" and value:
            return value
    return None


def _cookie(header: str, name: str) -> str | None:
    """The first non-empty value of cookie ``name``: a plain split, as browsers send
    ``a=1; b=2``, that skips what it cannot parse (SimpleCookie gives up on the whole
    header at the first oddity)."""
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                return value
    return None
