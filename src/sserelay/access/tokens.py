"""Who may read and publish which channels: signed tokens (JWT) and the channel policy.

A token is a JWT signed with HS256 (a shared secret) or RS256/ES256 (the relay holds
only the public key). Its claims::

    {"aud": "sserelay", "exp": 1700003600, "nbf": 1700000000, "iat": 1700000000,
     "sub": "alice",
     "sserelay": {"subscribe": ["lobby", "room-*"], "publish": ["lobby"]}}

``exp``, ``aud`` and ``sserelay`` are required; ``sub`` is optional (it names the bearer
in logs and per-subject limits). A channel pattern is an exact channel name, or a name
with ``*`` wildcards, each matching any run of zero or more characters (``room-*``,
``*-feed``, ``user/*/inbox``, ``*``). Nothing else is special: ``?``, ``[`` and ``\\`` are
literal, and there is no escape, so a pattern cannot grant a channel whose name contains
``*`` without also granting the names the ``*`` matches.

Without a key configured the relay is open. With one, channels matching a public pattern
need no token and every other channel needs a token whose ``subscribe`` patterns cover it;
publishing always needs a token whose ``publish`` patterns cover the channel.

This module is pure logic: the HTTP adapters take the token with :func:`token_from` and ask
a :class:`ChannelPolicy`; an :class:`~sserelay.errors.AuthError` carries the status and
the one-line reason to answer with.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import AuthError, ConfigError, InvalidChannel
from ..wire.channels import MAX_CHANNEL_BYTES

if TYPE_CHECKING:
    from ..config import Settings

#: The ``aud`` every token must carry, so a token minted for another service (same
#: issuer, same key) cannot be replayed here.
AUDIENCE = "sserelay"
#: The private claim holding the bearer's channel patterns.
CLAIM = "sserelay"
#: HS256 secrets shorter than the hash output are refused (RFC 7518, section 3.2).
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
#: Longer tokens are refused before any parsing.
MAX_TOKEN_CHARS = 8192
MAX_SUBJECT_CHARS = 255
ALGORITHMS = ("HS256", "RS256", "ES256")

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Three base64url segments (padding tolerated) joined by dots: the shape of a compact JWS.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_\-=]*\.[A-Za-z0-9_\-=]*\.[A-Za-z0-9_\-=]*")
#: An ``alg`` header value short and plain enough to quote in a reason.
_PLAIN_ALG = re.compile(r"[A-Za-z0-9_+\-]{1,16}")


# -- channel patterns ----------------------------------------------------------------


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a usable channel pattern, else raise InvalidChannel.

    The rules are those of channel names, applied to the text besides the ``*``s: at
    most 63 bytes of UTF-8, no NUL or control characters, valid unicode.
    """
    if not isinstance(pattern, str):
        raise InvalidChannel(f"channel pattern must be a string, not {type(pattern).__name__}")
    if not pattern:
        raise InvalidChannel("channel pattern is empty")
    shown = repr(pattern[:80])
    if any(0xD800 <= ord(c) <= 0xDFFF for c in pattern):
        raise InvalidChannel(f"channel pattern {shown} is not valid unicode")
    if _CONTROL.search(pattern):
        raise InvalidChannel(f"channel pattern {shown} contains a control character")
    size = len(pattern.replace("*", "").encode("utf-8"))
    if size > MAX_CHANNEL_BYTES:
        raise InvalidChannel(
            f"channel pattern {shown} has {size} bytes besides its '*'s; "
            f"a channel name has at most {MAX_CHANNEL_BYTES}"
        )
    return pattern


def pattern_matches(pattern: str, channel: str) -> bool:
    """Whether ``channel`` matches ``pattern``, where each ``*`` matches zero or more
    characters and every other character only itself.

    No regex and no backtracking: the text before the first ``*`` must start the channel,
    the text after the last must end it, and each piece in between is found once, left
    to right, after the previous one (the leftmost match is always the best choice). So
    the cost is at most ``len(channel) * len(pattern)``, whatever the pattern, and
    ``a*a*a*a*b`` against ``aaaa...`` is as quick as any other.
    """
    if "*" not in pattern:
        return pattern == channel
    first, *middle, last = pattern.split("*")
    if len(first) + len(last) > len(channel):
        return False
    if not (channel.startswith(first) and channel.endswith(last)):
        return False
    position, end = len(first), len(channel) - len(last)
    for piece in middle:
        if piece:
            found = channel.find(piece, position, end)
            if found < 0:
                return False
            position = found + len(piece)
    return True


def matches_any(patterns: Iterable[str], channel: str) -> bool:
    return any(pattern_matches(pattern, channel) for pattern in patterns)


# -- keys ----------------------------------------------------------------------------


