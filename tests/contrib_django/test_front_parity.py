"""One admission path: the native server, the ASGI app and the Django view refuse the same
requests with the same status, the same headers (CORS included) and the same body.

Each refusal of the bad-input suites that a stream path can meet is sent, byte for byte,
to all three fronts, configured alike; their answers must agree. (The Django view serves
``/events/...`` only: other paths are Django's own business.) The browser client's files
(``/sserelay.js``, served by the same URLconf) get the same answers too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import override_settings
from django_helpers import SECRET

from fronts import uvicorn_serving
from sserelay import mint_token
from sserelay.asgi import create_app
from sserelay.config import Settings
from sserelay.http import assets
from sserelay.testing import RawResponse, SseClient, raw_request, running_relay, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(120)]

HOST = "127.0.0.1"
ORIGIN = "https://app.example"
SETTINGS: dict[str, Any] = {
    "jwt_secret": SECRET,
    "public_channels": ("open-*",),
    "allowed_origins": (ORIGIN,),
    "max_channels_per_stream": 4,
    "max_streams_per_subject": 1,
    "heartbeat": 30.0,
}
#: The headers a relay sets on a refusal (servers and frameworks add their own).
COMPARED = (
    "content-type",
    "www-authenticate",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
)
PRIVATE = mint_token(SECRET, subscribe=["room-*"], subject="alice", ttl=86_400)
OTHER = mint_token(SECRET, subscribe=["room-*"], subject="bob", ttl=86_400)


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: relay.test", f"Origin: {ORIGIN}", *headers]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


REFUSALS = [
    ("empty channel", get("/events/?channel=")),
    ("NUL", get("/events/a%00b")),
    ("control character", get("/events/a%01b")),
    ("64-byte channel", get("/events/" + "a" * 64)),
    ("invalid UTF-8", get("/events/%C3%28")),
    ("reserved prefix", get("/events/sserelay.x")),
    ("too many channels", get("/events/?" + "&".join(f"channel=open-{i}" for i in range(5)))),
    ("too many query fields", get("/events/open-a?" + "&x" * 300)),
    ("bad history", get("/events/open-a?history=lots")),
    ("no token", get("/events/room-1")),
    ("a token that does not cover it", get("/events/secret", f"Authorization: Bearer {PRIVATE}")),
    ("a malformed token", get("/events/room-1", "Authorization: Bearer nonsense")),
    ("a token in the query, expired", get("/events/room-1?token=" + "x.y.z")),
    ("a preflight", get("/events/open-a", "Access-Control-Request-Method: GET", method="OPTIONS")),
    ("an oversized head", get("/events/open-a", "X-Big: " + "a" * 9000)),
    ("an unknown origin", get("/events/room-1").replace(ORIGIN.encode(), b"https://evil.example")),
]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def answer(response: RawResponse) -> Answer:
    headers = {name: response.headers[name] for name in COMPARED if name in response.headers}
    if "retry-after" in response.headers:
        headers["retry-after"] = "(present)"  # jittered
    vary = response.headers.get("vary", "")
    if "origin" in vary.lower():
        headers["vary"] = "Origin"
    body = json.loads(response.body) if response.body else None
    return Answer(response.status, headers, body)


@contextlib.asynccontextmanager
async def three_fronts(
    dsn: str, settings: dict[str, Any] = SETTINGS
) -> AsyncIterator[dict[str, int]]:
    """The native server, the ASGI app and the Django view, alike: name -> port."""
    from sserelay.contrib.django.asgi import get_asgi_application

    django_settings = {key.upper(): value for key, value in settings.items()}
    django_settings["PUBLIC_CHANNELS"] = list(settings["public_channels"])
    django_settings["JWT_SECRET"] = SECRET
    app = create_app(Settings(**settings), dsn=dsn)
    with override_settings(SSERELAY=django_settings, ROOT_URLCONF="parity_urls"):
        django_app = get_asgi_application()
        async with (
            running_relay(dsn, **settings) as native,
            uvicorn_serving(app, app) as asgi,
            uvicorn_serving(django_app, app) as django_front,
        ):
            await wait_until(lambda: app.relay.listener.connected_event.is_set(), timeout=30)
            yield {"native": native.port, "asgi": asgi.port, "django": django_front.port}


async def test_every_refusal_is_the_same_on_every_front(django_dsn: str) -> None:
    async with three_fronts(django_dsn) as ports:
        for name, request in REFUSALS:
            answers = {
                front: answer(await raw_request(HOST, port, request))
                for front, port in ports.items()
            }
            native = answers["native"]
            assert native.status >= 400 or name == "a preflight", (name, native)
            for front in ("asgi", "django"):
                assert answers[front] == native, (name, front, answers[front], native)

        # The per-subject limit (429 with a jittered Retry-After): one stream each first.
        holders = []
        try:
            for port in ports.values():
                holder = await SseClient.open(
                    HOST, port, "/events/room-1", {"Authorization": f"Bearer {OTHER}"}
                )
                holders.append(holder)
                await holder.wait_ready()
            limited = get("/events/room-2", f"Authorization: Bearer {OTHER}")
            answers = {
                front: answer(await raw_request(HOST, port, limited))
                for front, port in ports.items()
            }
            assert answers["native"].status == 429, answers["native"]
            assert answers["asgi"] == answers["native"] == answers["django"], answers
        finally:
            for holder in holders:
                await holder.close()


#: The headers of the client's files that must agree (besides status and body); not
#: X-Content-Type-Options, which Django's SecurityMiddleware adds to every answer.
ASSET_HEADERS = (
    "content-type",
    "cache-control",
    "etag",
    "content-encoding",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "allow",
)


def varies(response: RawResponse) -> str:
    """Every ``Vary`` line's names, in order (the headers dict keeps only the last line)."""
    head = response.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = [line.split(":", 1) for line in head.split("\r\n")[1:]]
    return ", ".join(v.strip() for k, v in lines if k.strip().lower() == "vary")


