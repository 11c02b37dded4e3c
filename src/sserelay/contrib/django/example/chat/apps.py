"""The chat app: where its messages are published (``publish_changes``), unless change
data capture publishes them (``CHAT_CAPTURE=1``, see chatsite/settings.py)."""

from django.apps import AppConfig
from django.conf import settings


def room_channel(room: str) -> str:
    return f"chat-{room}"


def captured() -> bool:
    """Does ``SSERELAY["CAPTURE"]`` publish the messages (so the app must not)?"""
    capture = (getattr(settings, "SSERELAY", None) or {}).get("CAPTURE") or {}
    return "chat.Message" in capture


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if captured():
            return  # PostgreSQL's replication stream brings every insert: no publish here

        from sserelay.contrib.django import publish_changes

        from .models import Message

        # The one line: every new message goes out on its room's (durable) channel,
        # in the transaction that saves it.
        publish_changes(
            Message,
            channel=lambda message: room_channel(message.room),
            serialize=Message.as_event,
            event_prefix="message",
            operations=["created"],
        )
