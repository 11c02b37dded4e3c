"""Publish a model's creates, updates and deletes: one line, in ``AppConfig.ready()``.

::

    publish_changes(Message, channel=lambda m: f"room-{m.room_id}",
                    serialize=lambda m: {"id": m.pk, "text": m.text})

Each save or delete publishes ``serialize(instance)`` on ``channel`` (a name, or a
function of the instance) with the event ``<prefix>.created`` / ``.updated`` /
``.deleted``, where the prefix defaults to the model's name in lower case. The
signal handlers run inside the writing transaction and publish through the same
connection, so the events commit or roll back with the rows.

``QuerySet.update()``, ``bulk_create()`` and raw SQL send no signals: for those, a
database trigger (:func:`sserelay.bus.postgres.schema.trigger_sql`) publishes every row change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, router
from django.db.models.signals import post_delete, post_save
from django.forms.models import model_to_dict

from .publish import publish

__all__ = ["ModelPublisher", "default_serialize", "publish_changes"]

OPERATIONS = ("created", "updated", "deleted")


def default_serialize(instance: models.Model) -> str:
    """The model's concrete fields as JSON (``model_to_dict`` plus the primary key),
    encoded with Django's JSON encoder (dates, decimals, UUIDs)."""
    data = model_to_dict(instance)
    data.setdefault("pk", instance.pk)
    return json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"))


class ModelPublisher:
    """The signal receivers :func:`publish_changes` connected; :meth:`disconnect` them."""

    def __init__(
        self,
        model: type[models.Model],
        channel: str | Callable[[Any], str],
        serialize: Callable[[Any], Any],
        event_prefix: str,
        operations: tuple[str, ...],
        durable: bool | None,
    ) -> None:
        self.model = model
        self.channel = channel
        self.serialize = serialize
        self.event_prefix = event_prefix
        self.operations = operations
        self.durable = durable
        self._uid = f"sserelay:{model._meta.label}:{id(self)}"

    def connect(self) -> ModelPublisher:
        if "created" in self.operations or "updated" in self.operations:
            post_save.connect(self._saved, sender=self.model, weak=False, dispatch_uid=self._uid)
        if "deleted" in self.operations:
            post_delete.connect(
                self._deleted, sender=self.model, weak=False, dispatch_uid=self._uid
            )
        return self

    def disconnect(self) -> None:
        post_save.disconnect(sender=self.model, dispatch_uid=self._uid)
        post_delete.disconnect(sender=self.model, dispatch_uid=self._uid)

    def publish(self, instance: Any, operation: str, using: str | None) -> None:
        channel = self.channel(instance) if callable(self.channel) else self.channel
        publish(
            channel,
            self.serialize(instance),
            event=f"{self.event_prefix}.{operation}",
            using=using or router.db_for_write(self.model, instance=instance),
            durable=self.durable,
        )

    def _saved(
        self, sender: Any, instance: Any, created: bool, raw: bool = False, **kw: Any
    ) -> None:
        if raw:  # loaddata: fixtures are not news
            return
        operation = "created" if created else "updated"
        if operation in self.operations:
            self.publish(instance, operation, kw.get("using"))

    def _deleted(self, sender: Any, instance: Any, **kw: Any) -> None:
        self.publish(instance, "deleted", kw.get("using"))


def publish_changes(
    model: type[models.Model],
    channel: str | Callable[[Any], str],
    *,
    serialize: Callable[[Any], Any] = default_serialize,
    event_prefix: str | None = None,
    operations: Iterable[str] = OPERATIONS,
    durable: bool | None = None,
) -> ModelPublisher:
    """Publish ``model``'s saves and deletes on ``channel``; returns the receivers' owner.

    ``serialize(instance)`` makes the event's data (a ``str`` is sent as is, anything
    else as JSON): keep secrets out of it. ``operations``: any of ``"created"``,
    ``"updated"``, ``"deleted"``.
    """
    ops = tuple(operations)
    unknown = set(ops) - set(OPERATIONS)
    if unknown or not ops:
        raise ValueError(f"operations must be some of {OPERATIONS}, not {ops}")
    prefix = model._meta.model_name if event_prefix is None else event_prefix
    return ModelPublisher(model, channel, serialize, str(prefix), ops, durable).connect()
