"""Capture tests run on a private PostgreSQL with ``wal_level = logical`` (the machine's
server is not reconfigured for them): one cluster for the session (``logical_cluster``,
in tests/conftest.py), a database (with its own slot) per test. Tests that crash or tune
the server start a cluster of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgcluster import Cluster, capture_database


@pytest.fixture
def capture_dsn(logical_cluster: Cluster) -> Iterator[str]:
    """A database of the test's own on the session's logical cluster, capture installed."""
    with capture_database(logical_cluster.dsn()) as db:
        yield db
