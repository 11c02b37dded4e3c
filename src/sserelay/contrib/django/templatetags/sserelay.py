"""``{% load sserelay %}``, then ``{% sserelay_stream_url "room-1" %}``.

The tag renders the URL a page passes to ``new EventSource(...)``, with a token for
``request.user`` when tokens are configured (the template needs ``request`` in its
context: ``django.template.context_processors.request``). Several channels:
``{% sserelay_stream_url "a" "b" %}``; resume after an event the page already shows:
``{% sserelay_stream_url "room-1" last_event_id=last_id %}``.

The browser client (see ``docs/browser.md``): ``{% sserelay_script %}`` loads the classic
build (``window.sserelay``); in a module, ``import { subscribe } from "{% sserelay_script_url %}"``.
``{% sserelay_relay_url %}`` is the base URL ``subscribe()`` takes, and
``{% url "sserelay:token" %}`` the endpoint its ``token`` function can fetch.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .. import client
from ..tokens import stream_url

register = template.Library()


@register.simple_tag(takes_context=True)
def sserelay_stream_url(
    context: template.Context, *channels: str, last_event_id: Any = None, ttl: Any = None
) -> str:
    request = context.get("request")
    user = getattr(request, "user", None)
    return stream_url(
        channels,
        user=user,
        last_event_id=last_event_id,
        ttl=float(ttl) if ttl is not None else None,
    )


@register.simple_tag
def sserelay_script() -> SafeString:
    """``<script src=".../sserelay.classic.js?v=...">``: defines ``window.sserelay``."""
    return format_html('<script src="{}"></script>', client.script_url("sserelay.classic.js"))


@register.simple_tag
def sserelay_script_url() -> str:
    """The versioned URL of the ES module, to ``import`` from."""
    return client.script_url("sserelay.js")


@register.simple_tag
def sserelay_relay_url() -> str:
    """The base URL ``subscribe(url, {channels})`` takes (a relay, or this site's streams)."""
    return client.relay_url()
