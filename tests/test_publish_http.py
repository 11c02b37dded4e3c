"""``POST /publish`` through both HTTP fronts, against a real PostgreSQL: tokens, bodies,
limits, the durable path, injection attempts and a database that is down."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import pytest

from fronts import FRONTS, Front, serving
from sserelay.access.tokens import mint_token
from sserelay.testing import RawResponse, SseClient, raw_request

SECRET = "p" * 40


def unique(prefix: str = "pub") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=FRONTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def publisher(*channels: str, **kwargs: Any) -> str:
    return mint_token(SECRET, publish=list(channels), **kwargs)


async def post(
    front: Front,
    body: bytes | str | dict[str, Any],
    *,
    token: str | None = None,
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
    target: str = "/publish",
) -> RawResponse:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    lines = [f"POST {target} HTTP/1.1", f"Host: 127.0.0.1:{front.port}", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if not any(k.lower() == "transfer-encoding" for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    return await raw_request("127.0.0.1", front.port, request)


async def subscribed(
    front: Front, channel: str, headers: dict[str, str] | None = None
) -> SseClient:
    client = await front.open(f"/events/{quote(channel, safe='')}", headers)
    assert client.status == 200
    await client.wait_ready()
    return client


@pytest.fixture
async def closed(kind: str, module_dsn: str) -> Any:
    """A relay with a secret; every channel public to read, so tests subscribe freely."""
    async with serving(kind, module_dsn, jwt_secret=SECRET, public_channels=("*",)) as front:
        yield front


# -- the happy paths -----------------------------------------------------------------------------


async def test_json_publish_reaches_subscribers(closed: Front) -> None:
    channel = unique()
    client = await subscribed(closed, channel)
    try:
        body = {"channel": channel, "data": {"text": "hi", "n": 1}, "event": "chat"}
        response = await post(closed, body, token=publisher(channel))
        assert response.status == 200, response.body
        assert response.json() == {"id": None, "channel": channel}  # no log: a plain NOTIFY
        message = await client.next_event()
        assert message.event == "chat"
        assert json.loads(message.data) == {"text": "hi", "n": 1}
        assert closed.relay.publisher.published == 1
        metrics = closed.relay.endpoint("metrics")[2].decode()
        assert "sserelay_http_published_total 1.0" in metrics
    finally:
        await client.close()


async def test_form_publish_reaches_subscribers(closed: Front) -> None:
    channel = unique()
    client = await subscribed(closed, channel)
    try:
        form = urlencode({"channel": channel, "data": "plain text", "id": "7"})
        response = await post(
            closed, form, token=publisher(channel), content_type="application/x-www-form-urlencoded"
        )
        assert response.status == 200, response.body
        message = await client.next_event()
        assert (message.data, message.id) == ("plain text", "7")
    finally:
        await client.close()


async def test_query_token_and_pattern_grants(closed: Front) -> None:
    channel = unique("room")
    client = await subscribed(closed, channel)
    try:
        token = publisher("room-*")
        response = await post(
            closed, {"channel": channel, "data": 1}, target=f"/publish?token={token}"
        )
        assert response.status == 200, response.body
        assert (await client.next_event()).data == "1"
    finally:
        await client.close()


async def test_durable_channels_answer_with_the_event_id(kind: str, durable_dsn: str) -> None:
    channel = unique()
    async with serving(kind, durable_dsn, jwt_secret=SECRET, public_channels=("*",)) as front:
        client = await subscribed(front, channel)
        try:
            ids = []
            for n in range(3):
                response = await post(
                    front, {"channel": channel, "data": n}, token=publisher(channel)
                )
                assert response.status == 200, response.body
                ids.append(response.json()["id"])
            assert ids == [1, 2, 3]
            received = [await client.next_event() for _ in range(3)]
            assert [(m.id, m.data) for m in received] == [("1", "0"), ("2", "1"), ("3", "2")]
        finally:
            await client.close()
        # and they are in the log: a client resuming after 1 gets 2 and 3
        resumed = await front.open(f"/events/{channel}", {"Last-Event-ID": "1"})
        try:
            assert [(await resumed.next_event()).id for _ in range(2)] == ["2", "3"]
        finally:
            await resumed.close()


async def test_an_id_of_its_own_on_a_durable_bus_is_400(kind: str, durable_dsn: str) -> None:
    """With the log installed the log numbers the channel's events: an ``id`` in the body
    is refused (issue 12, item 15), and nothing is published."""
    channel = unique()
    async with serving(kind, durable_dsn, jwt_secret=SECRET, public_channels=("*",)) as front:
        form = urlencode({"channel": channel, "data": "x", "id": "7"})
        for body, content_type in (
            ({"channel": channel, "data": 1, "id": "42"}, "application/json"),
            (form, "application/x-www-form-urlencoded"),
        ):
            response = await post(front, body, token=publisher(channel), content_type=content_type)
            assert response.status == 400, response.body
            reason = response.json()["error"]
            assert "numbers each channel's events itself" in reason, reason
            assert "leave id out" in reason, reason
        response = await post(front, {"channel": channel, "data": 1}, token=publisher(channel))
        assert response.status == 200, response.body
        assert response.json()["id"] == 1  # the refused events took no id


async def test_expect_100_continue(closed: Front) -> None:
    channel = unique()
    response = await post(
        closed,
        {"channel": channel, "data": "x"},
        token=publisher(channel),
        headers={"Expect": "100-continue"},
    )
    # the interim 100 (native front; uvicorn sends it when the body is read) then the answer
    assert response.status in (100, 200)
    assert b"HTTP/1.1 200 OK" in response.raw


# -- refusals ------------------------------------------------------------------------------------


async def test_disabled_without_a_key(kind: str, module_dsn: str) -> None:
    async with serving(kind, module_dsn) as front:
        response = await post(front, {"channel": "a", "data": 1}, token="x.y.z")
        assert response.status == 403
        assert "needs a JWT key" in response.json()["error"]


async def test_no_token_is_401(closed: Front) -> None:
    response = await post(closed, {"channel": "a", "data": 1})
    assert response.status == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_bad_token_is_401(closed: Front) -> None:
    forged = mint_token("q" * 40, publish=["*"])
    response = await post(closed, {"channel": "a", "data": 1}, token=forged)
    assert response.status == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert forged not in response.raw.decode("latin-1")


async def test_a_subscribe_only_token_cannot_publish(closed: Front) -> None:
    token = mint_token(SECRET, subscribe=["*"])
    response = await post(closed, {"channel": "a", "data": 1}, token=token)
    assert response.status == 403


async def test_a_token_for_another_channel_is_403(closed: Front) -> None:
    response = await post(closed, {"channel": "b", "data": 1}, token=publisher("a"))
    assert response.status == 403
    assert "'b'" in response.json()["error"]


async def test_a_cookie_token_is_not_accepted(closed: Front) -> None:
    """A cross-site form would carry the browser's cookie: publishing never reads it."""
    token = publisher("a")
    response = await post(
        closed, {"channel": "a", "data": 1}, headers={"Cookie": f"sserelay_token={token}"}
    )
    assert response.status == 401


