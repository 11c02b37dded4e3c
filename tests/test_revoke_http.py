"""``POST /revoke`` through both HTTP fronts, against a real PostgreSQL: the admin token,
the body's checks (a clear 4xx for each mistake), a database without the schema, and the
revocation itself ending this relay's streams and refusing the old token."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from fronts import FRONTS, Front, serving
from sserelay.access.tokens import mint_token
from sserelay.testing import RawResponse, raw_request

SECRET = "r" * 40


@pytest.fixture(params=FRONTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def front(kind: str, durable_dsn: str) -> Any:
    async with serving(kind, durable_dsn, jwt_secret=SECRET) as served:
        yield served


def admin() -> str:
    return mint_token(SECRET, admin=True, subject="operator")


async def post(
    front: Front,
    body: bytes | str | dict[str, Any],
    *,
    token: str | None = None,
    content_type: str = "application/json",
    method: str = "POST",
) -> RawResponse:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{method} /revoke HTTP/1.1", f"Host: 127.0.0.1:{front.port}", "Connection: close"]
    lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    return await raw_request("127.0.0.1", front.port, request)


async def test_admin_revokes_a_subject(front: Front) -> None:
    user, room = f"u{uuid.uuid4().hex[:8]}", f"room-{uuid.uuid4().hex[:8]}"
    old = mint_token(SECRET, subscribe=["room-*"], subject=user)
    headers = {"Authorization": f"Bearer {old}"}
    client = await front.open(f"/events/{room}", headers)
    assert client.status == 200
    await client.wait_ready(timeout=30)
    try:
        response = await post(front, {"subject": user}, token=admin())
        assert response.status == 200, response.body
        answer = response.json()
        assert (answer["kind"], answer["value"]) == ("subject", user)
        assert isinstance(answer["at"], float)
        await client.wait_closed(timeout=15)
        events = [m for m in client.seen if m.is_event]
        assert events[-1].event == "sserelay.revoked", client.seen
        assert json.loads(events[-1].data) == {"reason": "revoked"}
        again = await front.open(f"/events/{room}", headers)
        assert again.status == 401
        assert "revoked" in json.loads(await again.body())["error"]
        await again.close()
        metrics = front.relay.endpoint("metrics")[2].decode()
        assert "sserelay_streams_revoked_total 1.0" in metrics
        assert "sserelay_http_revoked_total 1.0" in metrics
        assert "sserelay_revocations 1.0" in metrics
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        ("{", "application/json", 400, "invalid JSON"),
        ("[1]", "application/json", 400, "must be an object, not an array"),
        ("{}", "application/json", 400, "exactly one of subject, jti, channel, not none"),
        ({"subject": "a", "jti": "b"}, "application/json", 400, "exactly one of"),
        ({"user": "a"}, "application/json", 400, "unknown field 'user'"),
        ({"subject": 42}, "application/json", 400, "must be a non-empty string"),
        ({"subject": ""}, "application/json", 400, "must be a non-empty string"),
        ({"jti": "a\nb"}, "application/json", 400, "without control characters"),
        ({"channel": "x" * 300}, "application/json", 400, "channel pattern to revoke is invalid"),
        ('{"subject": "a", "subject": "b"}', "application/json", 400, "given twice"),
        ("subject=u42", "application/x-www-form-urlencoded", 415, "takes a JSON body"),
        ("x", "text/plain", 415, ""),
    ],
)
async def test_bad_bodies_get_clear_errors(
    front: Front, body: Any, content_type: str, status: int, reason: str
) -> None:
    response = await post(front, body, token=admin(), content_type=content_type)
    assert response.status == status, response.body
    assert reason in response.json()["error"]
    assert front.relay.revocation_count == 0


async def test_tokens_that_may_not_revoke(front: Front) -> None:
    body = {"subject": "u42"}
    response = await post(front, body)
    assert response.status == 401 and "admin grant" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"
    response = await post(front, body, token="not-a-token")
    assert response.status == 401 and "malformed token" in response.json()["error"]
    reader = mint_token(SECRET, subscribe=["*"], publish=["*"], subject="u1")
    response = await post(front, body, token=reader)
    assert response.status == 403 and "admin grant" in response.json()["error"]
    assert (await post(front, body, method="GET")).status == 405
    assert (await post(front, body, method="PUT")).status == 405
    assert front.relay.revocation_count == 0


async def test_a_revoked_admin_token_may_not_revoke(front: Front) -> None:
    operator = f"op{uuid.uuid4().hex[:6]}"
    old = mint_token(SECRET, admin=True, subject=operator)
    assert (await post(front, {"subject": operator}, token=old)).status == 200
    response = await post(front, {"subject": "u42"}, token=old)
    assert response.status == 401 and "revoked" in response.json()["error"]
    assert (await post(front, {"subject": "u42"}, token=admin())).status == 200


async def test_an_open_relay_does_not_revoke(kind: str, durable_dsn: str) -> None:
    async with serving(kind, durable_dsn) as front:
        response = await post(front, {"subject": "u42"}, token=admin())
        assert response.status == 403
        assert "revoking over HTTP needs a JWT key" in response.json()["error"]


async def test_without_the_schema_it_says_so(kind: str, module_dsn: str) -> None:
    async with serving(kind, module_dsn, jwt_secret=SECRET) as front:
        response = await post(front, {"subject": "u42"}, token=admin())
        assert response.status == 503, response.body
        assert "sserelay migrate" in response.json()["error"]
        health = front.relay.health(detail=True)[1]
        assert "schema is not installed" in (health["revocations"]["last_error"] or "")
