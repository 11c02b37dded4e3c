"""``sserelay publish``: publish one event from the shell."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import add_bus_options, bus_settings, require_redis, resolve_dsn

DESCRIPTION = """\
Publish one event on CHANNEL: durable (written to the event log, its id printed) where
`sserelay migrate` has installed the schema, or on Redis; a plain NOTIFY otherwise or
with --no-durable.
"""

EPILOG = """\
environment: DATABASE_URL, SSERELAY_REDIS_URL or REDIS_URL, SSERELAY_BROKER,
SSERELAY_REDIS_PREFIX, SSERELAY_RETENTION_COUNT, SSERELAY_RETENTION_AGE (Redis trimming),
SSERELAY_DATA_DIR, LOG_LEVEL.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "publish",
        help="publish one event",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("channel", metavar="CHANNEL", help="the channel to publish on")
    p.add_argument("data", metavar="DATA", help="the event's data ('-' reads standard input)")
    p.add_argument("--event", help="SSE event name (default: message)")
    p.add_argument(
        "--id",
        help="SSE event id, for a plain event: the log numbers its own events, so with "
        "the log installed (or on Redis) an id needs --no-durable",
    )
    p.add_argument("--retry", type=int, help="SSE retry hint in ms (plain events only, as --id)")
    p.add_argument(
        "--durable",
        action=argparse.BooleanOptionalAction,
        help="append to the event log and print the id (default: if `sserelay migrate` ran)",
    )
    add_bus_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bus.publish import publish

    data = sys.stdin.read() if args.data == "-" else args.data
    bus = bus_settings(args)
    target: Any
    if bus.bus == "redis":
        require_redis("publishing to Redis")
        from ..bus.redis.publish import RedisBus

        assert bus.redis_url is not None
        target = RedisBus(
            bus.redis_url,
            prefix=bus.redis_prefix,
            retention_count=bus.retention_count,
            retention_age=bus.retention_age,
        )
    else:
        target = resolve_dsn(bus.dsn, args.data_dir, announce=False)
    event_id = publish(
        target,
        args.channel,
        data,
        event=args.event,
        id=args.id,
        retry=args.retry,
        durable=args.durable,
    )
    if event_id is not None:
        print(event_id, flush=True)
    return 0
