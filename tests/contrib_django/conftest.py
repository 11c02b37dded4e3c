"""Django is configured once per test session, on a database of its own, with the chat
example (``sserelay/contrib/django/example``) as the project: its app and model exercise
the integration the way a user's project does. Servers started by these tests run the same project.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from chromium_page import Page
from django_helpers import CHAT

from browser import chromium
from sserelay.testing import temporary_database


@pytest.fixture(scope="session")
def django_dsn(dsn: str) -> Iterator[str]:
    """Django set up on a fresh database (migrated), whose DSN this yields.

    A second alias, ``plain``, is a database without the sserelay schema.
    """
    import django
    from django.conf import settings
    from django.core.management import call_command

    with temporary_database(dsn) as db, temporary_database(dsn) as plain:
        if str(CHAT) not in sys.path:
            sys.path.insert(0, str(CHAT))
        os.environ["DATABASE_URL"] = db
        os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key")  # no key file
        from chatsite import settings as chat_settings  # reads DATABASE_URL

        from sserelay.contrib.django.conf import database_from_url

        values = {k: getattr(chat_settings, k) for k in dir(chat_settings) if k.isupper()}
        values["DATABASES"] = {
            "default": database_from_url(db),
            "plain": database_from_url(plain),
        }
        values["SSERELAY"] = {}
        values["LOGGING_CONFIG"] = None
        settings.configure(**values)
        django.setup()
        call_command("migrate", verbosity=0)
        yield db
        from django.db import connections

        connections.close_all()


@pytest.fixture(autouse=True)
async def _no_relay_left_running() -> AsyncIterator[None]:
    """Shut the process's in-process relay down after each test, on the test's own loop:
    a relay left on a loop that is gone would keep its listener connection open, and the
    tests after these count listener connections."""
    yield
    from django.apps import apps

    if apps.ready:
        from sserelay.contrib.django.runtime import runtime

        await runtime().shutdown()


@pytest.fixture(scope="module", autouse=True)
def _django_connections_closed() -> Iterator[None]:
    """Close Django's connections after each module: the tests after these count the
    connections this process holds."""
    yield
    from django.apps import apps

    if apps.ready:
        from django.db import connections

        connections.close_all()


@pytest.fixture
def pages() -> Iterator[tuple[Page, Page]]:
    browser, driver = chromium()
    first = Page(browser, driver)
    try:
        second = Page(browser, driver)
    except BaseException:
        first.quit()
        raise
    try:
        yield first, second
    finally:
        first.quit()
        second.quit()


@pytest.fixture
def page() -> Iterator[Page]:
    """One headless Chromium."""
    browser, driver = chromium()
    made = Page(browser, driver)
    try:
        yield made
    finally:
        made.quit()
