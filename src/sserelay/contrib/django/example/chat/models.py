"""The chat's model: a message in a room."""

from django.db import models


class Message(models.Model):
    """One chat message. Saving one publishes it (see apps.py), or capture does."""

    room = models.CharField(max_length=40, db_index=True)
    user = models.CharField(max_length=40)
    text = models.CharField(max_length=500)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def as_event(self) -> dict[str, object]:
        """What browsers get: no more than the page shows."""
        return {
            "id": self.pk,
            "user": self.user,
            "text": self.text,
            "created": self.created.isoformat(),
        }
