"""The browser client (``sserelay.js``) for a Django site: where it is, and fresh tokens.

The script comes from where the streams come from, so the client always matches the relay
it talks to: ``SSERELAY["STREAM_URL"]`` (``sserelay serve`` serves ``/sserelay.js``), or
this site's stream URLconf (``path("sse/", include("sserelay.contrib.django.urls"))``
serves ``sse/sserelay.js`` from the installed package, under WSGI too). Either way the URL
carries a hash of the content (cached for a year) and the answer an ETag.

``sse/token?channel=a&channel=b`` answers ``{"token": "..."}`` for ``request.user`` (checked
by ``CAN_SUBSCRIBE``, lifetime ``TOKEN_TTL``): the client's ``token`` function fetches it
before every connection and before the current token expires.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from ...errors import HttpError, InvalidChannel
from ...http import assets
from ...http.front import refused, static
from ...wire.channels import validate_channel
from . import conf
from .tokens import token_for
from .views import django_response, front_request

__all__ = ["relay_url", "script", "script_url", "token"]


def relay_url() -> str:
    """The base URL ``subscribe()`` takes: ``STREAM_URL``, or this site's stream URLconf."""
    base = conf.get("STREAM_URL")
    if base is not None:
        return str(base).rstrip("/")
    return reverse("sserelay:events").removesuffix("/").removesuffix("/events")


def script_url(name: str = "sserelay.js") -> str:
    """The versioned URL of the ES module (or of ``sserelay.classic.js``)."""
    return assets.url(name, relay_url())


# Static bytes, no state to protect: exempt, so that any method but GET gets the relay's
# 405 (as on every front), not Django's CSRF page.
@csrf_exempt
def script(request: HttpRequest, name: str) -> HttpResponse:
    """``sse/sserelay.js`` and ``sse/sserelay.classic.js``, answered as the relay's fronts
    answer ``GET /sserelay.js`` (:func:`sserelay.http.front.static`); under WSGI too, and
    without starting the in-process relay."""
    settings = conf.relay_settings()
    try:
        relayed = front_request(request, "/" + name, settings.max_header_bytes)
    except HttpError as exc:  # 431
        origin = request.headers.get("origin")
        return django_response(refused(exc, origin, settings.allowed_origins))
    return django_response(static(relayed, settings.allowed_origins))


def token(request: HttpRequest) -> HttpResponse:
    """``{"token": ...}`` for ``request.user`` and the ``channel`` parameters; 400 for no or
    bad channels, 403 when ``CAN_SUBSCRIBE`` refuses (Django's PermissionDenied)."""
    channels = request.GET.getlist("channel")
    if not channels:
        return JsonResponse({"error": "no channel given; use ?channel=NAME"}, status=400)
    try:
        for name in channels:
            validate_channel(name)
    except InvalidChannel as exc:
        return JsonResponse({"error": f"invalid channel: {exc}"}, status=400)
    response = JsonResponse({"token": token_for(getattr(request, "user", None), channels)})
    response["Cache-Control"] = "no-store"
    return response
