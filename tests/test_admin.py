"""The operator's page over HTTP (docs/admin.md): off by default, who may see it on every
front, its stream of updates, the reasons streams ended, and two relay processes on one
bus, each showing the other's streams."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from fronts import FRONTS, Front, serving
from processes import relay_process
from sserelay import mint_token
from sserelay.relay import Relay
from sserelay.testing import SseClient, SseMessage, notify, running_relay, wait_until

pytestmark = pytest.mark.timeout(120)

SECRET = "a-secret-of-the-admin-http-tests-0123456789"
USER, PASSWORD = "ops", "correct horse battery"
ADMIN = {"admin": True, "admin_user": USER, "admin_password": PASSWORD, "jwt_secret": SECRET}


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_token() -> str:
    return mint_token(SECRET, admin=True, ttl=600)


@pytest.mark.parametrize("kind", FRONTS)
async def test_the_page_is_off_by_default(dsn: str, kind: str) -> None:
    async with serving(kind, dsn, jwt_secret=SECRET, public_channels=("admin",)) as front:
        for path in ("/admin", "/admin/stream", "/admin?format=json"):
            answer = await front.get(path, bearer(admin_token()))
            assert answer.status == 404, answer.raw
            assert "/events/admin" in answer.json()["error"]
        # A channel named "admin" (sse-relay-server's GET /{channel}) is under /events/.
        stream = await front.open("/events/admin")
        try:
            assert stream.status == 200
            await stream.wait_ready()
        finally:
            await stream.close()


@pytest.mark.parametrize("kind", FRONTS)
async def test_who_may_see_the_page(dsn: str, kind: str) -> None:
    async with serving(kind, dsn, **ADMIN) as front:
        refused = await front.get("/admin")
        assert refused.status == 401, refused.raw
        assert refused.headers["www-authenticate"].startswith('Basic realm="sserelay admin"')
        assert "Bearer" in refused.headers["www-authenticate"]
        assert "admin token" in refused.json()["error"]
        wrong = await front.get("/admin", basic(password="not the password"))
        assert wrong.status == 401 and "sserelay · operator" not in wrong.body.decode()
        assert (await front.get("/admin", basic(user="root"))).status == 401
        not_admin = await front.get("/admin", bearer(mint_token(SECRET, subscribe=["*"])))
        assert not_admin.status == 403, not_admin.raw
        for answer in (
            await front.get("/admin", basic()),
            await front.get("/admin", bearer(admin_token())),
            await front.get(f"/admin?token={admin_token()}"),
        ):
            assert answer.status == 200, answer.raw
            assert answer.headers["content-type"] == "text/html; charset=utf-8"
            assert "sserelay · operator" in answer.body.decode()
            assert "script-src 'nonce-" in answer.headers["content-security-policy"]
            assert "HttpOnly; SameSite=Strict" in answer.headers["set-cookie"]
        behind_tls = await front.get("/admin", {**basic(), "X-Forwarded-Proto": "https"})
        assert behind_tls.headers["set-cookie"].endswith("; Secure")
        # The relays' control channel and the pages' channel are no client's to read.
        for channel in ("sserelay.admin", "sserelay.admin.view"):
            assert (await front.get(f"/events/{channel}", basic())).status == 400
        as_json = await front.get("/admin?format=json", basic())
        assert as_json.status == 200
        assert as_json.json()["relays"][0]["relay"] == as_json.json()["relay"]
        assert (await front.get("/admin?format=xml", basic())).status == 400


@pytest.mark.parametrize("kind", FRONTS)
async def test_the_stream_opens_with_the_pages_cookie_and_shows_new_streams(
    dsn: str, kind: str
) -> None:
    async with serving(kind, dsn, **ADMIN, admin_interval=0.3) as front:
        assert (await front.get("/admin/stream")).status == 401
        cookie = (await front.get("/admin", basic())).headers["set-cookie"].split(";")[0]
        assert (
            await front.get("/admin/stream", {"Cookie": "sserelay_admin=1.forged"})
        ).status == 401
        updates = await front.open("/admin/stream", {"Cookie": cookie})
        viewer = await front.open(
            "/events/fresh-channel", bearer(mint_token(SECRET, subscribe=["*"]))
        )
        try:
            assert updates.status == 200, updates.headers
            assert updates.headers["content-type"].startswith("text/event-stream")
            await viewer.wait_ready()
            await next_view(updates, lambda html: "fresh-channel" in html)
        finally:
            await viewer.close()
            await updates.close()


async def next_view(stream: SseClient, condition: Callable[[str], Any]) -> str:
    """The first ``view`` event of ``stream`` whose HTML meets ``condition``."""
    seen: list[SseMessage] = []
    try:
        async with asyncio.timeout(30):
            while True:
                message = await stream.next_event(timeout=30)
                seen.append(message)
                if message.event == "view" and condition(message.data):
                    return message.data
    except TimeoutError:
        last = seen[-1].data[-3000:] if seen else "(no event)"
        raise AssertionError(f"no such view in {len(seen)} events; the last:\n{last}") from None


# -- why streams ended ------------------------------------------------------------------


async def endings(relay: Relay) -> list[list[Any]]:
    """The page's endings as JSON: ``[relay, at, reason, channels, subject, client]``."""
    front = Front(relay, relay.port)
    answer = await front.get("/admin?format=json", basic())
    assert answer.status == 200, answer.raw
    return list(answer.json()["endings"])


async def ended(relay: Relay, reason: str, channel: str) -> list[Any]:
    """The ending of ``channel`` for ``reason``, once the page lists it."""
    found: list[Any] = []

    async def listed() -> bool:
        found[:] = [e for e in await endings(relay) if e[2] == reason and channel in e[3]]
        return bool(found)

    await wait_until(listed, timeout=30)
    return found[0]


