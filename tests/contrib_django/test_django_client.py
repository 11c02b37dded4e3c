"""The browser client for Django sites: the template tags, the script served by the stream
URLconf (``sse/sserelay.js``), and the token endpoint (``sse/token``) its ``token`` fetches."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from django_helpers import SECRET

pytestmark = pytest.mark.integration

STATIC = Path(__file__).resolve().parents[2] / "src" / "sserelay" / "static"


@pytest.fixture(autouse=True)
def _django(django_dsn: str) -> Iterator[None]:
    yield


def render(text: str) -> str:
    from django.template import Context, Template

    return Template("{% load sserelay %}" + text).render(Context({}))


def test_tags_point_at_this_site_or_at_the_relay() -> None:
    from django.test import override_settings

    from sserelay.http import assets

    module, script = assets.load("sserelay.js"), assets.load("sserelay.classic.js")
    assert module is not None and script is not None
    version, classic = module.version, script.version
    assert render("{% sserelay_relay_url %}") == "/sse"
    assert render("{% sserelay_script_url %}") == f"/sse/sserelay.js?v={version}"
    assert render("{% sserelay_script %}") == (
        f'<script src="/sse/sserelay.classic.js?v={classic}"></script>'
    )
    with override_settings(SSERELAY={"STREAM_URL": "https://relay.example/"}):
        assert render("{% sserelay_relay_url %}") == "https://relay.example"
        assert render("{% sserelay_script_url %}") == (
            f"https://relay.example/sserelay.js?v={version}"
        )


def test_the_stream_urlconf_serves_the_script() -> None:
    from django.test import Client

    client = Client()
    reply = client.get("/sse/sserelay.js", HTTP_ACCEPT_ENCODING="gzip")
    assert reply.status_code == 200
    assert reply["Content-Type"] == "text/javascript; charset=utf-8"
    assert gzip.decompress(reply.content) == (STATIC / "sserelay.js").read_bytes()
    again = client.get(
        "/sse/sserelay.js", HTTP_ACCEPT_ENCODING="gzip", HTTP_IF_NONE_MATCH=reply["ETag"]
    )
    assert again.status_code == 304
    plain = client.get(render("{% sserelay_script %}").split('"')[1])
    assert plain.content == (STATIC / "sserelay.classic.js").read_bytes()
    assert plain["Cache-Control"] == "public, max-age=31536000, immutable"


def test_token_endpoint() -> None:
    from django.test import Client, override_settings

    client = Client()
    with override_settings(SSERELAY={"JWT_SECRET": SECRET, "TOKEN_TTL": 60}):
        reply = client.get("/sse/token?channel=a&channel=b")
        assert reply.status_code == 200
        assert reply["Cache-Control"] == "no-store"
        claims = jwt.decode(
            reply.json()["token"], SECRET, algorithms=["HS256"], audience="sserelay"
        )
        assert claims["sserelay"]["subscribe"] == ["a", "b"]
        assert claims["exp"] - claims["nbf"] == 60
        assert client.get("/sse/token").status_code == 400
        assert "invalid channel" in client.get("/sse/token?channel=").json()["error"]
    with override_settings(
        SSERELAY={"JWT_SECRET": SECRET, "CAN_SUBSCRIBE": lambda user, channel: channel != "no"}
    ):
        assert client.get("/sse/token?channel=no").status_code == 403
