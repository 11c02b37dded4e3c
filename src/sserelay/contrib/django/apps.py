"""The Django app: ``INSTALLED_APPS += ["sserelay.contrib.django"]`` (label ``sserelay``)."""

from __future__ import annotations

from types import ModuleType

from django.apps import AppConfig

from .runtime import RelayRuntime


class SserelayConfig(AppConfig):
    name = "sserelay.contrib.django"
    label = "sserelay"
    verbose_name = "sserelay"
    default_auto_field = "django.db.models.BigAutoField"

    def __init__(self, app_name: str, app_module: ModuleType | None) -> None:
        super().__init__(app_name, app_module)
        #: The process's in-process relay (one listener), started on first use.
        self.runtime = RelayRuntime()

    def ready(self) -> None:
        from . import checks

        checks.register()
