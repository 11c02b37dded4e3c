"""``{% load sserelay %}``, then ``{% sserelay_stream_url "room-1" %}``.

The tag renders the URL a page passes to ``new EventSource(...)``, with a token for
``request.user`` when tokens are configured (the template needs ``request`` in its
context: ``django.template.context_processors.request``). Several channels:
``{% sserelay_stream_url "a" "b" %}``; resume after an event the page already shows:
``{% sserelay_stream_url "room-1" last_event_id=last_id %}``.
"""

from __future__ import annotations

from typing import Any

from django import template

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
