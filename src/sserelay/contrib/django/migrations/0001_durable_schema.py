"""Install the durable-channel schema (``sserelay.events``, ``sserelay.publish()``, ...).

Runs :func:`sserelay.bus.postgres.schema.migrate` on Django's connection: idempotent and safe to run
concurrently, so a database migrated with ``sserelay migrate`` is fine too. Later
package versions add migrations here when they add SQL files.
"""

from __future__ import annotations

from django.db import migrations

from sserelay.contrib.django.schema import install, uninstall


class Migration(migrations.Migration):
    operations = [migrations.RunPython(install, uninstall, elidable=False)]