BAD_BODIES = [
    ("not json", "{", 400, "invalid JSON"),
    ("array", "[1]", 400, "must be an object, not an array"),
    ("no channel", {"data": 1}, 400, "no channel"),
    ("no data", {"channel": "a"}, 400, "no data"),
    ("unknown field", {"channel": "a", "data": 1, "retry": 5}, 400, "unknown field 'retry'"),
    ("bad channel", {"channel": "", "data": 1}, 400, "invalid channel"),
    ("channel type", {"channel": 5, "data": 1}, 400, "invalid channel"),
    ("event newline", {"channel": "a", "data": 1, "event": "x\nid: 9"}, 400, "line break"),
    ("event type", {"channel": "a", "data": 1, "event": 3}, 400, "event must be a string"),
    ("id newline", {"channel": "a", "data": 1, "id": "1\r\n"}, 400, "line break"),
    ("id type", {"channel": "a", "data": 1, "id": [1]}, 400, "id must be"),
    ("NaN", '{"channel": "a", "data": NaN}', 400, "invalid JSON"),
    ("deep", "[" * 100_00 + "]" * 100_00, 400, "invalid JSON"),
    ("not utf-8", b'{"channel": "a", "data": "\xff"}', 400, "not valid UTF-8"),
    ("lone surrogate", '{"channel": "a", "data": 1, "event": "\\ud800"}', 400, "surrogate"),
    ("a field twice", '{"channel": "a", "data": 1, "channel": "b"}', 400, "'channel' given twice"),
    (
        "nested twice is data",
        '{"channel": "a", "data": {"k": 1, "k": 2}, "event": 5}',
        400,
        "event",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "reason"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
async def test_bad_bodies_are_400(closed: Front, body: Any, status: int, reason: str) -> None:
    response = await post(closed, body, token=publisher("*"))
    assert response.status == status, response.body
    assert reason in response.json()["error"]


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        (None, "no Content-Type"),
        ("text/plain", "not supported"),
        ("application/json; charset=latin-1", "charset"),
        ("multipart/form-data; boundary=x", "not supported"),
    ],
)
async def test_unsupported_content_types_are_415(
    closed: Front, content_type: str | None, reason: str
) -> None:
    response = await post(
        closed, {"channel": "a", "data": 1}, token=publisher("a"), content_type=content_type
    )
    assert response.status == 415
    assert reason in response.json()["error"]


