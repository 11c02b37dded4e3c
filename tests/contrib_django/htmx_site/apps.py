from django.apps import AppConfig


class HtmxSiteConfig(AppConfig):
    name = "htmx_site"

    def ready(self) -> None:
        # The guide puts each recipe's lines in AppConfig.ready(); here they are modules of
        # their own, run by their import, so that the docs test can find the guide's lines.
        from . import htmx2, htmx4  # noqa: F401