async def test_the_client_script_is_the_same_on_every_front(django_dsn: str) -> None:
    module = assets.load("sserelay.js")
    assert module is not None
    requests = [
        ("plain", 200, get("/sserelay.js")),
        ("gzip", 200, get("/sserelay.js", "Accept-Encoding: gzip, br")),
        ("versioned classic", 200, get(assets.url("sserelay.classic.js"))),
        ("stale version", 200, get("/sserelay.js?v=0123456789abcdef")),
        ("revalidated", 304, get("/sserelay.js", f"If-None-Match: {module.etag(False)}")),
        (
            "another origin",
            200,
            get("/sserelay.js").replace(ORIGIN.encode(), b"https://evil.example"),
        ),
        ("POST", 405, get("/sserelay.js", "Content-Length: 0", method="POST")),
    ]
    async with three_fronts(django_dsn) as ports:
        for name, status, request in requests:
            answers = {}
            for front, port in ports.items():
                response = await raw_request(HOST, port, request)
                headers = {k: response.headers[k] for k in ASSET_HEADERS if k in response.headers}
                headers["vary"] = varies(response)
                answers[front] = (response.status, headers, response.body)
                # Django's CommonMiddleware gives every 304 (its own too) "Content-Length: 0".
                if response.status == 304 and front != "django":
                    assert "content-length" not in response.headers, (name, front)
            assert answers["native"][0] == status, (name, answers["native"])
            assert answers["asgi"] == answers["native"], (name, answers)
            assert answers["django"] == answers["native"], (name, answers)


ADMIN_SETTINGS = {
    **SETTINGS,
    "admin": True,
    "admin_user": "ops",
    "admin_password": "correct horse battery",
    "admin_interval": 0.3,
}


async def test_the_operators_page_is_the_same_on_every_front(django_dsn: str) -> None:
    basic = "Authorization: Basic " + base64.b64encode(b"ops:correct horse battery").decode()
    admin = mint_token(SECRET, admin=True)
    async with three_fronts(django_dsn, ADMIN_SETTINGS) as ports:
        for name, request in [
            ("no credentials", get("/admin")),
            ("a wrong password", get("/admin", basic[:-4] + "AAA=")),
            ("a token without the admin grant", get("/admin", f"Authorization: Bearer {OTHER}")),
            ("the stream without its cookie", get("/admin/stream")),
            ("an unknown format", get("/admin?format=xml", basic)),
        ]:
            answers = {
                front: answer(await raw_request(HOST, port, request))
                for front, port in ports.items()
            }
            assert answers["native"].status in (400, 401, 403), (name, answers["native"])
            assert answers["asgi"] == answers["native"] == answers["django"], (name, answers)
        for front, port in ports.items():
            for request in (get("/admin", basic), get(f"/admin?token={admin}")):
                page = await raw_request(HOST, port, request)
                assert page.status == 200, (front, page.raw[:300])
                assert "sserelay · operator" in page.body.decode(), front
            cookie = page.headers["set-cookie"].split(";")[0]
            updates = await SseClient.open(HOST, port, "/admin/stream", {"Cookie": cookie})
            try:
                assert updates.status == 200, (front, updates.headers)
                while (event := await updates.next_event(timeout=30)).event != "view":
                    pass
                assert "Stream endings" in event.data, front
            finally:
                await updates.close()


PRESENCE_SETTINGS = {
    **SETTINGS,
    "presence": ("room-*", "desk-*", "open-*"),
    "presence_interval": 0.3,
}
BOB = f"Authorization: Bearer {OTHER}"


async def test_presence_is_the_same_on_every_front(django_dsn: str) -> None:
    """``GET /presence/{channel}``: the same refusals on every front, and one answer: the
    three fronts are three relays on one database, so a stream on one is seen by all."""
    channel = f"room-{uuid.uuid4().hex[:8]}"
    async with three_fronts(django_dsn, PRESENCE_SETTINGS) as ports:
        for name, request in [
            ("no token", get(f"/presence/{channel}")),
            ("a token that does not cover it", get("/presence/desk-1", BOB)),
            ("not a presence channel", get("/presence/lobby")),
            ("an invalid channel", get("/presence/a%00b")),
        ]:
            answers = {
                front: answer(await raw_request(HOST, port, request))
                for front, port in ports.items()
            }
            assert answers["native"].status in (400, 401, 403, 404), (name, answers["native"])
            assert answers["asgi"] == answers["native"] == answers["django"], (name, answers)
        holder = await SseClient.open(
            HOST, ports["django"], f"/events/{channel}", {"Authorization": f"Bearer {PRIVATE}"}
        )
        try:
            await holder.wait_ready()
            want = {"channel": channel, "subjects": ["alice"], "anonymous": 0, "connections": 1}
            looked = get(f"/presence/{channel}", BOB)

            async def everyone_sees_alice() -> bool:
                for port in ports.values():
                    found = answer(await raw_request(HOST, port, looked))
                    if found.status != 200 or found.body != want:
                        return False
                return True

            deadline = asyncio.get_running_loop().time() + 30
            while not await everyone_sees_alice():
                assert asyncio.get_running_loop().time() < deadline, "presence never agreed"
                await asyncio.sleep(0.2)
        finally:
            await holder.close()
