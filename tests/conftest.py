"""Shared fixtures. Tests run against a real PostgreSQL:

- ``SSERELAY_TEST_DSN`` if set (CI points it at the machine's server), else
- an embedded PostgreSQL (``pgserver``) started once per session in a temp dir.

Temp dirs (``tmp_path``, and so the embedded databases) live under ``.pytest-tmp/`` in the
checkout, one directory per run, not in ``/tmp/pytest-of-<user>``: another pytest run on the
machine resets that directory to 0700 and deletes old runs in it, which cut the embedded
server (running as its own system user) off from its data directory mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio

from cluster import MISSING, LocalCluster
from sserelay import apublish_durable
from sserelay.bus.postgres.log import prune
from sserelay.bus.redis.cluster.layout import CLUSTER
from sserelay.bus.redis.publish import RedisBus as RedisPublisher
from sserelay.bus.redis.scripts import stream_key
from sserelay.relay import Relay
from sserelay.testing import notify, running_relay, temporary_database

RUNS = Path(__file__).resolve().parents[1] / ".pytest-tmp"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Give the run a temp dir of its own under ``.pytest-tmp/`` (``--basetemp`` wins)."""
    if config.option.basetemp:
        return
    RUNS.mkdir(exist_ok=True)
    for old in RUNS.glob("run-*"):
        pid = old.name.removeprefix("run-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)  # a run that has ended
    config.option.basetemp = str(RUNS / f"run-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("SSERELAY_TEST_DSN")
    if configured:
        yield configured
        return
    from sserelay.bus.postgres.embedded import start_embedded

    yield start_embedded(Path(tmp_path_factory.mktemp("pg")) / "pgdata")


@pytest.fixture(scope="session")
def logical_cluster() -> Iterator[Any]:
    """A private PostgreSQL with ``wal_level = logical``, for change data capture tests
    (the machine's server is never reconfigured): see tests/pgcluster.py."""
    from pgcluster import private_cluster

    with private_cluster() as cluster:
        yield cluster


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


# -- the bus: PostgreSQL, Redis or a Redis Cluster -------------------------------------------
#
# Tests that take ``bus`` (live events) or ``durable_bus`` (durable channels) run once per
# broker: the same behavioural suite, parametrised. A test marked ``postgres_only`` in such
# a module is not collected for Redis. Redis is ``SSERELAY_TEST_REDIS`` (set by .ci/run);
# without it the Redis cases are skipped. The Redis Cluster is a private one (``cluster.py``:
# 3 masters, 3 replicas), started once per session by the first test that needs it; without
# redis-server the cluster cases are skipped. Every Redis bus has a key and channel prefix
# of its own (pub/sub is global to the server), deleted after the test: never a FLUSH.

BROKERS = ["postgres", "redis", "cluster"]


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("SSERELAY_TEST_REDIS")
    if not url:
        pytest.skip("SSERELAY_TEST_REDIS is not set: no Redis to test against")
    return url


class PostgresBus:
    """The PostgreSQL side of a parametrised test."""

    kind = "postgres"
    cluster = False

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def relay(self, **settings: Any) -> contextlib.AbstractAsyncContextManager[Relay]:
        return running_relay(self.dsn, **settings)

    def settings(self) -> dict[str, Any]:
        return {"dsn": self.dsn}

    def cli_args(self) -> list[str]:
        return ["--dsn", self.dsn]

    async def notify(self, channel: str, payload: str) -> None:
        await notify(self.dsn, channel, payload)

    @contextlib.asynccontextmanager
    async def notifier(self) -> AsyncIterator[Callable[[str, str], Awaitable[None]]]:
        """A fast raw ``notify(channel, payload)`` on one connection."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:

            async def send(channel: str, payload: str) -> None:
                await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

            yield send

    @contextlib.asynccontextmanager
    async def publisher(self) -> AsyncIterator[Callable[..., Awaitable[str]]]:
        """A durable ``publish(channel, data, event=None) -> SSE id`` on one connection."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:

            async def send(channel: str, data: Any, event: str | None = None) -> str:
                return str(await apublish_durable(conn, channel, data, event=event))

            yield send

    async def publish(self, channel: str, data: Any, event: str | None = None) -> str:
        async with self.publisher() as send:
            return await send(channel, data, event)

    async def kill_listener(self, relay: Relay) -> None:
        """End the relay's listening connection from the server side."""
        pid = relay.listener._conn.pgconn.backend_pid  # type: ignore[union-attr]
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    async def trim(self, channel: str, keep: int) -> None:
        """Retention: keep the newest ``keep`` events of ``channel``."""
        await asyncio.to_thread(prune, self.dsn, max_count=keep)


class RedisBus:
    """The Redis side of a parametrised test: a prefix of its own on the test server."""

    kind = "redis"
    cluster = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"sserelay-test-{uuid.uuid4().hex[:10]}:"

    # A module's bus outlives each test's event loop: async clients are made per call.

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[redis.asyncio.Redis]:
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            yield client
        finally:
            await client.aclose()

    def relay(self, **settings: Any) -> contextlib.AbstractAsyncContextManager[Relay]:
        return running_relay(None, **self.settings(), **settings)

    def settings(self) -> dict[str, Any]:
        return {"redis_url": self.url, "redis_prefix": self.prefix}

    def cli_args(self) -> list[str]:
        return ["--redis", self.url]

    async def notify(self, channel: str, payload: str) -> None:
        async with self.client() as client:
            await client.publish(self.prefix + channel, payload)

    @contextlib.asynccontextmanager
    async def notifier(self) -> AsyncIterator[Callable[[str, str], Awaitable[None]]]:
        async with self.client() as client:

            async def send(channel: str, payload: str) -> None:
                await client.publish(self.prefix + channel, payload)

            yield send

    @contextlib.asynccontextmanager
    async def publisher(self) -> AsyncIterator[Callable[..., Awaitable[str]]]:
        bus = RedisPublisher(self.url, prefix=self.prefix)
        try:

            async def send(channel: str, data: Any, event: str | None = None) -> str:
                return str(await bus.apublish(channel, data, event=event))

            yield send
        finally:
            await bus.aclose()

    async def publish(self, channel: str, data: Any, event: str | None = None) -> str:
        async with self.publisher() as send:
            return await send(channel, data, event)

    async def kill_listener(self, relay: Relay) -> None:
        client_id = relay.listener.client_id  # type: ignore[union-attr]
        assert client_id is not None
        async with self.client() as client:
            await client.execute_command("CLIENT", "KILL", "ID", client_id)

    async def trim(self, channel: str, keep: int) -> None:
        key = stream_key(self.prefix, channel)
        async with self.client() as client:
            await client.xtrim(key, maxlen=keep, approximate=False)

    def close(self) -> None:
        """Delete every key of this bus (its streams)."""
        with redis.Redis.from_url(self.url) as client:
            for key in client.scan_iter(match=self.prefix + "*", count=500):
                client.delete(key)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of the session's own (3 masters, 3 replicas), stopped at the end."""
    if MISSING:
        pytest.skip(MISSING)
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class ClusterBus(RedisBus):
    """The Redis Cluster side of a parametrised test: a prefix of its own on the session's
    cluster. Its ``kind`` is what a relay on it reports (``/healthz`` says ``redis``)."""

    cluster = True

    def __init__(self, local: LocalCluster) -> None:
        super().__init__(local.url)
        self.local = local
        #: Which shard connection the next kill_listener ends (they take turns).
        self.kills = 0
        # A cluster client reads the server's command table first (~0.3 s): one-shot
        # publishes reuse synchronous ones (an async one would be tied to one test's loop).
        self._sync = redis.RedisCluster.from_url(self.url)
        self._publisher = RedisPublisher(self.url, prefix=self.prefix)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Any]:
        client = redis.asyncio.RedisCluster.from_url(self.url)
        try:
            yield client
        finally:
            await client.aclose()

    async def notify(self, channel: str, payload: str) -> None:
        self._sync.spublish(self.prefix + channel, payload)

    @contextlib.asynccontextmanager
    async def notifier(self) -> AsyncIterator[Callable[[str, str], Awaitable[None]]]:
        async def send(channel: str, payload: str) -> None:
            self._sync.spublish(self.prefix + channel, payload)

        yield send

    async def publish(self, channel: str, data: Any, event: str | None = None) -> str:
        return str(self._publisher.publish(channel, data, event=event))

    async def kill_listener(self, relay: Relay) -> None:
        """End one of the relay's shard connections (the next one, by node, each call)."""
        shards = sorted(relay.listener.shard_ids().items())  # type: ignore[attr-defined]
        assert shards, "the relay holds no shard connection"
        node, client_id = shards[self.kills % len(shards)]
        self.kills += 1
        host, port = node.rsplit(":", 1)
        async with redis.asyncio.Redis(host=host, port=int(port)) as client:
            await client.execute_command("CLIENT", "KILL", "ID", client_id)

    async def trim(self, channel: str, keep: int) -> None:
        async with self.client() as client:
            key = CLUSTER.stream_key(self.prefix, channel)
            await client.xtrim(key, maxlen=keep, approximate=False)

    def close(self) -> None:
        """Delete every key of this bus, on every master."""
        self._publisher.close()
        with self._sync as client:
            for key in client.scan_iter(match=self.prefix + "*", count=500):
                client.delete(key)


@pytest.fixture(scope="module", params=BROKERS)
def bus(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Live events on either broker (PostgreSQL: the ``dsn`` fixture, which a module may
    point at a database of its own)."""
    yield from _bus(request, "dsn")


@pytest.fixture(params=BROKERS)
def durable_bus(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Durable channels on either broker (PostgreSQL: a migrated database of the test's own)."""
    yield from _bus(request, "durable_dsn")


def _bus(request: pytest.FixtureRequest, pg_fixture: str) -> Iterator[Any]:
    if request.param in ("redis", "cluster"):
        made = (
            RedisBus(request.getfixturevalue("redis_url"))
            if request.param == "redis"
            else ClusterBus(request.getfixturevalue("redis_cluster"))
        )
        try:
            yield made
        finally:
            made.close()
        return
    yield PostgresBus(request.getfixturevalue(pg_fixture))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """PostgreSQL-only tests of a parametrised module are not run for Redis."""
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        broker = params.params.get("bus", params.params.get("durable_bus")) if params else None
        if broker in ("redis", "cluster") and item.get_closest_marker("postgres_only"):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
