"""Bring the schema to the latest version again: revocation (``sserelay.revocations``,
``sserelay.revoke()``) for databases that ran 0001 before it existed. Idempotent, as 0001."""

from __future__ import annotations

from django.db import migrations

from sserelay.contrib.django.schema import install


class Migration(migrations.Migration):
    dependencies = [("sserelay", "0001_durable_schema")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop, elidable=False)]
