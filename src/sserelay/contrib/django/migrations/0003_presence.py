"""Bring the schema to the latest version again: presence (``sserelay.presence`` and its
functions) for databases that ran 0002 before it existed. Idempotent, as 0001."""

from __future__ import annotations

from django.db import migrations

from sserelay.contrib.django.schema import install


class Migration(migrations.Migration):
    dependencies = [("sserelay", "0002_revocation")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop, elidable=False)]
