"""The chat example's settings, plus pages built from the htmx recipes of docs/django.md."""

from pathlib import Path

from chatsite.settings import *  # noqa: F403 (the example's settings, as they are)
from chatsite.settings import INSTALLED_APPS, TEMPLATES

INSTALLED_APPS = [*INSTALLED_APPS, "htmx_site"]
TEMPLATES[0]["DIRS"] = [Path(__file__).parent / "templates"]
ROOT_URLCONF = "htmx_site.urls"
