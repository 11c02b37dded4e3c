"""``manage.py check``: the misconfigurations we can see without a database.

- ``sserelay.E001``: ``SSERELAY`` is not a dict, or a relay setting in it is invalid.
- ``sserelay.W001``: an unknown key in ``SSERELAY`` (a typo is otherwise silent).
- ``sserelay.E002``: ``SSERELAY["DATABASE"]`` is not a PostgreSQL entry of ``DATABASES``.
- ``sserelay.E003``: ``JWT_PRIVATE_KEY`` cannot sign, or both key settings are set.
- ``sserelay.W002``: the streams are served in-process, but the view's URLs are not
  included (and ``STREAM_URL`` is not set).
- ``sserelay.W003``: ``GZipMiddleware`` would buffer event streams.
- ``sserelay.W004``: tokens are signed with a private key but the in-process view has
  no ``JWT_PUBLIC_KEY`` to verify them.
- ``sserelay.W005``: ``CAN_SUBSCRIBE`` cannot be imported or is not callable.
- ``sserelay.E010``: ``CAPTURE`` names a model, a field or an option wrongly (capture.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.core import checks
from django.urls import NoReverseMatch, reverse

from ...errors import SseRelayError
from . import conf
from .runtime import POSTGRES_ENGINES

GZIP = "django.middleware.gzip.GZipMiddleware"


def register() -> None:
    from .capture import check_capture

    checks.register(check_settings, "sserelay")
    checks.register(check_capture, "sserelay")
    checks.register(check_urls, checks.Tags.urls)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    value = getattr(django_settings, "SSERELAY", None)
    if value is not None and not isinstance(value, Mapping):
        return [
            checks.Error(
                f"settings.SSERELAY must be a dict, not {type(value).__name__}",
                id="sserelay.E001",
            )
        ]
    raw = conf.raw()
    found: list[checks.CheckMessage] = []
    for key in sorted(set(raw) - conf.KNOWN_KEYS):
        found.append(
            checks.Warning(
                f"SSERELAY has an unknown key {key!r}",
                hint="the README's 'Django' section lists the keys and their defaults",
                id="sserelay.W001",
            )
        )
    found += _check_database()
    found += _check_relay_settings()
    found += _check_keys()
    middleware = list(getattr(django_settings, "MIDDLEWARE", None) or [])
    if GZIP in middleware:
        found.append(
            checks.Warning(
                "GZipMiddleware buffers streaming responses: events would not reach "
                "browsers as they happen",
                hint="remove it (let the proxy compress other responses) or serve the "
                "streams with `sserelay serve`",
                id="sserelay.W003",
            )
        )
    try:
        conf.can_subscribe()
    except (ImportError, SseRelayError) as exc:
        found.append(checks.Warning(f"SSERELAY['CAN_SUBSCRIBE']: {exc}", id="sserelay.W005"))
    return found


def _check_database() -> list[checks.CheckMessage]:
    alias = conf.get("DATABASE")
    databases = getattr(django_settings, "DATABASES", {})
    if alias not in databases:
        return [
            checks.Error(
                f"SSERELAY['DATABASE'] = {alias!r} is not an entry of DATABASES",
                id="sserelay.E002",
            )
        ]
    engine = databases[alias].get("ENGINE")
    if engine not in POSTGRES_ENGINES:
        return [
            checks.Error(
                f"DATABASES[{alias!r}] uses {engine!r}; sserelay needs PostgreSQL",
                hint="set SSERELAY['DATABASE'] to a PostgreSQL entry",
                id="sserelay.E002",
            )
        ]
    return []


def _check_relay_settings() -> list[checks.CheckMessage]:
    try:
        conf.relay_settings()
    except SseRelayError as exc:
        return [checks.Error(f"SSERELAY: {exc}", id="sserelay.E001")]
    return []


def _check_keys() -> list[checks.CheckMessage]:
    from ...access.keys import load_private_key, read_key_file

    found: list[checks.CheckMessage] = []
    secret = conf.get("JWT_SECRET")
    private = conf.get("JWT_PRIVATE_KEY")
    try:  # a bad JWT_SECRET is E001 (the relay settings check it)
        if private is not None:
            pem = read_key_file(Path(private), "SSERELAY['JWT_PRIVATE_KEY']")
            load_private_key(pem, "SSERELAY['JWT_PRIVATE_KEY']")
    except SseRelayError as exc:
        found.append(checks.Error(str(exc), id="sserelay.E003"))
    if secret is not None and private is not None:
        found.append(
            checks.Error(
                "set SSERELAY['JWT_SECRET'] or ['JWT_PRIVATE_KEY'], not both",
                id="sserelay.E003",
            )
        )
    in_process = conf.get("STREAM_URL") is None
    no_verifier = secret is None and conf.get("JWT_PUBLIC_KEY") is None
    if private is not None and in_process and no_verifier:
        found.append(
            checks.Warning(
                "tokens are signed with JWT_PRIVATE_KEY but the in-process stream view "
                "has no JWT_PUBLIC_KEY to verify them: every stream is open",
                id="sserelay.W004",
            )
        )
    return found


def check_urls(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        if conf.get("STREAM_URL") is not None:
            return []
    except SseRelayError:
        return []  # SSERELAY is not a dict: check_settings says so
    try:
        reverse("sserelay:events")
    except NoReverseMatch:
        return [
            checks.Warning(
                "SSERELAY['STREAM_URL'] is not set, so pages open streams from this "
                "site, but the stream view's URLs are not included",
                hint='add path("sse/", include("sserelay.contrib.django.urls")) to your '
                "URLconf (ASGI), or run `sserelay serve` and set SSERELAY['STREAM_URL']",
                id="sserelay.W002",
            )
        ]
    return []
