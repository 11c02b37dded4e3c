"""Tokens and the channel policy (``sserelay.auth``): every rule, both ways. Pure logic.

Keys are generated here with ``cryptography``; hostile tokens (``alg: none``, HS256 signed
with the public key) are built by hand, since pyjwt refuses to make them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from sserelay import cli
from sserelay.access.keys import load_private_key, load_public_key
from sserelay.access.patterns import pattern_matches, validate_pattern
from sserelay.access.policy import ChannelPolicy, policy_from_settings, token_from
from sserelay.access.tokens import AUDIENCE, MAX_TOKEN_CHARS, Access, TokenVerifier, mint_token
from sserelay.config import Settings, settings_from_env
from sserelay.errors import AuthError, ConfigError, InvalidChannel, SseRelayError

SECRET = "k" * 16 + "0123456789abcdef"  # 32 bytes: the minimum
OTHER_SECRET = "another secret, also 32 bytes ok"

# -- keys and token helpers -------------------------------------------------------------


@functools.cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def other_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def ec_key(curve: type[ec.EllipticCurve] = ec.SECP256R1) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve())


def private_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def public_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for a one-hour token that may read ``lobby``; ``None`` drops a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "sub": "alice",
        "sserelay": {"subscribe": ["lobby"], "publish": []},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret.encode(), algorithm="HS256")


def hand_signed(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built without pyjwt: signed with HMAC-SHA256 under ``hmac_key``, or unsigned."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    if hmac_key is None:
        return signing_input + "."
    mac = hmac.new(hmac_key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def hs_verifier(**kwargs: Any) -> TokenVerifier:
    return TokenVerifier(secret=SECRET, **kwargs)


def rs_verifier() -> TokenVerifier:
    return TokenVerifier(public_key_pem=public_pem(rsa_key()))


def es_verifier() -> TokenVerifier:
    return TokenVerifier(public_key_pem=public_pem(ec_key()))


def refused(verifier: TokenVerifier, token: str) -> str:
    """The reason ``verifier`` refuses ``token`` (a 401), checked to be one safe line."""
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    reason = info.value.reason
    assert info.value.status == 401
    assert str(info.value) == reason
    assert "\n" not in reason and reason
    assert not _leaks(reason, token), f"reason {reason!r} quotes the token"
    return reason


def _leaks(reason: str, token: str) -> bool:
    """Whether ``reason`` contains the token or any long piece of it."""
    if len(token) >= 8 and token in reason:
        return True
    return any(len(part) >= 8 and part in reason for part in token.split("."))


# -- channel patterns -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("lobby", "lobby", True),
        ("lobby", "Lobby", False),  # case-sensitive, like channel names
        ("lobby", "lobby2", False),
        ("lobby", "lobb", False),
        ("room-*", "room-1", True),
        ("room-*", "room-", True),  # * matches zero characters
        ("room-*", "room", False),
        ("room-*", "xroom-1", False),
        ("*-feed", "news-feed", True),
        ("*-feed", "-feed", True),
        ("*-feed", "news-feed2", False),
        ("a*b", "ab", True),
        ("a*b", "axxb", True),
        ("a*b", "a/b/c/b", True),
        ("a*b", "abc", False),
        ("a*b", "ba", False),
        ("user/*/inbox", "user/7/inbox", True),
        ("user/*/inbox", "user//inbox", True),
        ("user/*/inbox", "user/7/outbox", False),
        ("*", "anything at all", True),
        ("*", "x", True),
        ("**", "x", True),
        ("a**b", "ab", True),
        ("*a*", "bab", True),
        ("*a*", "bbb", False),
        ("ab*ba", "aba", False),  # prefix and suffix may not overlap
        ("ab*ba", "abba", True),
        ("a*b*c", "acb", False),  # pieces in order
        ("a*b*c", "abc", True),
        ("a*b*c", "axbxbxc", True),
        ("*ab*ab*", "ab", False),
        ("*ab*ab*", "abab", True),
        # only * is special: ? [ ] \ . are literal (no fnmatch, no regex)
        ("room?", "room1", False),
        ("room?", "room?", True),
        ("[ab]", "a", False),
        ("[ab]", "[ab]", True),
        ("a.c", "abc", False),
        ("a\\*", "a\\x", True),
        ("(a|b)*", "a", False),
        # a * in a channel name is an ordinary character to the channel...
        ("a*b", "a*b", True),
        # ...and there is no escape: a pattern can grant "a*b" only with its neighbours
        ("a*", "a*", True),
        ("a*", "ab", True),
    ],
)
def test_pattern_matches(pattern: str, channel: str, expected: bool) -> None:
    assert pattern_matches(validate_pattern(pattern), channel) is expected


def test_a_channel_named_with_a_star_cannot_be_granted_alone() -> None:
    """The documented limit: every pattern matching 'news*' also matches other names."""
    for pattern in ("news*", "new*", "*s*", "n*", "*"):
        assert pattern_matches(pattern, "news*")
        assert pattern_matches(pattern, "news!")


def _reference(pattern: str, channel: str) -> bool:
    """The same language, the obvious (backtracking) way: for short inputs only."""
    regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    return re.fullmatch(regex, channel, re.DOTALL) is not None


@settings(deadline=None, max_examples=500)
@given(
    pattern=st.text(st.sampled_from("ab*"), min_size=1, max_size=10),
    channel=st.text(st.sampled_from("ab*"), max_size=12),
)
def test_matcher_agrees_with_reference_small_alphabet(pattern: str, channel: str) -> None:
    assert pattern_matches(pattern, channel) is _reference(pattern, channel)


@settings(deadline=None)
@given(pattern=st.text(min_size=1, max_size=12), channel=st.text(max_size=16))
def test_matcher_agrees_with_reference_any_text(pattern: str, channel: str) -> None:
    assert pattern_matches(pattern, channel) is _reference(pattern, channel)


@pytest.mark.parametrize(
    ("pattern", "channel"),
    [
        ("a*a*a*a*a*a*a*a*a*a*b", "a" * 63),
        ("*a" * 30 + "*b", "a" * 63),
        ("*aa*aa*aa*aa*aa*aa*ab", "a" * 10_000),  # longer than any channel, still quick
    ],
)
def test_pathological_patterns_finish_fast(pattern: str, channel: str) -> None:
    start = time.perf_counter()
    for _ in range(100):
        assert not pattern_matches(pattern, channel)
    # A backtracking matcher needs billions of steps here; this one a few thousand.
    # The bound is loose because the machine may be busy.
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "pattern", ["lobby", "*", "room-*", "x" * 63 + "*", "*" * 100 + "x" * 63, "é" * 31, "a b"]
)
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "channel pattern is empty"),
        (None, "channel pattern must be a string, not NoneType"),
        (["lobby"], "channel pattern must be a string, not list"),
        ("x" * 64, "has 64 bytes besides its '*'s; a channel name has at most 63"),
        ("*" + "é" * 32, "has 64 bytes besides its '*'s"),
        ("a\x00*", "contains a control character"),
        ("room-*\n", "contains a control character"),
        ("\ud800*", "is not valid unicode"),
    ],
)
def test_invalid_patterns(pattern: object, reason: str) -> None:
    with pytest.raises(InvalidChannel) as info:
        validate_pattern(pattern)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_pattern_lists_allow_nothing() -> None:
    access = Access(subject=None, expires_at=0)
    assert not access.can_subscribe("lobby") and not access.can_publish("lobby")
    assert not ChannelPolicy([], hs_verifier()).is_public("lobby")


# -- the verifier: tokens that pass -------------------------------------------------------


@pytest.mark.parametrize(
    ("make_verifier", "key", "algorithm"),
    [
        (hs_verifier, lambda: SECRET, "HS256"),
        (rs_verifier, lambda: private_pem(rsa_key()), "RS256"),
        (es_verifier, lambda: private_pem(ec_key()), "ES256"),
    ],
)
def test_minted_tokens_verify(make_verifier: Any, key: Any, algorithm: str) -> None:
    token = mint_token(
        key(),
        subscribe=["lobby", "room-*"],
        publish=["lobby"],
        ttl=600,
        subject="alice",
        algorithm=algorithm,
    )
    verifier = make_verifier()
    assert verifier.algorithm == algorithm
    access = verifier.verify(token)
    assert access.subject == "alice"
    assert access.subscribe == ("lobby", "room-*")
    assert access.publish == ("lobby",)
    assert abs(access.expires_at - (time.time() + 600)) < 5
    assert access.can_subscribe("room-42") and access.can_subscribe("lobby")
    assert not access.can_subscribe("rooms") and not access.can_subscribe("admin")
    assert access.can_publish("lobby") and not access.can_publish("room-42")


def test_minted_claims() -> None:
    before = int(time.time())
    token = mint_token(SECRET, subscribe=["a"], ttl=90.5)
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert payload["aud"] == "sserelay"
    assert before <= payload["nbf"] <= payload["iat"] <= time.time()
    # iat to the millisecond (revocations compare it), nbf and exp whole seconds
    assert payload["nbf"] == int(payload["iat"]) and payload["iat"] == round(payload["iat"], 3)
    assert payload["exp"] == payload["nbf"] + 91  # rounded up, never shorter than asked
    assert payload["sserelay"] == {"subscribe": ["a"], "publish": []}
    assert "sub" not in payload


def test_optional_claims_may_be_absent() -> None:
    token = hs256(claims(sub=None, iat=None, nbf=None, sserelay={}))
    access = hs_verifier().verify(token)
    assert (access.subject, access.subscribe, access.publish) == (None, (), ())


def test_audience_list_including_ours_is_accepted() -> None:
    assert hs_verifier().verify(hs256(claims(aud=["billing", AUDIENCE])))


def test_unknown_claims_and_grant_keys_are_ignored() -> None:
    token = hs256(claims(role="admin", sserelay={"subscribe": ["a"], "future": True}))
    assert hs_verifier().verify(token).subscribe == ("a",)


def test_leeway_tolerates_small_clock_skew() -> None:
    now = int(time.time())
    verifier = hs_verifier(leeway=30)
    assert verifier.verify(hs256(claims(exp=now - 10)))
    assert verifier.verify(hs256(claims(nbf=now + 10, iat=now + 10)))


# -- the verifier: tokens that fail ---------------------------------------------------------


def test_expired() -> None:
    token = hs256(claims(exp=int(time.time()) - 60))
    assert refused(hs_verifier(), token) == "token has expired"


def test_expired_just_past_the_leeway() -> None:
    token = hs256(claims(exp=int(time.time()) - 10))
    assert refused(hs_verifier(leeway=0), token) == "token has expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid(claim: str) -> None:
    token = hs256(claims(**{claim: int(time.time()) + 120}))
    assert refused(hs_verifier(), token).startswith("token is not valid yet")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("make_verifier", [hs_verifier, rs_verifier, es_verifier])
def test_alg_none_is_always_refused(alg: str, make_verifier: Any) -> None:
    token = hand_signed({"alg": alg, "typ": "JWT"}, claims(), None)
    reason = refused(make_verifier(), token)
    assert reason.startswith(f"token algorithm {alg!r} is not accepted")


@pytest.mark.parametrize("header", [{"typ": "JWT"}, {"alg": ""}, {"alg": None}, {"alg": 256}])
def test_missing_or_odd_alg_is_refused(header: dict[str, Any]) -> None:
    token = hand_signed(header, claims(), SECRET.encode())
    assert refused(hs_verifier(), token) == (
        "token algorithm is not accepted; this relay uses HS256"
    )


def test_an_alg_too_odd_to_quote_is_not_quoted() -> None:
    token = hand_signed({"alg": "HS256 <script>"}, claims(), SECRET.encode())
    assert refused(hs_verifier(), token) == (
        "token algorithm is not accepted; this relay uses HS256"
    )


@pytest.mark.parametrize(
    ("key", "make_verifier", "expected"),
    [(rsa_key, rs_verifier, "RS256"), (ec_key, es_verifier, "ES256")],
)
def test_hs256_signed_with_the_public_key_is_refused(
    key: Any, make_verifier: Any, expected: str
) -> None:
    """The HS/RS confusion: the public key is public, so anyone could sign this."""
    pem = public_pem(key())
    for variant in (pem, pem.strip(), pem.decode().replace("\n", "\r\n").encode()):
        token = hand_signed({"alg": "HS256", "typ": "JWT"}, claims(), variant)
        reason = refused(make_verifier(), token)
        assert reason == f"token algorithm 'HS256' is not accepted; this relay uses {expected}"


def test_asymmetric_tokens_are_refused_by_an_hs256_relay() -> None:
    for token in (
        mint_token(private_pem(rsa_key()), subscribe=["a"], algorithm="RS256"),
        mint_token(private_pem(ec_key()), subscribe=["a"], algorithm="ES256"),
    ):
        assert "is not accepted; this relay uses HS256" in refused(hs_verifier(), token)


def test_an_rs256_relay_refuses_es256_and_the_reverse() -> None:
    es = mint_token(private_pem(ec_key()), subscribe=["a"], algorithm="ES256")
    rs = mint_token(private_pem(rsa_key()), subscribe=["a"], algorithm="RS256")
    assert refused(rs_verifier(), es).startswith("token algorithm 'ES256' is not accepted")
    assert refused(es_verifier(), rs).startswith("token algorithm 'RS256' is not accepted")


@pytest.mark.parametrize(
    ("token", "make_verifier"),
    [
        (lambda: hs256(claims(), OTHER_SECRET), hs_verifier),
        (
            lambda: mint_token(private_pem(other_rsa_key()), subscribe=["a"], algorithm="RS256"),
            rs_verifier,
        ),
        (
            lambda: mint_token(private_pem(other_ec_key()), subscribe=["a"], algorithm="ES256"),
            es_verifier,
        ),
    ],
)
def test_wrong_key(token: Any, make_verifier: Any) -> None:
    assert refused(make_verifier(), token()) == (
        "token signature does not verify (wrong key, or the token was altered)"
    )


@pytest.mark.parametrize("make_verifier", [hs_verifier, rs_verifier, es_verifier])
def test_tampered_payload(make_verifier: Any) -> None:
    verifier = make_verifier()
    key = {"HS256": SECRET, "RS256": private_pem(rsa_key()), "ES256": private_pem(ec_key())}
    token = mint_token(key[verifier.algorithm], subscribe=["lobby"], algorithm=verifier.algorithm)
    header, _, signature = token.split(".")
    forged = f"{header}.{b64json(claims(sserelay={'subscribe': ['*']}))}.{signature}"
    assert refused(verifier, forged).startswith("token signature does not verify")


@pytest.mark.parametrize("make_verifier", [hs_verifier, rs_verifier, es_verifier])
def test_tampered_signature(make_verifier: Any) -> None:
    verifier = make_verifier()
    key = {"HS256": SECRET, "RS256": private_pem(rsa_key()), "ES256": private_pem(ec_key())}
    token = mint_token(key[verifier.algorithm], subscribe=["lobby"], algorithm=verifier.algorithm)
    head, payload, signature = token.split(".")
    # Change a character in the middle: the last one may only carry padding bits.
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = f"{head}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    assert refused(verifier, tampered).startswith("token signature does not verify")
    truncated = f"{head}.{payload}.{signature[:-4]}"
    assert refused(verifier, truncated) in (
        "token signature does not verify (wrong key, or the token was altered)",
        "malformed token",
    )
    assert refused(verifier, f"{head}.{payload}.").startswith("token signature does not verify")


@pytest.mark.parametrize("claim", ["exp", "aud", "sserelay"])
def test_required_claims(claim: str) -> None:
    token = hs256(claims(**{claim: None}))
    assert refused(hs_verifier(), token) == f"token has no {claim!r} claim"


@pytest.mark.parametrize("aud", ["other-service", ["other", "services"], "SSERELAY", "sserelay "])
def test_wrong_audience(aud: object) -> None:
    token = hs256(claims(aud=aud))
    assert refused(hs_verifier(), token) == (
        "token is for another audience; sserelay needs aud 'sserelay'"
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": "soon"}, "malformed token: exp must be a number"),
        ({"exp": str(int(time.time()) + 3600)}, "malformed token: exp must be a number"),
        ({"nbf": "now"}, "malformed token: nbf must be a number"),
        ({"iat": [1]}, "malformed token: iat must be a number"),
        ({"sub": 42}, "malformed token: sub must be a string"),
        ({"sub": "alice\nINFO forged log line"}, "malformed token: sub must be a string"),
        ({"sub": "x" * 256}, "malformed token: sub must be a string of at most 255"),
        ({"sserelay": ["lobby"]}, "malformed token: the 'sserelay' claim must be an object"),
        ({"sserelay": "lobby"}, "malformed token: the 'sserelay' claim must be an object"),
        (
            {"sserelay": {"subscribe": "lobby"}},
            "malformed token: sserelay.subscribe must be a list of channel patterns",
        ),
        (
            {"sserelay": {"publish": {"lobby": True}}},
            "malformed token: sserelay.publish must be a list of channel patterns",
        ),
        (
            {"sserelay": {"subscribe": ["ok", 7]}},
            "malformed token: sserelay.subscribe: channel pattern must be a string, not int",
        ),
        (
            {"sserelay": {"subscribe": [""]}},
            "malformed token: sserelay.subscribe: channel pattern is empty",
        ),
    ],
)
def test_malformed_claims(changes: dict[str, Any], reason: str) -> None:
    assert refused(hs_verifier(), hs256(claims(**changes))).startswith(reason)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "token is empty"),
        ("x" * (MAX_TOKEN_CHARS + 1), f"token is longer than {MAX_TOKEN_CHARS} characters"),
        ("not a token", "malformed token: not a JWT"),
        ("a.b.c d", "malformed token: not a JWT"),
        ("ééé.ééé.ééé", "malformed token: not a JWT"),
        ("a\x00.b.c", "malformed token: not a JWT"),
        ("abc", "malformed token: not a JWT"),
        ("a.b", "malformed token: not a JWT"),
        ("a.b.c.d", "malformed token: not a JWT"),
        ("a+b.c/d.e", "malformed token: not a JWT"),  # base64, not base64url
        ("a.b.c", "malformed token"),
        ("...", "malformed token"),
        ("=.=.=", "malformed token"),
        (b64json([1, 2]) + "." + b64json({}) + ".", "malformed token"),
    ],
)
def test_malformed_tokens(token: str, reason: str) -> None:
    assert refused(hs_verifier(), token).startswith(reason)


@pytest.mark.parametrize("payload", [b'["lobby"]', b"not json", b'"text"', b"", b"\xff"])
def test_signed_payload_that_is_not_an_object(payload: bytes) -> None:
    signing_input = f"{b64json({'alg': 'HS256'})}.{b64(payload)}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert refused(hs_verifier(), f"{signing_input}.{b64(mac)}") == "malformed token"


def test_reasons_never_contain_the_token() -> None:
    """A sweep over every kind of refusal (each test above checks its own too)."""
    now = int(time.time())
    tokens = [
        hs256(claims(exp=now - 100)),
        hs256(claims(nbf=now + 100)),
        hs256(claims(), OTHER_SECRET),
        hs256(claims(aud="x")),
        hs256(claims(exp=None)),
        hs256(claims(sserelay={"subscribe": ["\x00"]})),
        hand_signed({"alg": "none"}, claims(), None),
        hand_signed({"alg": "HS256"}, claims(), public_pem(rsa_key())),
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl",
    ]
    for token in tokens:
        for verifier in (hs_verifier(), rs_verifier()):
            with pytest.raises(AuthError) as info:
                verifier.verify(token)
            assert not _leaks(info.value.reason, token), info.value.reason
            assert not _leaks(repr(info.value), token)


def test_verifier_configuration() -> None:
    with pytest.raises(ConfigError, match="exactly one of them"):
        TokenVerifier()
    with pytest.raises(ConfigError, match="exactly one of them"):
        TokenVerifier(secret=SECRET, public_key_pem=public_pem(rsa_key()))
    with pytest.raises(ConfigError, match="leeway must be a non-negative"):
        TokenVerifier(secret=SECRET, leeway=-1)
    assert SECRET not in repr(hs_verifier())
    assert repr(rs_verifier()) == "<TokenVerifier RS256 leeway=5>"


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("", "jwt_secret is 0 bytes; use at least 32 random bytes"),
        ("x" * 31, "jwt_secret is 31 bytes; use at least 32 random bytes"),
        ("é" * 15 + "x", "jwt_secret is 31 bytes"),  # bytes, not characters
        ("-----BEGIN PUBLIC KEY-----\n" + "A" * 64, "jwt_secret looks like a PEM key"),
    ],
)
def test_weak_secrets_are_refused(secret: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TokenVerifier(secret=secret)
    assert str(info.value).startswith(message)
    assert TokenVerifier(secret="é" * 16)  # 32 bytes


def test_public_key_checks() -> None:
    assert load_public_key(public_pem(rsa_key()))[1] == "RS256"
    assert load_public_key(public_pem(ec_key()).decode())[1] == "ES256"
    cases = [
        (private_pem(rsa_key()), "is a private key; the relay needs only the public key"),
        (b"garbage", "is not a PEM public key"),
        (b"", "is not a PEM public key"),
        (public_pem(rsa_key(1024)), "is a 1024-bit RSA key; use at least 2048 bits"),
        (public_pem(ec_key(ec.SECP384R1)), "is an EC key on secp384r1; ES256 needs P-256"),
        (public_pem(ed25519.Ed25519PrivateKey.generate()), "use an RSA key (RS256)"),
    ]
    for pem, message in cases:
        with pytest.raises(ConfigError) as info:
            TokenVerifier(public_key_pem=pem)
        assert message in str(info.value), str(info.value)


def test_private_key_checks() -> None:
    assert load_private_key(private_pem(rsa_key()))[1] == "RS256"
    assert load_private_key(private_pem(ec_key()))[1] == "ES256"
    encrypted = rsa_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"password"),
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        load_private_key(encrypted)
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        load_private_key(public_pem(rsa_key()))


# -- fuzzing the verifier -----------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(deadline=None, max_examples=300)
@given(token=st.text(max_size=200) | st.text(st.sampled_from("ab.=-_Az09"), max_size=60))
def test_fuzz_any_string_is_an_auth_error(token: str) -> None:
    for verifier in (hs_verifier(), es_verifier()):
        with pytest.raises(AuthError) as info:
            verifier.verify(token)
        assert info.value.status == 401 and "\n" not in info.value.reason


@settings(deadline=None, max_examples=200)
@given(
    header=st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(["HS256", "RS256", "ES256", "none", "HS512", ""]) | _json,
            "typ": _json,
            "kid": _json,
            "crit": _json | st.just(["b64"]),
            "b64": st.booleans() | _json,
            "jwk": _json,
        },
    ),
    payload=_json | st.binary(max_size=30),
    signature=st.binary(max_size=80),
)
def test_fuzz_structured_tokens_are_auth_errors(
    header: dict[str, Any], payload: object, signature: bytes
) -> None:
    body = b64(payload) if isinstance(payload, bytes) else b64json(payload)
    token = f"{b64json(header)}.{body}.{b64(signature)}"
    for verifier in (hs_verifier(), rs_verifier(), es_verifier()):
        with pytest.raises(AuthError):
            verifier.verify(token)


_grants = st.fixed_dictionaries(
    {},
    optional={
        "subscribe": st.lists(st.text(max_size=10), max_size=3) | _json,
        "publish": st.lists(st.text(max_size=10), max_size=3) | _json,
    },
)


@settings(deadline=None, max_examples=300)
@given(
    changes=st.fixed_dictionaries(
        {},
        optional={
            "exp": _json | st.integers(-(2**70), 2**70),
            "nbf": _json,
            "iat": _json,
            "aud": _json | st.just(AUDIENCE) | st.lists(st.just(AUDIENCE) | st.text()),
            "sub": _json,
            "sserelay": _grants | _json,
            "jti": _json,
            "iss": st.text(max_size=5),
        },
    ),
    drop=st.sets(st.sampled_from(["exp", "aud", "sserelay", "sub"])),
)
def test_fuzz_signed_claims_give_access_or_auth_error(
    changes: dict[str, Any], drop: set[str]
) -> None:
    """With a valid signature, any claims: an Access or an AuthError, nothing else."""
    payload = claims(**changes)
    for name in drop:
        payload.pop(name, None)
    try:
        access = hs_verifier().verify(hs256(payload))
    except AuthError as exc:
        assert exc.status == 401 and "\n" not in exc.reason
    else:
        assert isinstance(access.expires_at, int)
        assert access.subject is None or isinstance(access.subject, str)
        assert all(isinstance(p, str) for p in access.subscribe + access.publish)


# -- the policy -----------------------------------------------------------------------------


def test_open_relay_allows_everything() -> None:
    policy = ChannelPolicy(["lobby"], None)
    assert policy.is_open and policy.is_public("private")
    assert policy.authorise_subscribe(["a", "b"], None) is None
    assert policy.authorise_subscribe(["a"], "garbage") is None
    assert policy.authorise_publish("a", None) is None


def policy() -> ChannelPolicy:
    return ChannelPolicy(["lobby", "news-*"], hs_verifier())


def test_public_channels_need_no_token() -> None:
    assert not policy().is_open
    assert policy().authorise_subscribe(["lobby", "news-sport"], None) is None
    assert policy().authorise_subscribe([], None) is None


def test_public_channels_with_a_token_give_its_access() -> None:
    token = mint_token(SECRET, subscribe=["x"], subject="bob")
    access = policy().authorise_subscribe(["lobby"], token)
    assert access is not None and access.subject == "bob"


def test_public_channels_ignore_a_bad_token() -> None:
    """A stale cookie must not lock a browser out of what anyone may read."""
    expired = hs256(claims(exp=int(time.time()) - 3600))
    for token in (expired, "garbage", ""):
        assert policy().authorise_subscribe(["lobby"], token) is None


def _auth_error(call: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        call()
    return info.value


def test_private_channel_without_token_is_401() -> None:
    error = _auth_error(lambda: policy().authorise_subscribe(["lobby", "secret"], None))
    assert (error.status, error.reason) == (401, "channel 'secret' is private; it needs a token")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: "garbage", "malformed token: not a JWT"),
        (lambda: "a.b.c", "malformed token"),
        (lambda: "", "token is empty"),  # e.g. a bare "Authorization: Bearer"
        (lambda: hs256(claims(exp=int(time.time()) - 60)), "token has expired"),
        (lambda: hs256(claims(), OTHER_SECRET), "token signature does not verify"),
    ],
)
def test_private_channel_with_invalid_token_is_401(token: Any, reason: str) -> None:
    error = _auth_error(lambda: policy().authorise_subscribe(["secret"], token()))
    assert error.status == 401 and error.reason.startswith(reason)


def test_private_channels_covered_by_the_token() -> None:
    token = mint_token(SECRET, subscribe=["room-*", "inbox/alice"], subject="alice")
    access = policy().authorise_subscribe(["lobby", "room-1", "room-2", "inbox/alice"], token)
    assert access is not None and access.subject == "alice"


def test_uncovered_channel_is_403_naming_the_first() -> None:
    token = mint_token(SECRET, subscribe=["room-*"])
    error = _auth_error(
        lambda: policy().authorise_subscribe(["lobby", "room-1", "admin", "ops"], token)
    )
    assert (error.status, error.reason) == (
        403,
        "token does not allow subscribing to channel 'admin'",
    )


def test_a_publish_grant_does_not_allow_subscribing() -> None:
    token = mint_token(SECRET, publish=["secret"])
    assert _auth_error(lambda: policy().authorise_subscribe(["secret"], token)).status == 403


def test_publish() -> None:
    publisher = mint_token(SECRET, publish=["room-*"])
    reader = mint_token(SECRET, subscribe=["*"])
    access = policy().authorise_publish("room-1", publisher)
    assert access is not None and access.can_publish("room-1")
    missing = _auth_error(lambda: policy().authorise_publish("room-1", None))
    assert (missing.status, missing.reason) == (401, "publishing needs a token")
    # Public channels are public to read, not to write.
    assert _auth_error(lambda: policy().authorise_publish("lobby", None)).status == 401
    denied = _auth_error(lambda: policy().authorise_publish("room-1", reader))
    assert (denied.status, denied.reason) == (
        403,
        "token does not allow publishing to channel 'room-1'",
    )
    assert _auth_error(lambda: policy().authorise_publish("lobby", publisher)).status == 403
    assert _auth_error(lambda: policy().authorise_publish("x", "garbage")).status == 401


def test_long_channel_names_are_cut_in_reasons() -> None:
    error = _auth_error(lambda: policy().authorise_subscribe(["x" * 1000], None))
    assert "x" * 81 not in error.reason and "x" * 80 in error.reason


def test_policy_refuses_bad_public_patterns() -> None:
    with pytest.raises(InvalidChannel):
        ChannelPolicy(["ok", ""], hs_verifier())


# -- where the token comes from ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({}, [], None),
        ({"authorization": "Bearer h.h.h"}, [], "h.h.h"),
        ({"authorization": "Bearer h", "cookie": "sserelay_token=c"}, [("token", "q")], "h"),
        ({"cookie": "sserelay_token=c"}, [("token", "q")], "c"),
        ({}, [("token", "q")], "q"),
        ({}, [("a", "1"), ("token", ""), ("token", "q1"), ("token", "q2")], "q1"),
        ({"authorization": "bearer h"}, [], "h"),
        ({"authorization": "BEARER \t h \t"}, [], "h"),
        ({"authorization": "Bearer\th"}, [], "h"),
        # A Bearer header wins even when malformed: the verifier refuses it (401).
        ({"authorization": "Bearer", "cookie": "sserelay_token=c"}, [], ""),
        ({"authorization": "Bearer   "}, [("token", "q")], ""),
        ({"authorization": "Bearer a b c"}, [], "a b c"),
        # Other schemes are a proxy's business, not ours.
        ({"authorization": "Basic dXNlcjpwYXNz", "cookie": "sserelay_token=c"}, [], "c"),
        ({"authorization": "Bearerx h"}, [("token", "q")], "q"),
        ({"authorization": ""}, [("token", "q")], "q"),
        ({"authorization": "   "}, [], None),
    ],
)
def test_token_precedence(
    headers: dict[str, str], query: list[tuple[str, str]], expected: str | None
) -> None:
    assert token_from(headers, query, "sserelay_token") == expected


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ("sserelay_token=abc", "abc"),
        ("a=1; sserelay_token=abc; b=2", "abc"),
        ("a=1;sserelay_token=abc;b=2", "abc"),
        ('sserelay_token="abc"', "abc"),
        ("sserelay_token= abc ", "abc"),
        ("sserelay_token=a=b=c", "a=b=c"),
        ("sserelay_token=; sserelay_token=second", "second"),
        ("sserelay_token=first; sserelay_token=second", "first"),
        ("xsserelay_token=abc", None),
        ("sserelay_tokenx=abc", None),
        ("SSERELAY_TOKEN=abc", None),  # cookie names are case-sensitive
        ("sserelay_token", None),
        ("sserelay_token=", None),
        ('sserelay_token=""', None),
        ("", None),
        (";;;", None),
        ("=", None),
        ('"', None),
        ("\x00\x01;=;sserelay_token=ok", "ok"),
        ("garbage]][[; sserelay_token=ok; $Version=1; ,,,", "ok"),
        ('a="unterminated; sserelay_token=ok', "ok"),
        ("é=ü; sserelay_token=ok", "ok"),
    ],
)
def test_cookie_parsing(cookie: str, expected: str | None) -> None:
    assert token_from({"cookie": cookie}, [], "sserelay_token") == expected


@settings(deadline=None, max_examples=300)
@given(
    authorization=st.none() | st.text(max_size=30),
    cookie=st.none() | st.text(max_size=60) | st.text(st.sampled_from('sn=;" t\x00'), max_size=30),
    query=st.lists(st.tuples(st.sampled_from(["token", "x"]) | st.text(max_size=5), st.text())),
)
def test_fuzz_token_from_never_raises(
    authorization: str | None, cookie: str | None, query: list[tuple[str, str]]
) -> None:
    headers = {
        name: value
        for name, value in (("authorization", authorization), ("cookie", cookie))
        if value is not None
    }
    token = token_from(headers, query, "sn")
    assert token is None or isinstance(token, str)


# -- minting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: mint_token(SECRET, subscribe="lobby"), TypeError, "not a string"),
        (lambda: mint_token(SECRET, publish="lobby"), TypeError, "not a string"),
        (lambda: mint_token(SECRET, subscribe=[""]), InvalidChannel, "pattern is empty"),
        (lambda: mint_token(SECRET, ttl=0), ConfigError, "ttl must be a positive"),
        (lambda: mint_token(SECRET, ttl=float("inf")), ConfigError, "ttl must be a positive"),
        (lambda: mint_token(SECRET, ttl=float("nan")), ConfigError, "ttl must be a positive"),
        (lambda: mint_token(SECRET, algorithm="none"), ConfigError, "algorithm must be one of"),
        (lambda: mint_token(SECRET, algorithm="HS512"), ConfigError, "algorithm must be one of"),
        (lambda: mint_token("short"), ConfigError, "secret is 5 bytes"),
        (lambda: mint_token(private_pem(rsa_key())), ConfigError, "looks like a PEM key"),
        (lambda: mint_token(SECRET, algorithm="RS256"), ConfigError, "not a PEM private key"),
        (
            lambda: mint_token(private_pem(ec_key()), algorithm="RS256"),
            ConfigError,
            "this private key signs ES256, not RS256",
        ),
        (lambda: mint_token(SECRET, subject=""), ConfigError, "subject must be 1 to 255"),
        (lambda: mint_token(SECRET, subject="a\nb"), ConfigError, "subject must be 1 to 255"),
    ],
)
def test_mint_refuses(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
    if error is not TypeError:
        assert isinstance(info.value, SseRelayError)


# -- the token command ------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("SSERELAY_JWT_SECRET", "SSERELAY_JWT_PUBLIC_KEY", "SSERELAY_PUBLIC_CHANNELS"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["token", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_token_command_with_secret_from_env(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("SSERELAY_JWT_SECRET", SECRET)
    status, out, err = _cli(
        capsys,
        *("--channel", "lobby", "--channel", "room-*", "--publish", "lobby"),
        *("--ttl", "15m", "--subject", "alice"),
    )
    assert (status, err) == (0, "")
    token = out.strip()
    assert out == token + "\n"  # only the token, so $(sserelay token ...) works
    access = hs_verifier().verify(token)
    assert access.subscribe == ("lobby", "room-*") and access.publish == ("lobby",)
    assert access.subject == "alice"
    assert abs(access.expires_at - (time.time() + 900)) < 5


def test_token_command_with_secret_flag(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("SSERELAY_JWT_SECRET", OTHER_SECRET)  # the flag wins
    status, out, _ = _cli(capsys, "--channel", "lobby", "--jwt-secret", SECRET)
    assert status == 0
    access = hs_verifier().verify(out.strip())
    assert access.subscribe == ("lobby",) and access.subject is None
    assert abs(access.expires_at - (time.time() + 3600)) < 5  # default ttl: one hour


@pytest.mark.parametrize(("key", "make_verifier"), [(rsa_key, rs_verifier), (ec_key, es_verifier)])
def test_token_command_with_private_key(
    key: Any,
    make_verifier: Any,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    pem = tmp_path / "private.pem"
    pem.write_bytes(private_pem(key()))
    status, out, _ = _cli(capsys, "--publish", "jobs", "--jwt-private-key", str(pem))
    assert status == 0
    assert make_verifier().verify(out.strip()).publish == ("jobs",)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jwt-secret", SECRET], "token needs at least one --channel, --publish or --admin"),
        (["--channel", "lobby"], "token needs a key: SSERELAY_JWT_SECRET, --jwt-secret or"),
        (["--channel", "lobby", "--jwt-secret", "short"], "secret is 5 bytes"),
        (["--channel", "", "--jwt-secret", SECRET], "channel pattern is empty"),
        (["--channel", "a", "--jwt-private-key", "/nonexistent.pem"], "cannot read --jwt-priv"),
    ],
)
def test_token_command_errors(
    args: list[str],
    message: str,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = _cli(capsys, *args)
    assert status == 2 and out == ""
    assert err.startswith("sserelay: error: ") and message in err, err
    assert SECRET not in err


def test_token_command_bad_ttl(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["token", "--channel", "a", "--jwt-secret", SECRET, "--ttl", "soon"])
    assert info.value.code == 2
    assert "is not a positive duration" in capsys.readouterr().err


# -- settings ---------------------------------------------------------------------------------


def test_settings_from_env(tmp_path: Path) -> None:
    env = {
        "SSERELAY_JWT_SECRET": SECRET,
        "SSERELAY_JWT_PUBLIC_KEY": str(tmp_path / "public.pem"),
        "SSERELAY_PUBLIC_CHANNELS": " lobby, news-* ,,room 1",
        "SSERELAY_TOKEN_COOKIE": "relay_token",
    }
    assert settings_from_env(env) == {
        "jwt_secret": SECRET,
        "jwt_public_key": tmp_path / "public.pem",
        "public_channels": ("lobby", "news-*", "room 1"),
        "token_cookie": "relay_token",
    }


def test_settings_defaults_and_repr() -> None:
    settings = Settings()
    assert (settings.jwt_secret, settings.jwt_public_key) == (None, None)
    assert (settings.public_channels, settings.token_cookie) == ((), "sserelay_token")
    with_secret = Settings(jwt_secret=SECRET)
    assert SECRET not in repr(with_secret) and "jwt_secret" not in repr(with_secret)


def test_settings_with_a_public_key(tmp_path: Path) -> None:
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem(ec_key()))
    settings = Settings(jwt_public_key=path, public_channels=("lobby",))
    policy = policy_from_settings(settings)
    assert policy.verifier is not None and policy.verifier.algorithm == "ES256"
    assert policy.public_patterns == ("lobby",)
    assert policy_from_settings(Settings()).is_open


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"jwt_secret": "x" * 31}, "jwt_secret is 31 bytes; use at least 32 random bytes"),
        ({"jwt_secret": ""}, "jwt_secret is 0 bytes"),
        ({"jwt_public_key": Path("/nonexistent/key.pem")}, "cannot read jwt_public_key"),
        ({"public_channels": ("ok", "")}, "public_channels: channel pattern is empty"),
        ({"public_channels": ("a\nb",)}, "public_channels: channel pattern 'a\\nb' contains"),
        ({"token_cookie": "bad name"}, "token_cookie='bad name' is not a valid cookie name"),
        ({"token_cookie": ""}, "token_cookie='' is not a valid cookie name"),
        ({"token_cookie": "a;b"}, "token_cookie='a;b' is not a valid cookie name"),
    ],
)
def test_settings_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**changes)
    assert str(info.value).startswith(message), str(info.value)
    assert SECRET not in str(info.value)


def test_settings_key_file_must_be_a_public_key(tmp_path: Path) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(private_pem(rsa_key()))
    with pytest.raises(ConfigError, match="is a private key; the relay needs only the public"):
        Settings(jwt_public_key=private)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(ConfigError, match="is not a PEM public key"):
        Settings(jwt_public_key=garbage)
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(rsa_key()))
    with pytest.raises(ConfigError, match="not both"):
        Settings(jwt_secret=SECRET, jwt_public_key=public)
