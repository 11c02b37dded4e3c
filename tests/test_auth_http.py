"""Tokens, private channels, stream deadlines, limits and CORS, enforced over HTTP.

Every test runs against both fronts (the native server and the ASGI app under uvicorn),
which share :mod:`sserelay.access`; the token rules themselves are unit-tested in
``test_auth.py``, here each kind of refusal is shown to reach the client as it should.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fronts import FRONTS, Front, serving
from sserelay.access.tokens import mint_token
from sserelay.testing import notify, wait_until

SECRET = "s" * 40
OTHER_SECRET = "t" * 40
NONE_HEADER = b'{"alg":"none","typ":"JWT"}'


def unique(prefix: str = "auth") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=FRONTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def closed(kind: str, module_dsn: str) -> AsyncIterator[Front]:
    """A relay with an HS256 secret and one public pattern, ``news-*``."""
    async with serving(kind, module_dsn, jwt_secret=SECRET, public_channels=("news-*",)) as front:
        yield front


def token(subscribe: list[str], **kwargs: Any) -> str:
    return mint_token(SECRET, subscribe=subscribe, **kwargs)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def receives(
    front: Front, dsn: str, channel: str, path: str, headers: dict[str, str] | None = None
) -> None:
    """A stream on ``path`` opens (200) and gets the next event published on ``channel``."""
    client = await front.open(path, headers)
    try:
        assert client.status == 200
        await client.wait_ready()
        await notify(dsn, channel, "hello")
        assert (await client.next_event()).data == "hello"
    finally:
        await client.close()


# -- subscribe: where the token comes from -----------------------------------------------------


async def test_bearer_header_opens_a_private_channel(closed: Front, module_dsn: str) -> None:
    channel = unique()
    bearer = {"Authorization": f"Bearer {token([channel])}"}
    await receives(closed, module_dsn, channel, f"/events/{channel}", bearer)


async def test_cookie_opens_a_private_channel(closed: Front, module_dsn: str) -> None:
    channel = unique()
    cookie = f"other=1; sserelay_token={token([channel])}; more=2"
    await receives(closed, module_dsn, channel, f"/events/{channel}", {"Cookie": cookie})


async def test_query_token_opens_a_private_channel(closed: Front, module_dsn: str) -> None:
    channel = unique()
    await receives(closed, module_dsn, channel, f"/events/{channel}?token={token([channel])}")


async def test_a_configured_cookie_name_is_used(kind: str, module_dsn: str) -> None:
    channel = unique()
    async with serving(kind, module_dsn, jwt_secret=SECRET, token_cookie="jwt") as front:
        default = await front.get(
            f"/events/{channel}", {"Cookie": f"sserelay_token={token([channel])}"}
        )
        assert default.status == 401
        client = await front.open(f"/events/{channel}", {"Cookie": f"jwt={token([channel])}"})
        try:
            assert client.status == 200
        finally:
            await client.close()


async def test_public_channels_need_no_token(closed: Front, module_dsn: str) -> None:
    channel = unique("news")
    await receives(closed, module_dsn, channel, f"/events/{channel}")


# -- subscribe: refusals -----------------------------------------------------------------------


async def test_no_token_is_401_with_a_challenge(closed: Front) -> None:
    response = await closed.get(f"/events/{unique()}")
    assert response.status == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    assert "token" in response.json()["error"]


async def test_a_mix_of_public_and_private_channels_needs_a_token(closed: Front) -> None:
    response = await closed.get(f"/events?channel={unique('news')}&channel={unique()}")
    assert response.status == 401


async def test_a_token_without_the_channel_is_403(closed: Front) -> None:
    wanted, granted = unique(), unique()
    response = await closed.get(f"/events/{wanted}?token={token([granted])}")
    assert response.status == 403
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
    assert wanted in response.json()["error"]


async def test_a_token_must_cover_every_channel_of_a_stream(closed: Front) -> None:
    granted, other = unique(), unique()
    response = await closed.get(
        f"/events?channel={granted}&channel={other}&token={token([granted])}"
    )
    assert response.status == 403
    assert other in response.json()["error"]


@pytest.mark.parametrize(
    ("pattern", "channel", "allowed"),
    [
        ("room-*", "room-1", True),
        ("room-*", "room-", True),
        ("room-*", "roomx", False),
        ("*-feed", "user-feed", True),
        ("*-feed", "user-feeds", False),
        ("user/*/inbox", "user/42/inbox", True),
        ("user/*/inbox", "user/42/outbox", False),
        ("*", "anything", True),
        ("room-?", "room-1", False),  # only * is special
    ],
)
async def test_patterns_over_http(closed: Front, pattern: str, channel: str, allowed: bool) -> None:
    path = "/events?channel=" + channel.replace("/", "%2F") + f"&token={token([pattern])}"
    if allowed:
        client = await closed.open(path)
        try:
            assert client.status == 200
        finally:
            await client.close()
    else:
        assert (await closed.get(path)).status == 403


def _claims(channel: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": "sserelay",
        "exp": now + 600,
        "iat": now,
        "sserelay": {"subscribe": [channel]},
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def bad_tokens(channel: str) -> dict[str, str]:
    """Tokens for ``channel`` that an HS256 relay must refuse, by what is wrong."""
    good = token([channel])
    header, payload, signature = good.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["sserelay"]["subscribe"] = ["*"]
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "expired": jwt.encode(_claims(channel, exp=int(time.time()) - 60), SECRET, "HS256"),
        "not yet valid": jwt.encode(_claims(channel, nbf=int(time.time()) + 600), SECRET, "HS256"),
        "alg none": f"{b64(NONE_HEADER)}.{payload}.",
        "wrong key": jwt.encode(_claims(channel), OTHER_SECRET, "HS256"),
        "tampered payload": f"{header}.{b64(json.dumps(forged).encode())}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "rs256 on an hs256 relay": jwt.encode(_claims(channel), rsa_pem, "RS256"),
        "no audience": jwt.encode(_claims(channel, aud=None), SECRET, "HS256"),
        "no expiry": jwt.encode(_claims(channel, exp=None), SECRET, "HS256"),
        "garbage": "not-a-token",
    }


@pytest.mark.parametrize(
    "what",
    [
        "expired",
        "not yet valid",
        "alg none",
        "wrong key",
        "tampered payload",
        "tampered signature",
        "rs256 on an hs256 relay",
        "no audience",
        "no expiry",
        "garbage",
    ],
)
async def test_bad_tokens_are_401_and_never_echoed(
    closed: Front, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    channel = unique()
    bad = bad_tokens(channel)[what]
    caplog.set_level(logging.INFO, logger="sserelay")
    for headers, path in (
        ({"Authorization": f"Bearer {bad}"}, f"/events/{channel}"),
        ({}, f"/events/{channel}?token={bad}"),
    ):
        response = await closed.get(path, headers)
        assert response.status == 401, (what, response.body)
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert bad not in response.raw.decode("latin-1")
    assert bad not in caplog.text
    assert "stream refused (401)" in caplog.text


async def test_refusals_log_who_and_why_without_the_token(
    closed: Front, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sserelay")
    wanted = unique()
    minted = token([unique()], subject="alice")
    assert (await closed.get(f"/events/{wanted}?token={minted}")).status == 403
    assert "stream refused (403)" in caplog.text
    assert "sub=alice" in caplog.text
    assert "client=127.0.0.1" in caplog.text
    assert minted not in caplog.text
    assert minted.split(".")[2] not in caplog.text  # not even the signature


# -- asymmetric keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_public_key_relay(kind: str, module_dsn: str, tmp_path: Any, algorithm: str) -> None:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = tmp_path / "key.pub"
    pem.write_bytes(public)
    channel = unique()
    async with serving(kind, module_dsn, jwt_public_key=pem) as front:
        signed = mint_token(private, subscribe=[channel], algorithm=algorithm)
        await receives(front, module_dsn, channel, f"/events/{channel}?token={signed}")
        # HS256 "signed" with the public key (which anyone has) as the secret: refused.
        header = b64(b'{"alg":"HS256","typ":"JWT"}')
        body = b64(json.dumps(_claims(channel)).encode())
        mac = hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest()
        confused = f"{header}.{body}.{b64(mac)}"
        assert (await front.get(f"/events/{channel}?token={confused}")).status == 401


# -- deadlines: token expiry and maximum lifetime ----------------------------------------------


async def test_a_stream_ends_when_its_token_expires(closed: Front) -> None:
    channel = unique()
    client = await closed.open(f"/events/{channel}?token={token([channel], ttl=2)}")
    try:
        assert client.status == 200
        await client.wait_ready()
        await client.wait_closed(timeout=20)
        # The first retry: came on open; the second is the farewell (come back, with a
        # fresh token).
        retries = [m.retry for m in client.seen if m.retry is not None]
        assert len(retries) == 2, client.seen
        assert closed.relay.hub.streams_expired == 1
        metrics = closed.relay.endpoint("metrics")[2].decode()
        assert "sserelay_streams_expired_total 1.0" in metrics
        assert closed.relay.access.limits.total == 0
    finally:
        await client.close()


async def test_maximum_stream_lifetime(kind: str, module_dsn: str) -> None:
    async with serving(kind, module_dsn, max_stream_lifetime=1.0) as front:
        clients = [await front.open(f"/events/{unique()}") for _ in range(3)]
        try:
            for client in clients:
                assert client.status == 200
                await client.wait_closed(timeout=20)
                assert any(m.retry is not None for m in client.seen[1:]), client.seen
            assert front.relay.hub.streams_expired == 3
        finally:
            for client in clients:
                await client.close()


# -- limits ------------------------------------------------------------------------------------


async def test_process_limit_is_503_with_retry_after(kind: str, module_dsn: str) -> None:
    async with serving(kind, module_dsn, max_streams=2) as front:
        first = await front.open(f"/events/{unique()}")
        second = await front.open(f"/events/{unique()}")
        try:
            refused = await front.get(f"/events/{unique()}")
            assert refused.status == 503
            assert 1 <= int(refused.headers["retry-after"]) <= 5
            assert "limit of 2 streams" in refused.json()["error"]
            await first.close()
            await wait_until(lambda: front.relay.access.limits.total == 1)
            third = await front.open(f"/events/{unique()}")
            assert third.status == 200
            await third.close()
        finally:
            await first.close()
            await second.close()


async def test_per_client_limit_is_429(kind: str, module_dsn: str) -> None:
    async with serving(kind, module_dsn, max_streams_per_client=2) as front:
        clients = [await front.open(f"/events/{unique()}") for _ in range(2)]
        try:
            refused = await front.get(f"/events/{unique()}")
            assert refused.status == 429
            assert "retry-after" in refused.headers
            assert "this client" in refused.json()["error"]
        finally:
            for client in clients:
                await client.close()


async def test_per_subject_limit_is_429(kind: str, module_dsn: str) -> None:
    channel = unique()
    async with serving(kind, module_dsn, jwt_secret=SECRET, max_streams_per_subject=1) as front:
        alice = token([channel], subject="alice")
        first = await front.open(f"/events/{channel}?token={alice}")
        try:
            assert first.status == 200
            refused = await front.get(f"/events/{channel}?token={alice}")
            assert refused.status == 429
            assert "token subject" in refused.json()["error"]
            bob = await front.open(f"/events/{channel}?token={token([channel], subject='bob')}")
            assert bob.status == 200
            await bob.close()
        finally:
            await first.close()


# -- CORS --------------------------------------------------------------------------------------


async def test_cors_credentials_only_for_listed_origins(kind: str, module_dsn: str) -> None:
    channel = unique()
    async with serving(kind, module_dsn, allowed_origins=("https://app.example",)) as front:
        client = await front.open(f"/events/{channel}", {"Origin": "https://app.example"})
        try:
            assert client.headers["access-control-allow-origin"] == "https://app.example"
            assert client.headers["access-control-allow-credentials"] == "true"
        finally:
            await client.close()
        other = await front.open(f"/events/{channel}", {"Origin": "https://evil.example"})
        try:
            assert "access-control-allow-origin" not in other.headers
            assert "access-control-allow-credentials" not in other.headers
        finally:
            await other.close()
    async with serving(kind, module_dsn, allowed_origins=("*",)) as front:
        client = await front.open(f"/events/{channel}", {"Origin": "https://any.example"})
        try:
            assert client.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in client.headers
        finally:
            await client.close()


async def test_refusals_carry_cors_headers(kind: str, module_dsn: str) -> None:
    """A page must be able to read a 401 to know it needs a new token."""
    async with serving(
        kind, module_dsn, jwt_secret=SECRET, allowed_origins=("https://app.example",)
    ) as front:
        response = await front.get(f"/events/{unique()}", {"Origin": "https://app.example"})
        assert response.status == 401
        assert response.headers["access-control-allow-origin"] == "https://app.example"


async def test_an_open_relay_says_so_at_start(
    kind: str, module_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sserelay")
    async with serving(kind, module_dsn):
        pass
    assert "the relay is open" in caplog.text
    caplog.clear()
    async with serving(kind, module_dsn, jwt_secret=SECRET):
        pass
    assert "the relay is open" not in caplog.text