def check_secret(secret: str | bytes, source: str = "jwt_secret") -> bytes:
    """The HS256 secret as bytes, or a ConfigError if it is too short to be safe.

    Anyone holding one token (every browser user holds theirs) can test guesses of an
    HS256 secret offline, as fast as they can compute HMACs; only a long random secret
    makes that hopeless. 32 bytes is the SHA-256 output size, the minimum RFC 7518 sets.
    """
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if raw.lstrip().startswith(b"-----BEGIN"):
        raise ConfigError(
            f"{source} looks like a PEM key; a key pair is for RS256/ES256 "
            "(--jwt-public-key on serve, --jwt-private-key on token)"
        )
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{source} is {len(raw)} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            "(a short secret can be guessed offline from any one token), e.g. the output of "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return raw


def read_key_file(path: Path, source: str) -> bytes:
    """The bytes of a key file, or a ConfigError naming ``source`` and the path."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {source} {str(path)!r}: {exc.strerror or exc}") from None


def _key_algorithm(key: object, source: str) -> str:
    """RS256 for an RSA key of at least 2048 bits, ES256 for an EC P-256 key."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"{source} is a {key.key_size}-bit RSA key; use at least {MIN_RSA_BITS} bits"
            )
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(
                f"{source} is an EC key on {key.curve.name}; ES256 needs P-256 (secp256r1)"
            )
        return "ES256"
    raise ConfigError(
        f"{source} is a {type(key).__name__.lstrip('_')}; use an RSA key (RS256) "
        "or an EC P-256 key (ES256)"
    )


def load_public_key(pem: str | bytes, source: str = "jwt_public_key") -> tuple[PublicKey, str]:
    """A PEM public key and the one algorithm it verifies (``RS256`` or ``ES256``)."""
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(
            f"{source} is a private key; the relay needs only the public key "
            "(openssl pkey -in private.pem -pubout -out public.pem)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{source} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from None
    algorithm = _key_algorithm(key, source)
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)  # checked above
    return key, algorithm


def load_private_key(pem: str | bytes, source: str = "private key") -> tuple[PrivateKey, str]:
    """A PEM private key (unencrypted) and the one algorithm it signs with."""
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise ConfigError(
            f"{source} is encrypted; decrypt it (openssl pkey -in key.pem -out plain.pem)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{source} is not a PEM private key") from None
    algorithm = _key_algorithm(key, source)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)  # checked above
    return key, algorithm


# -- what a token allows ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Access:
    """What a verified token allows its bearer."""

    #: The token's ``sub``, if it has one: who the bearer is, for logs and limits.
    subject: str | None
    #: The token's ``exp``, in seconds since the epoch.
    expires_at: int
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()

    def can_subscribe(self, channel: str) -> bool:
        return matches_any(self.subscribe, channel)

    def can_publish(self, channel: str) -> bool:
        return matches_any(self.publish, channel)


def _invalid(reason: str) -> AuthError:
    return AuthError(401, reason)


class TokenVerifier:
    """Checks tokens against one key: an HS256 ``secret`` or an RS256/ES256 public key.

    Exactly one of the two: with a public key, HS256 tokens are refused (otherwise anyone
    could sign an HS256 token with the public key, which is public, as the secret). ``alg:
    none`` is always refused, and so is every algorithm but the key's one. ``leeway`` is
    the clock skew, in seconds, tolerated on ``exp``, ``nbf`` and ``iat``.
    """

    def __init__(
        self,
        secret: str | bytes | None = None,
        public_key_pem: str | bytes | None = None,
        leeway: float = 5,
    ) -> None:
        if (secret is None) == (public_key_pem is None):
            raise ConfigError(
                "a token verifier needs a jwt_secret (HS256) or a jwt_public_key "
                "(RS256/ES256), exactly one of them"
            )
        if not 0 <= leeway < math.inf:
            raise ConfigError(f"leeway must be a non-negative number of seconds, not {leeway}")
        self._key: bytes | PublicKey
        if secret is not None:
            self._key, self.algorithm = check_secret(secret), "HS256"
        else:
            assert public_key_pem is not None
            self._key, self.algorithm = load_public_key(public_key_pem)
        self.leeway = leeway
        self._jwt = jwt.PyJWT({"enforce_minimum_key_length": True})

    def __repr__(self) -> str:
        return f"<TokenVerifier {self.algorithm} leeway={self.leeway}>"

    def verify(self, token: str) -> Access:
        """What ``token`` allows, or an AuthError(401) whose reason says what is wrong."""
        if not isinstance(token, str) or not token:
            raise _invalid("token is empty")
        if len(token) > MAX_TOKEN_CHARS:
            raise _invalid(f"token is longer than {MAX_TOKEN_CHARS} characters")
        if not _JWT_SHAPE.fullmatch(token):
            raise _invalid("malformed token: not a JWT (three base64url parts joined by dots)")
        try:
            claims = self._jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                audience=AUDIENCE,
                leeway=self.leeway,
                # sub is checked in _access, with a clearer reason and on every pyjwt.
                options={"require": ["exp", "aud", CLAIM], "verify_sub": False},
            )
        except jwt.PyJWTError as exc:
            raise _invalid(self._reason(exc, token)) from exc
        return _access(claims)

    def _reason(self, exc: jwt.PyJWTError, token: str) -> str:
        """A one-line reason for a pyjwt error, in our words (never the token itself)."""
        if isinstance(exc, jwt.ExpiredSignatureError):
            return "token has expired"
        if isinstance(exc, jwt.ImmatureSignatureError):
            return "token is not valid yet (its nbf or iat is in the future)"
        if isinstance(exc, jwt.InvalidSignatureError):
            return "token signature does not verify (wrong key, or the token was altered)"
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"token has no {exc.claim!r} claim"
        if isinstance(exc, jwt.InvalidAudienceError):
            return f"token is for another audience; sserelay needs aud {AUDIENCE!r}"
        if isinstance(exc, jwt.InvalidAlgorithmError):
            return f"token {_algorithm_of(token)} is not accepted; this relay uses {self.algorithm}"
        if isinstance(exc, jwt.InvalidIssuedAtError):
            return "malformed token: iat must be a number"
        message = str(exc)
        for claim in ("exp", "nbf"):
            if f"({claim}) must be" in message:
                return f"malformed token: {claim} must be a number"
        return "malformed token"