async def test_form_errors(closed: Front) -> None:
    form = "application/x-www-form-urlencoded"
    twice = await post(
        closed, "channel=a&channel=b&data=1", token=publisher("*"), content_type=form
    )
    assert twice.status == 400 and "given twice" in twice.json()["error"]
    many = "&".join(f"f{n}=1" for n in range(40))
    assert (await post(closed, many, token=publisher("*"), content_type=form)).status == 400


async def test_size_limits_are_413(kind: str, module_dsn: str) -> None:
    async with serving(
        kind, module_dsn, jwt_secret=SECRET, max_publish_bytes=1000, public_channels=("*",)
    ) as front:
        big = {"channel": "a", "data": "x" * 2000}
        # refused from Content-Length alone
        response = await post(front, big, token=publisher("a"))
        assert response.status == 413
        assert "1000 bytes" in response.json()["error"]
        # and while reading a chunked body that has no length
        body = json.dumps(big).encode()
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:500], body[500:]))
        response = await post(
            front,
            chunked + b"0\r\n\r\n",
            token=publisher("a"),
            headers={"Transfer-Encoding": "chunked"},
        )
        assert response.status == 413


async def test_a_payload_over_the_notify_limit_is_413(closed: Front) -> None:
    """Without the log, an event must fit PostgreSQL's 8000-byte NOTIFY payload."""
    response = await post(closed, {"channel": "a", "data": "x" * 9000}, token=publisher("a"))
    assert response.status == 413


async def test_publish_rate_is_429(kind: str, module_dsn: str) -> None:
    async with serving(
        kind, module_dsn, jwt_secret=SECRET, publish_rate=0.01, publish_burst=2
    ) as front:
        token = publisher("a", subject="svc")
        assert (await post(front, {"channel": "a", "data": 1}, token=token)).status == 200
        assert (await post(front, {"channel": "a", "data": 2}, token=token)).status == 200
        refused = await post(front, {"channel": "a", "data": 3}, token=token)
        assert refused.status == 429
        assert int(refused.headers["retry-after"]) >= 1
        # another subject has a bucket of its own
        other = publisher("a", subject="other")
        assert (await post(front, {"channel": "a", "data": 4}, token=other)).status == 200


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_database_down_is_503(kind: str, module_dsn: str) -> None:
    """The listener is up (its own DSN) but the publishing pool cannot connect."""
    dead = f"postgresql://postgres@127.0.0.1:{closed_port()}/test?connect_timeout=1"
    async with serving(kind, dead, listen_dsn=module_dsn, jwt_secret=SECRET) as front:
        front.relay.publisher.connect_timeout = 1.0
        response = await post(front, {"channel": "a", "data": 1}, token=publisher("a"))
        assert response.status == 503
        assert "retry-after" in response.headers
        assert "database unavailable" in response.json()["error"]


# -- injection -----------------------------------------------------------------------------------


SQL_CHANNELS = [
    "a'; DROP TABLE sserelay.events; --",
    'x"; SELECT pg_sleep(10); --',
    "$$; DROP SCHEMA sserelay CASCADE; $$",
    "Robert'); DROP TABLE students;--",
]


@pytest.mark.parametrize("channel", SQL_CHANNELS)
async def test_sql_in_channel_names_is_only_a_name(
    kind: str, durable_dsn: str, channel: str
) -> None:
    async with serving(kind, durable_dsn, jwt_secret=SECRET, public_channels=("*",)) as front:
        client = await subscribed(front, channel)
        try:
            response = await post(front, {"channel": channel, "data": "ok"}, token=publisher("*"))
            assert response.status == 200, response.body
            assert response.json()["id"] == 1
            assert (await client.next_event()).data == "ok"
        finally:
            await client.close()
    with psycopg.connect(durable_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT channel FROM sserelay.events").fetchall()
        assert rows == [(channel,)]  # the table exists and holds the name verbatim


@pytest.mark.parametrize(
    "data",
    [
        "line one\n\nevent: forged\ndata: evil",
        "\r\nid: 999\r\n\r\ndata: x",
        "data: a\rretry: 1",
        "\n\n\n",
    ],
)
async def test_sse_injection_in_data_cannot_forge_events(closed: Front, data: str) -> None:
    channel = unique()
    client = await subscribed(closed, channel)
    try:
        response = await post(closed, {"channel": channel, "data": data}, token=publisher(channel))
        assert response.status == 200
        message = await client.next_event()
        # One event, event type "message", no id, the data back with its line breaks
        # normalised to \n (SSE cannot carry a bare CR in data).
        normalised = data.replace("\r\n", "\n").replace("\r", "\n")
        assert (message.event, message.id, message.data) == ("message", None, normalised)
        # and nothing else: the next thing on the stream is the next real event
        await post(closed, {"channel": channel, "data": "after"}, token=publisher(channel))
        assert (await client.next_event()).data == "after"
    finally:
        await client.close()
