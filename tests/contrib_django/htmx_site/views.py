from chat.models import Message
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from sserelay.contrib.django import last_event_id


def room(request: HttpRequest, version: int, room: str) -> HttpResponse:
    """A room's messages and stream, as the chat's view gives them, in an htmx page."""
    channel = f"chat-{room}"
    last_id = last_event_id(channel)  # before the rows: a gap is impossible, a double rare
    messages = Message.objects.filter(room=room).order_by("id")
    context = {"room": room, "channel": channel, "last_id": last_id, "messages": messages}
    return render(request, f"htmx{version}.html", context)


def eventsource(request: HttpRequest, room: str) -> HttpResponse:
    """A room with docs/django.md's plain-EventSource page (no sserelay.js)."""
    channel = f"chat-{room}"
    last_id = last_event_id(channel)
    messages = Message.objects.filter(room=room).order_by("id")
    context = {"room": room, "channel": channel, "last_id": last_id, "messages": messages}
    return render(request, "eventsource.html", context)
