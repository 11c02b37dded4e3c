"""The chat app: where its messages are published (``publish_changes``)."""

from django.apps import AppConfig


def room_channel(room: str) -> str:
    return f"chat-{room}"


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
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
