"""The chat's pages: pick a name and a room; a room (its messages, a form, the stream);
and the room's tokens, which the page's client (sserelay.js) asks for before it connects."""

import re

from django.core.signing import BadSignature
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from sserelay.contrib.django import conf, last_event_id, token_for

from .apps import room_channel
from .models import Message

ROOM = re.compile(r"[a-z0-9-]{1,40}")
USER_COOKIE = "chat_user"
HISTORY = 100
NOT_SIGNED_IN = (
    "Not sent: this page's name is no longer valid (the server's secret key changed?). "
    "Enter the room again."
)


def _username(request: HttpRequest) -> str | None:
    try:
        name = request.get_signed_cookie(USER_COOKIE, default=None)
    except BadSignature:
        return None
    return name or None


def index(request: HttpRequest) -> HttpResponse:
    """Pick a username and a room."""
    user = _username(request) or ""
    room = request.GET.get("room", "lobby")
    error = ""
    if request.method == "POST":
        user = request.POST.get("user", "").strip()[:40]
        room = request.POST.get("room", "").strip().lower()
        if user and ROOM.fullmatch(room):
            response = redirect("room", room=room)
            response.set_signed_cookie(USER_COOKIE, user, httponly=True, samesite="Lax")
            return response
        error = "A name, and a room of 1 to 40 characters among a-z, 0-9 and - please."
    rooms = Message.objects.values_list("room", flat=True).distinct().order_by("room")
    context = {"rooms": list(rooms), "user": user, "room": room, "error": error}
    return render(request, "chat/index.html", context, status=400 if error else 200)


def room(request: HttpRequest, room: str) -> HttpResponse:
    """The room: its messages (server-rendered), a form, and the live stream."""
    user = _username(request)
    if user is None:
        if request.headers.get("X-Requested-With") == "fetch":
            # The page's script posts with fetch, which would follow a redirect to the
            # index and see a 200: say why, so that the page can show it.
            return HttpResponseForbidden(NOT_SIGNED_IN, content_type="text/plain")
        return redirect(f"{reverse('index')}?room={room}")
    if request.method == "POST":
        text = request.POST.get("text", "").strip()[:500]
        if text:
            with transaction.atomic():  # the event goes out when this commits
                Message.objects.create(room=room, user=user, text=text)
        if request.headers.get("X-Requested-With") == "fetch":
            return HttpResponse(status=204)
        return redirect("room", room=room)
    channel = room_channel(room)
    # Read the log position first: a message committed between the two reads is both
    # rendered and replayed, and the page shows it once (it skips ids it has).
    last_id = last_event_id(channel)
    messages = list(Message.objects.filter(room=room).order_by("-id")[:HISTORY])[::-1]
    context = {
        "room": room,
        "user": user,
        "messages": messages,
        "channel": channel,
        "last_id": last_id,
        "tokens": _tokens(),
    }
    return render(request, "chat/room.html", context)


def _tokens() -> bool:
    """Do streams need a token (a key is configured)? Else they are open."""
    return conf.get("JWT_SECRET") is not None or conf.get("JWT_PRIVATE_KEY") is not None


def room_token(request: HttpRequest, room: str) -> HttpResponse:
    """``{"token": ...}``: a token for the room's channel, for a signed-in page only. The
    page's client fetches one before every connection and before the last one expires, so
    a page outlives its first token and never puts one in a URL."""
    if _username(request) is None:
        return HttpResponseForbidden(NOT_SIGNED_IN, content_type="text/plain")
    response = JsonResponse({"token": token_for(None, [room_channel(room)])})
    response["Cache-Control"] = "no-store"
    return response
