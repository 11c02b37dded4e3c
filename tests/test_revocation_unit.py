"""The revocation logic alone (no bus): which tokens and streams a revocation covers, the
checks on what may be revoked, the control message, and the farewell a stream gets."""

from __future__ import annotations

import json
import re

import pytest

from sserelay import ConfigError, mint_token
from sserelay.access.revocations import (
    Revocation,
    Revocations,
    check_revocation,
    farewell,
    one_of,
)
from sserelay.access.tokens import Access, TokenVerifier
from sserelay.bus.control import parse_control

SECRET = "u" * 40


def access(
    subject: str | None = "u42", iat: float | None = 100.0, jti: str | None = None
) -> Access:
    return Access(subject=subject, expires_at=10_000, issued_at=iat, jti=jti)


def test_subject_revocation_covers_tokens_issued_before_it() -> None:
    revoked = Revocations([Revocation("subject", "u42", 150.0)])
    assert revoked.refusal(access(iat=149.999)) is not None
    assert "revoked" in (revoked.refusal(access(iat=100)) or "")
    assert revoked.refusal(access(iat=150.0)) is None  # issued at (or after) it: works
    assert revoked.refusal(access(iat=151)) is None
    assert revoked.refusal(access(subject="u43", iat=1)) is None
    assert revoked.refusal(access(subject=None, iat=1)) is None


def test_a_token_without_iat_counts_as_issued_before() -> None:
    revoked = Revocations([Revocation("subject", "u42", 150.0)])
    assert revoked.refusal(access(iat=None)) is not None


def test_jti_revocation_covers_one_token() -> None:
    revoked = Revocations([Revocation("jti", "j1", 150.0)])
    assert revoked.refusal(access(jti="j1")) is not None
    assert revoked.refusal(access(jti="j2")) is None
    assert revoked.refusal(access(jti=None)) is None


def test_channel_revocation_covers_matching_channels() -> None:
    revoked = Revocations([Revocation("channel", "room-*", 150.0)])
    assert revoked.refusal(access(), ["lobby", "room-1"]) is not None
    assert revoked.refusal(access(), ["lobby"]) is None
    assert revoked.refusal(access(iat=151), ["room-1"]) is None
    # A stream without a token: by when it was opened.
    assert revoked.covers(None, ["room-1"], opened=149.0)
    assert not revoked.covers(None, ["room-1"], opened=151.0)
    assert not revoked.covers(None, ["lobby"], opened=1.0)
    assert not Revocations([Revocation("subject", "u42", 150.0)]).covers(None, ["x"], 1.0)


def test_the_latest_time_wins_and_reloads_report_what_is_new() -> None:
    revoked = Revocations()
    assert revoked.add(Revocation("subject", "u42", 150.0))
    assert not revoked.add(Revocation("subject", "u42", 140.0))  # older: nothing new
    assert revoked.refusal(access(iat=145)) is not None
    assert revoked.add(Revocation("subject", "u42", 160.0))
    new = revoked.replace([Revocation("subject", "u42", 160.0), Revocation("jti", "j1", 170.0)])
    assert new == [Revocation("jti", "j1", 170.0)]  # what a missed message would have said
    assert len(revoked) == 2 and revoked.loaded
    assert revoked.replace([]) == [] and len(revoked) == 0  # pruned on the bus: forgotten
    assert revoked.refusal(access(iat=1)) is None


def test_mint_token_sets_a_precise_iat_and_a_jti() -> None:
    verifier = TokenVerifier(secret=SECRET)
    got = verifier.verify(mint_token(SECRET, subscribe=["a"], subject="u42", jti="j-1"))
    assert got.jti == "j-1" and got.issued_at is not None
    assert got.issued_at == round(got.issued_at, 3)
    with pytest.raises(ConfigError, match="jti must be 1 to 255 characters"):
        mint_token(SECRET, subscribe=["a"], jti="")


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("user", "u42", "a revocation names a subject, jti, channel; not 'user'"),
        ("subject", "", "must be a non-empty string"),
        ("subject", None, "must be a non-empty string"),
        ("jti", "x" * 256, "at most 255 characters"),
        ("subject", "a\x00b", "without control characters"),
        ("channel", "x" * 300, "channel pattern to revoke is invalid"),
    ],
)
def test_what_may_be_revoked(kind: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_revocation(kind, value)


def test_exactly_one_thing_is_revoked() -> None:
    assert one_of(subject="u42") == ("subject", "u42")
    assert one_of(channel="room-*") == ("channel", "room-*")
    for given in ({}, {"subject": "a", "jti": "b"}):
        with pytest.raises(ConfigError, match="exactly one of subject, jti or channel"):
            one_of(**given)


def test_control_messages() -> None:
    text = json.dumps({"kind": "subject", "value": "u42", "at": "1796000000.250000"})
    assert parse_control(text) == Revocation("subject", "u42", 1796000000.25)
    assert parse_control(json.dumps({"kind": "jti", "value": "j", "at": 5})) == Revocation(
        "jti", "j", 5.0
    )
    for bad in ("", "[]", "{}", '{"kind": "x", "value": "u", "at": 1}', '{"kind": "jti"}'):
        assert parse_control(bad) is None, bad


def test_farewell_is_an_event_and_a_long_jittered_retry() -> None:
    retries = set()
    for _ in range(50):
        text = farewell(2000).decode()
        assert text.startswith('event: sserelay.revoked\ndata: {"reason": "revoked"}\n\n')
        match = re.search(r"retry: (\d+)\n\n$", text)
        assert match, text
        retries.add(int(match[1]))
    assert min(retries) >= 5000 and max(retries) <= 10000 and len(retries) > 1
