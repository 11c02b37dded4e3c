"""docs/django.md, htmx 4: every new Message, rendered, as an unnamed event (swapped)."""

from chat.models import Message
from django.db.models.signals import post_save
from django.template.loader import render_to_string

from sserelay.contrib.django import publish


def message_html(sender, instance, created, using, **kw):
    if created:  # no event name: htmx 4 swaps unnamed events into the page
        html = render_to_string("chat/_message.html", {"message": instance})
        publish(f"chat-{instance.room}", html, using=using)


post_save.connect(message_html, sender=Message, weak=False)
