"""Shared fixtures. Tests run against a real PostgreSQL:

- ``SSERELAY_TEST_DSN`` if set (CI points it at the machine's server), else
- an embedded PostgreSQL (``pgserver``) started once per session in a temp dir.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sserelay.relay import Relay
from sserelay.testing import running_relay, temporary_database


@pytest.fixture(scope="session")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("SSERELAY_TEST_DSN")
    if configured:
        yield configured
        return
    from sserelay.embedded import start_embedded

    yield start_embedded(Path(tmp_path_factory.mktemp("pg")) / "pgdata")


@pytest.fixture
async def relay(dsn: str) -> AsyncIterator[Relay]:
    async with running_relay(dsn, heartbeat=30.0) as relay:
        yield relay


@pytest.fixture
def durable_dsn(dsn: str) -> Iterator[str]:
    """A database of the test's own with the durable schema installed (dropped after)."""
    with temporary_database(dsn, migrate=True) as db:
        yield db


@pytest.fixture(scope="module")
def module_dsn(dsn: str) -> Iterator[str]:
    """A database of the test module's own: NOTIFY is per database, so another test run on
    the same server (CI, a colleague, a benchmark) cannot send events to its streams."""
    with temporary_database(dsn) as db:
        yield db