def token(subject: str) -> dict[str, str]:
    return bearer(mint_token(SECRET, subscribe=["*"], subject=subject, ttl=600))


async def test_streams_that_end_are_listed_with_why(dsn: str) -> None:
    settings = {**ADMIN, "max_streams_per_subject": 1, "max_client_buffer": 32 * 1024}
    async with running_relay(dsn, heartbeat=30.0, **settings) as relay:
        # client_gone: the client closed its connection.
        left = await SseClient.open("127.0.0.1", relay.port, "/events/gone-ch", token("carol"))
        await left.wait_ready()
        await left.close()
        entry = await ended(relay, "client_gone", "gone-ch")
        assert entry[3:] == [["gone-ch"], "carol", "127.0.0.1"]

        # limit: alice's second stream is refused (max_streams_per_subject).
        first = await SseClient.open("127.0.0.1", relay.port, "/events/lim-a", token("alice"))
        await first.wait_ready()
        second = await SseClient.open("127.0.0.1", relay.port, "/events/lim-b", token("alice"))
        assert second.status == 429
        await second.close()
        entry = await ended(relay, "limit", "lim-b")
        assert entry[4] == "alice"
        await first.close()

        # slow: a client that reads nothing while events keep coming.
        slow = await unread_stream(relay.port, "/events/firehose", token("dave"))
        try:
            filler = "x" * 7000
            for _ in range(2000):
                if relay.hub.slow_dropped:
                    break
                await notify(dsn, "firehose", filler)
            entry = await ended(relay, "slow", "firehose")
            assert entry[4] == "dave"
        finally:
            slow.close()

        # shutdown: the streams open when the relay stops.
        last = await SseClient.open("127.0.0.1", relay.port, "/events/last-ch", token("erin"))
        await last.wait_ready()
    await last.close()
    reasons = {(e.reason, e.channels, e.subject) for e in relay.hub.endings.last()}
    assert ("shutdown", ("last-ch",), "erin") in reasons
    metrics = relay.metrics.render().decode()
    counted = {"client_gone": 2, "limit": 1, "slow": 1, "shutdown": 1, "expired": 0}  # carol, alice
    for reason, count in counted.items():
        assert f'sserelay_stream_endings_total{{reason="{reason}"}} {count}.0' in metrics, metrics


async def test_a_stream_at_its_maximum_lifetime_ends_as_expired(dsn: str) -> None:
    async with running_relay(dsn, heartbeat=30.0, max_stream_lifetime=1.0, **ADMIN) as relay:
        stream = await SseClient.open("127.0.0.1", relay.port, "/events/short", token("frank"))
        try:
            await stream.wait_ready()
            await stream.wait_closed(timeout=30)
        finally:
            await stream.close()
        entry = await ended(relay, "expired", "short")
        assert entry[4:] == ["frank", "127.0.0.1"]


async def unread_stream(port: int, path: str, headers: dict[str, str]) -> socket.socket:
    """A stream on a socket with a small receive buffer that is never read after ``ready``."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    lines = [f"GET {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
    async with asyncio.timeout(10):
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        seen = b""
        while b": ready\n" not in seen:
            chunk = await loop.sock_recv(sock, 4096)
            assert chunk, seen
            seen += chunk
    return sock


# -- two relays on one bus --------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_relays(
    bus: str, dsn: str, redis_url: str | None, tmp_path: Path
) -> AsyncIterator[tuple[Any, Any]]:
    args = ["--admin", "--jwt-secret", SECRET, "--admin-user", USER]
    env = {"SSERELAY_ADMIN_PASSWORD": PASSWORD, "SSERELAY_ADMIN_INTERVAL": "0.5"}
    if redis_url is not None:
        args += ["--redis", redis_url]
        env["SSERELAY_REDIS_PREFIX"] = f"sserelay-test-{uuid.uuid4().hex[:10]}:"
    else:
        args += ["--dsn", dsn]
    log = tmp_path / "relays.log"
    async with (
        relay_process(*args, log=log, env=env) as a,
        relay_process(*args, log=log, env=env) as b,
    ):
        yield a, b


@pytest.mark.parametrize("bus", ["postgres", "redis", "cluster"])
async def test_the_page_of_one_relay_shows_the_streams_of_another(
    bus: str, dsn: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    redis_url = None  # PostgreSQL; else one Redis, or any node of a Redis Cluster
    if bus == "redis":
        redis_url = request.getfixturevalue("redis_url")
    elif bus == "cluster":
        redis_url = request.getfixturevalue("redis_cluster").url
    async with two_relays(bus, dsn, redis_url, tmp_path) as (a, b):
        b_id = f"{socket.gethostname()}:{b.proc.pid}"
        updates = await SseClient.open("127.0.0.1", a.port, "/admin/stream", basic())
        on_b = await SseClient.open("127.0.0.1", b.port, "/events/on-b", token("grace"))
        try:
            assert updates.status == 200
            await on_b.wait_ready()
            # B's row on A's page: its id, then state, bus, and 1 stream.
            row = re.compile(rf"<td>{re.escape(b_id)}</td><td>.*?</td><td>\w+</td><td>1</td>")
            html = await next_view(updates, row.search)
            assert "on-b" in html  # among the top channels, summed over the relays
            await on_b.close()
            html = await next_view(updates, lambda h: "client_gone" in h and "grace" in h)
            ending = re.search(r"<tr data-ending>(.*?)</tr>", html)
            assert ending is not None and "on-b" in ending[1] and b_id in ending[1]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nrelays' log:\n{a.stderr()[-3000:]}") from None
        finally:
            await on_b.close()
            await updates.close()
