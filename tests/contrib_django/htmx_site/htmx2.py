"""docs/django.md, htmx 2: every new Message, rendered, as a named event (``sse-swap``)."""

from chat.models import Message
from django.template.loader import render_to_string

from sserelay.contrib.django import publish_changes

publish_changes(
    Message,
    channel=lambda m: f"chat-{m.room}",
    serialize=lambda m: render_to_string("chat/_message.html", {"message": m}),
    event_prefix="message-html",
    operations=["created"],
)
