"""Tokens for the current user, and the URL of a stream with its token.

A browser's ``EventSource`` cannot send headers, so the token travels in the URL
(``?token=``). Tokens are short-lived (``SSERELAY["TOKEN_TTL"]``), carry only the
channels the page asked for, and are minted only for channels the user may read
(``SSERELAY["CAN_SUBSCRIBE"]``). Channels matching ``PUBLIC_CHANNELS`` need none.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from django.core.exceptions import PermissionDenied
from django.urls import reverse

from ...access.keys import load_private_key, read_key_file
from ...access.patterns import matches_any, validate_pattern
from ...access.tokens import mint_token
from ...errors import ConfigError, InvalidChannel
from ...wire.channels import validate_channel
from . import conf

__all__ = ["check_can_subscribe", "stream_url", "token_for"]


def _subject(user: Any) -> str | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return str(user.get_username() if hasattr(user, "get_username") else user.pk)


def literal_names(channels: Iterable[str]) -> list[str]:
    """``channels`` as channel names; a ``*`` in one is refused (a token would read it as a
    pattern and grant more than the name: pass ``patterns=`` to grant a pattern)."""
    names = list(channels)
    for name in names:
        validate_channel(name)
        if "*" in name:
            raise InvalidChannel(
                f"{name[:80]!r} contains '*', which a token reads as a pattern: channel names "
                "given here are literal; to grant a pattern, pass token_for(..., patterns=[...])"
            )
    return names


def token_for(
    user: Any,
    channels: Iterable[str] = (),
    *,
    patterns: Iterable[str] = (),
    ttl: float | None = None,
) -> str:
    """A token letting ``user`` read ``channels`` (literal names) and, if given, every
    channel matching ``patterns`` (``room-*``), or PermissionDenied if
    ``SSERELAY["CAN_SUBSCRIBE"]`` refuses one: it is asked about each name, and about each
    pattern as its text (``"room-*"``), so it must decide what a pattern grants. The
    token's ``sub`` is the username (anonymous users get none). ConfigError if no key is
    configured."""
    names = literal_names(channels)
    grants = [validate_pattern(p) for p in patterns]
    check_can_subscribe(user, [*names, *grants])
    channels = [*names, *grants]
    lifetime = float(conf.get("TOKEN_TTL") if ttl is None else ttl)
    secret = conf.get("JWT_SECRET")
    private = conf.get("JWT_PRIVATE_KEY")
    subject = _subject(user)
    if secret is not None:
        return mint_token(secret, subscribe=channels, ttl=lifetime, subject=subject)
    if private is not None:
        pem = read_key_file(Path(private), "SSERELAY['JWT_PRIVATE_KEY']")
        _, algorithm = load_private_key(pem, "SSERELAY['JWT_PRIVATE_KEY']")
        return mint_token(
            pem, subscribe=channels, ttl=lifetime, subject=subject, algorithm=algorithm
        )
    raise ConfigError("minting a token needs SSERELAY['JWT_SECRET'] or ['JWT_PRIVATE_KEY']")


def _signing_configured() -> bool:
    return conf.get("JWT_SECRET") is not None or conf.get("JWT_PRIVATE_KEY") is not None


def stream_url(
    channels: str | Iterable[str],
    *,
    user: Any = None,
    last_event_id: int | str | None = None,
    ttl: float | None = None,
) -> str:
    """The URL a page opens with ``new EventSource(url)`` for ``channels``.

    Its base is ``SSERELAY["STREAM_URL"]`` (a relay run with ``sserelay serve``), or
    the in-process view (``include("sserelay.contrib.django.urls")``). When a key is
    configured and a channel is not public, it carries a token minted for ``user``
    (PermissionDenied if ``CAN_SUBSCRIBE`` refuses). ``last_event_id`` makes the stream
    start after that event (see :func:`~sserelay.contrib.django.last_event_id`).
    """
    names = literal_names([channels] if isinstance(channels, str) else channels)
    if not names:
        raise ValueError("stream_url needs at least one channel")
    query: list[tuple[str, str]] = []
    base = conf.get("STREAM_URL")
    if len(names) == 1:
        path = "events/" + quote(names[0], safe="")
    else:
        path = "events"
        query += [("channel", name) for name in names]
    if base is None:
        root = reverse("sserelay:events")  # ends with "/"
        url = root + path[len("events/") :] if len(names) == 1 else root
    else:
        url = str(base).rstrip("/") + "/" + path
    if last_event_id is not None:
        query.append(("lastEventId", str(last_event_id)))
    public = tuple(conf.get("PUBLIC_CHANNELS"))
    private = [name for name in names if not matches_any(public, name)]
    if private and _signing_configured():
        query.append(("token", token_for(user, names, ttl=ttl)))
    else:
        check_can_subscribe(user, private)
    return url + ("?" + urlencode(query) if query else "")


def check_can_subscribe(user: Any, channels: Iterable[str]) -> None:
    """PermissionDenied if ``CAN_SUBSCRIBE`` refuses ``user`` one of ``channels``."""
    check = conf.can_subscribe()
    if check is None:
        return
    for channel in channels:
        if not check(user, channel):
            raise PermissionDenied(f"may not subscribe to channel {channel[:80]!r}")
