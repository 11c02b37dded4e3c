"""Signed tokens (JWT): what a token grants (:class:`Access`), verifying and minting.

A token is a JWT signed with HS256 (a shared secret) or RS256/ES256 (the relay holds
only the public key). Its claims::

    {"aud": "sserelay", "exp": 1700003600, "nbf": 1700000000, "iat": 1700000000.125,
     "sub": "alice", "jti": "4f1c0e...",
     "sserelay": {"subscribe": ["lobby", "room-*"], "publish": ["lobby"]}}

``exp``, ``aud`` and ``sserelay`` are required; ``sub`` is optional (it names the bearer
in logs and per-subject limits). ``iat`` (when it was issued, fractions of a second
allowed) and ``jti`` (the token's own id) are optional: a revocation
(:mod:`sserelay.access.revocations`) names a subject or a jti and refuses the tokens
issued before it. A channel pattern is an exact channel name, or a name
with ``*`` wildcards, each matching any run of zero or more characters (``room-*``,
``*-feed``, ``user/*/inbox``, ``*``). Nothing else is special: ``?``, ``[`` and ``\\`` are
literal, and there is no escape, so a pattern cannot grant a channel whose name contains
``*`` without also granting the names the ``*`` matches.

Without a key configured the relay is open. With one, channels matching a public pattern
need no token and every other channel needs a token whose ``subscribe`` patterns cover it;
publishing always needs a token whose ``publish`` patterns cover the channel.

This module is pure logic: the policy (:mod:`sserelay.access.policy`) asks a
:class:`TokenVerifier`; an :class:`~sserelay.errors.AuthError` carries the status and the
one-line reason to answer with.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ..errors import AuthError, ConfigError, InvalidChannel
from .keys import PrivateKey, PublicKey, check_secret, load_private_key, load_public_key
from .patterns import CONTROL, matches_any, validate_pattern

#: The ``aud`` every token must carry, so a token minted for another service (same
#: issuer, same key) cannot be replayed here.
AUDIENCE = "sserelay"
#: The private claim holding the bearer's channel patterns.
CLAIM = "sserelay"
#: Longer tokens are refused before any parsing.
MAX_TOKEN_CHARS = 8192
MAX_SUBJECT_CHARS = 255
ALGORITHMS = ("HS256", "RS256", "ES256")

#: Three base64url segments (padding tolerated) joined by dots: the shape of a compact JWS.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_\-=]*\.[A-Za-z0-9_\-=]*\.[A-Za-z0-9_\-=]*")
#: An ``alg`` header value short and plain enough to quote in a reason.
_PLAIN_ALG = re.compile(r"[A-Za-z0-9_+\-]{1,16}")


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
    #: The ``admin`` grant: the operator's views (``/healthz`` details), ``POST /revoke``.
    admin: bool = False
    #: The token's ``iat`` (seconds since the epoch, maybe fractional), if it has one.
    issued_at: float | None = None
    #: The token's ``jti``, if it has one.
    jti: str | None = None

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
        not isinstance(subject, str) or len(subject) > MAX_SUBJECT_CHARS or CONTROL.search(subject)
    ):
        raise _invalid(
            f"malformed token: sub must be a string of at most {MAX_SUBJECT_CHARS} "
            "characters without control characters"
        )
    grants = claims[CLAIM]
    if not isinstance(grants, dict):
        raise _invalid(f"malformed token: the {CLAIM!r} claim must be an object")
    admin = grants.get("admin", False)
    if not isinstance(admin, bool):
        raise _invalid(f"malformed token: {CLAIM}.admin must be true or false")
    jti = claims.get("jti")
    if jti is not None and (
        not isinstance(jti, str) or len(jti) > MAX_SUBJECT_CHARS or CONTROL.search(jti)
    ):
        raise _invalid(
            f"malformed token: jti must be a string of at most {MAX_SUBJECT_CHARS} "
            "characters without control characters"
        )
    iat = claims.get("iat")  # a number if present: pyjwt checked it
    issued_at = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None
    return Access(
        subject=subject,
        expires_at=int(exp),
        subscribe=_granted(grants, "subscribe"),
        publish=_granted(grants, "publish"),
        admin=admin,
        issued_at=issued_at,
        jti=jti,
    )


def _granted(grants: Mapping[str, Any], name: str) -> tuple[str, ...]:
    patterns = grants.get(name, [])
    if not isinstance(patterns, list):
        raise _invalid(f"malformed token: {CLAIM}.{name} must be a list of channel patterns")
    try:
        return tuple(validate_pattern(p) for p in patterns)
    except InvalidChannel as exc:
        raise _invalid(f"malformed token: {CLAIM}.{name}: {exc}") from None


# -- minting -------------------------------------------------------------------------


def mint_token(
    key: str | bytes,
    *,
    subscribe: Iterable[str] = (),
    publish: Iterable[str] = (),
    ttl: float = 3600,
    subject: str | None = None,
    algorithm: str = "HS256",
    admin: bool = False,
    jti: str | None = None,
) -> str:
    """A token allowing ``subscribe`` and ``publish`` (channel patterns) for ``ttl`` seconds.

    Its ``iat`` has millisecond precision, so that a token minted right after a revocation
    (:func:`sserelay.revoke`) counts as issued after it; ``jti`` names the token, for a
    revocation of this one token.

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
    issued = time.time()
    now = int(issued)
    claims: dict[str, Any] = {
        "aud": AUDIENCE,
        "iat": math.floor(issued * 1000) / 1000,
        "nbf": now,
        "exp": now + math.ceil(ttl),
        CLAIM: {
            "subscribe": _patterns("subscribe", subscribe),
            "publish": _patterns("publish", publish),
        },
    }
    if admin:
        claims[CLAIM]["admin"] = True
    if subject is not None:
        if not subject or len(subject) > MAX_SUBJECT_CHARS or CONTROL.search(subject):
            raise ConfigError(
                f"subject must be 1 to {MAX_SUBJECT_CHARS} characters without control characters"
            )
        claims["sub"] = subject
    if jti is not None:
        if not jti or len(jti) > MAX_SUBJECT_CHARS or CONTROL.search(jti):
            raise ConfigError(
                f"jti must be 1 to {MAX_SUBJECT_CHARS} characters without control characters"
            )
        claims["jti"] = jti
    return jwt.encode(claims, signing_key, algorithm=algorithm)


def _patterns(name: str, patterns: Iterable[str]) -> list[str]:
    if isinstance(patterns, str):
        raise TypeError(f"{name} takes a list of channel patterns, not a string")
    return [validate_pattern(p) for p in patterns]
