"""Settings, system checks, tokens, the template tag, the listener's DSN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from django_helpers import SECRET

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _django(django_dsn: str) -> Iterator[None]:
    yield


def check_ids(**overrides: Any) -> list[str]:
    from django.core import checks
    from django.test import override_settings

    with override_settings(**overrides):
        return sorted(m.id for m in checks.run_checks() if m.id and m.id.startswith("sserelay"))


def test_checks_pass_on_the_chat_project() -> None:
    assert check_ids() == []


def test_checks_report_misconfiguration(tmp_path: Path) -> None:
    assert check_ids(SSERELAY=["nope"]) == ["sserelay.E001"]
    assert check_ids(SSERELAY={"HEARTBEET": 5}) == ["sserelay.W001"]
    assert check_ids(SSERELAY={"HEARTBEAT": -1}) == ["sserelay.E001"]
    assert check_ids(SSERELAY={"JWT_SECRET": "short"}) == ["sserelay.E001"]
    assert check_ids(SSERELAY={"DATABASE": "other"}) == ["sserelay.E002"]
    from django.conf import settings

    middleware = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    assert check_ids(MIDDLEWARE=middleware) == ["sserelay.W003"]
    assert check_ids(ROOT_URLCONF="chat.urls") == ["sserelay.W002"]
    assert check_ids(ROOT_URLCONF="chat.urls", SSERELAY={"STREAM_URL": "http://x"}) == []
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    assert check_ids(SSERELAY={"JWT_PRIVATE_KEY": str(key)}) == ["sserelay.E003", "sserelay.W004"]
    assert check_ids(SSERELAY={"JWT_SECRET": SECRET, "JWT_PRIVATE_KEY": str(key)}) == [
        "sserelay.E003",
        "sserelay.E003",
    ]
    assert check_ids(SSERELAY={"CAN_SUBSCRIBE": "no.such.function"}) == ["sserelay.W005"]


def test_relay_settings_from_the_dict() -> None:
    from django.test import override_settings

    from sserelay.contrib.django import conf

    with override_settings(
        SSERELAY={"HEARTBEAT": 2, "RETRY_MS": 100, "PUBLIC_CHANNELS": ["news-*"]}
    ):
        settings = conf.relay_settings()
    assert (settings.heartbeat, settings.retry_ms) == (2, 100)
    assert settings.public_channels == ("news-*",)


def test_database_from_url() -> None:
    from sserelay.contrib.django.conf import database_from_url

    entry = database_from_url("postgresql://u:p@db.example:6432/app?sslmode=require")
    assert entry == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "app",
        "USER": "u",
        "PASSWORD": "p",
        "HOST": "db.example",
        "PORT": "6432",
        "OPTIONS": {"sslmode": "require"},
    }


def test_listener_dsn_is_a_connection_of_its_own(django_dsn: str) -> None:
    from django.test import override_settings

    from sserelay.contrib.django.runtime import listener_dsn

    dsn = listener_dsn()
    assert "cursor_factory" not in dsn and "context" not in dsn
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    with psycopg.connect(django_dsn) as conn:
        assert row == conn.execute("SELECT current_database()").fetchone()
    with override_settings(SSERELAY={"LISTEN_DSN": "host=elsewhere"}):
        assert listener_dsn() == "host=elsewhere"


def test_stream_url_in_process_and_relay() -> None:
    from django.test import override_settings

    from sserelay.contrib.django import stream_url

    assert stream_url("chat-lobby") == "/sse/events/chat-lobby"
    assert stream_url("a/b c") == "/sse/events/a%2Fb%20c"
    assert stream_url(["a", "b"]) == "/sse/events/?channel=a&channel=b"
    assert stream_url("x", last_event_id=5) == "/sse/events/x?lastEventId=5"
    with override_settings(SSERELAY={"STREAM_URL": "https://relay.example/"}):
        assert stream_url("x") == "https://relay.example/events/x"
        assert stream_url(["a", "b"]) == "https://relay.example/events?channel=a&channel=b"


class User:
    is_authenticated = True

    def __init__(self, name: str) -> None:
        self.name = name

    def get_username(self) -> str:
        return self.name


def may_read(user: Any, channel: str) -> bool:
    return channel.startswith(f"user-{user.get_username()}")


def test_stream_url_mints_a_token_for_the_user() -> None:
    from django.core.exceptions import PermissionDenied
    from django.test import override_settings

    from sserelay.access.tokens import TokenVerifier
    from sserelay.contrib.django import stream_url, token_for

    settings = {
        "JWT_SECRET": SECRET,
        "PUBLIC_CHANNELS": ["news-*"],
        "CAN_SUBSCRIBE": f"{__name__}.may_read",
        "TOKEN_TTL": 60,
    }
    with override_settings(SSERELAY=settings):
        url = stream_url("user-ann-inbox", user=User("ann"))
        assert stream_url("news-today", user=User("ann")) == "/sse/events/news-today"
        with pytest.raises(PermissionDenied):
            stream_url("user-bob-inbox", user=User("ann"))
        with pytest.raises(PermissionDenied):
            token_for(User("ann"), ["user-bob-inbox"])
    token = parse_qs(urlsplit(url).query)["token"][0]
    access = TokenVerifier(secret=SECRET).verify(token)
    assert access.subject == "ann"
    assert access.subscribe == ("user-ann-inbox",)
    assert access.publish == ()
    assert access.can_subscribe("user-ann-inbox") and not access.can_subscribe("user-bob")


def test_token_needs_a_key() -> None:
    from sserelay import ConfigError
    from sserelay.contrib.django import token_for

    with pytest.raises(ConfigError, match="JWT_SECRET"):
        token_for(None, ["x"])


def test_template_tag() -> None:
    from django.template import Context, Template
    from django.test import RequestFactory, override_settings

    request = RequestFactory().get("/")
    request.user = User("ann")  # type: ignore[attr-defined]  # as AuthenticationMiddleware does
    template = Template(
        "{% load sserelay %}{% sserelay_stream_url 'user-ann' last_event_id=7 %}|"
        "{% sserelay_stream_url 'a' 'b' %}"
    )
    with override_settings(SSERELAY={"JWT_SECRET": SECRET}):
        single, multi = template.render(Context({"request": request})).split("|")
    assert single.startswith("/sse/events/user-ann?lastEventId=7&amp;token=")
    assert multi.startswith("/sse/events/?channel=a&amp;channel=b&amp;token=")


def test_view_under_wsgi_says_it_needs_asgi() -> None:
    from django.test import Client

    response = Client().get("/sse/events/x")
    assert response.status_code == 503
    assert b"ASGI" in response.content


def test_public_api() -> None:
    import sserelay.contrib.django as contrib

    assert sorted(contrib.__all__) == [
        "ModelPublisher",
        "last_event_id",
        "presence",
        "publish",
        "publish_changes",
        "revoke",
        "stream_url",
        "token_for",
    ]
    for name in contrib.__all__:
        assert getattr(contrib, name).__doc__, name