def _algorithm_of(token: str) -> str:
    """``algorithm 'none'`` if the header names a plain one, else ``algorithm``."""
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError:
        return "algorithm"
    if isinstance(alg, str) and _PLAIN_ALG.fullmatch(alg):
        return f"algorithm {alg!r}"
    return "algorithm"


def _access(claims: Mapping[str, Any]) -> Access:
    """The Access a verified token's claims grant; AuthError(401) if malformed."""
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise _invalid("malformed token: exp must be a number")
    subject = claims.get("sub")
    if subject is not None and (
        not isinstance(subject, str) or len(subject) > MAX_SUBJECT_CHARS or _CONTROL.search(subject)
    ):
        raise _invalid(
            f"malformed token: sub must be a string of at most {MAX_SUBJECT_CHARS} "
            "characters without control characters"
        )
    grants = claims[CLAIM]
    if not isinstance(grants, dict):
        raise _invalid(f"malformed token: the {CLAIM!r} claim must be an object")
    return Access(
        subject=subject,
        expires_at=int(exp),
        subscribe=_granted(grants, "subscribe"),
        publish=_granted(grants, "publish"),
    )


def _granted(grants: Mapping[str, Any], name: str) -> tuple[str, ...]:
    patterns = grants.get(name, [])
    if not isinstance(patterns, list):
        raise _invalid(f"malformed token: {CLAIM}.{name} must be a list of channel patterns")
    try:
        return tuple(validate_pattern(p) for p in patterns)
    except InvalidChannel as exc:
        raise _invalid(f"malformed token: {CLAIM}.{name}: {exc}") from None


# -- the policy ----------------------------------------------------------------------


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


# -- minting -------------------------------------------------------------------------


def mint_token(
    key: str | bytes,
    *,
    subscribe: Iterable[str] = (),
    publish: Iterable[str] = (),
    ttl: float = 3600,
    subject: str | None = None,
    algorithm: str = "HS256",
) -> str:
    """A token allowing ``subscribe`` and ``publish`` (channel patterns) for ``ttl`` seconds.

    ``key`` is the shared secret for HS256, or a PEM private key (RSA for RS256, EC P-256
    for ES256). For apps: hand the token to the browser, which sends it as a cookie or
    ``?token=`` (``EventSource`` cannot set headers); keep ``ttl`` short.
    """
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    if not 0 < ttl < math.inf:
        raise ConfigError(f"ttl must be a positive number of seconds, not {ttl}")
    signing_key: bytes | PrivateKey
    if algorithm == "HS256":
        signing_key = check_secret(key, "secret")
    else:
        signing_key, key_algorithm = load_private_key(key)
        if key_algorithm != algorithm:
            raise ConfigError(f"this private key signs {key_algorithm}, not {algorithm}")
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + math.ceil(ttl),
        CLAIM: {
            "subscribe": _patterns("subscribe", subscribe),
            "publish": _patterns("publish", publish),
        },
    }
    if subject is not None:
        if not subject or len(subject) > MAX_SUBJECT_CHARS or _CONTROL.search(subject):
            raise ConfigError(
                f"subject must be 1 to {MAX_SUBJECT_CHARS} characters without control characters"
            )
        claims["sub"] = subject
    return jwt.encode(claims, signing_key, algorithm=algorithm)


def _patterns(name: str, patterns: Iterable[str]) -> list[str]:
    if isinstance(patterns, str):
        raise TypeError(f"{name} takes a list of channel patterns, not a string")
    return [validate_pattern(p) for p in patterns]
