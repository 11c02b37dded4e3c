"""``sserelay migrate`` and ``sserelay prune``: the durable event log."""

from __future__ import annotations

import argparse
import datetime
import sys

from ..config import Settings
from .common import (
    add_bus_options,
    bus_settings,
    env_dsn,
    parse_duration,
    require_redis,
    resolve_dsn,
    run_async,
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mig = sub.add_parser(
        "migrate",
        help="install or upgrade the schema for durable channels",
        description="Install or upgrade the `sserelay` schema (the durable event log) in the "
        "database: idempotent and versioned; run it again after upgrading sserelay. "
        "Redis needs none.",
        epilog="environment: DATABASE_URL, SSERELAY_REDIS_URL or REDIS_URL, SSERELAY_BROKER, "
        "SSERELAY_DATA_DIR, LOG_LEVEL.",
    )
    add_bus_options(mig)
    mig.set_defaults(func=migrate)

    prune = sub.add_parser(
        "prune",
        help="delete old events from the durable log",
        description="Delete events from the durable log: older than --max-age and/or beyond "
        "the newest --max-count of each channel. Only one prune runs at a time.",
        epilog="environment: DATABASE_URL, SSERELAY_REDIS_URL or REDIS_URL, SSERELAY_BROKER, "
        "SSERELAY_REDIS_PREFIX, SSERELAY_DATA_DIR, LOG_LEVEL.",
    )
    prune.add_argument(
        "--max-age", type=parse_duration, help="delete events older than this (7d, 12h, 90m)"
    )
    prune.add_argument("--max-count", type=int, help="keep at most this many events per channel")
    add_bus_options(prune)
    prune.set_defaults(func=run_prune)


def migrate(args: argparse.Namespace) -> int:
    from ..bus.postgres.schema import migrate as run_migrations

    if bus_settings(args).bus == "redis":
        print("sserelay: Redis needs no migration (streams appear on first publish)", flush=True)
        return 0
    dsn = resolve_dsn(args.dsn or env_dsn(), args.data_dir, announce=False)
    print(f"sserelay: schema at version {run_migrations(dsn)}", flush=True)
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from ..bus.postgres.log import prune

    if args.max_age is None and args.max_count is None:
        print("sserelay: error: prune needs --max-age and/or --max-count", file=sys.stderr)
        return 2
    bus = bus_settings(args)
    if bus.bus == "redis":
        return run_async(lambda: _prune_redis(bus, args.max_age, args.max_count))
    dsn = resolve_dsn(args.dsn or env_dsn(), args.data_dir, announce=False)
    deleted = prune(dsn, max_age=args.max_age, max_count=args.max_count)
    if deleted is None:
        print("sserelay: another prune is running; nothing done", flush=True)
        return 1
    print(f"sserelay: pruned {deleted} events", flush=True)
    return 0


async def _prune_redis(
    bus: Settings, max_age: datetime.timedelta | None, max_count: int | None
) -> int:
    require_redis("pruning on Redis")
    from ..bus.redis.cluster.log import ClusterLog  # one Redis or a cluster

    assert bus.redis_url is not None
    log_ = ClusterLog(bus.redis_url, prefix=bus.redis_prefix)
    try:
        deleted = await log_.prune(max_age, max_count)
    finally:
        await log_.close()
    print(f"sserelay: pruned {deleted} events", flush=True)
    return 0
