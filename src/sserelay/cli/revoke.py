"""``sserelay revoke``: revoke tokens (by subject or jti) or channels from the shell."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from .common import add_bus_options, bus_settings, require_redis, resolve_dsn, seconds

DESCRIPTION = """\
Revoke, on every relay of the bus, the tokens of a subject (--sub), one token (--jti), or
every stream on the channels matching a pattern (--channel): the relays end the streams it
covers within about a second, and refuse the tokens it names issued before now (a 401
saying the token was revoked) until the revocation is pruned (--ttl). A token issued
after it works. Prints the revocation's time. PostgreSQL needs `sserelay migrate`.
"""

EPILOG = """\
examples:
  sserelay revoke --sub u42
  sserelay revoke --jti 9f1c2d --redis redis://127.0.0.1:6379/0
  sserelay revoke --channel 'room-*'

environment: DATABASE_URL, SSERELAY_REDIS_URL or REDIS_URL, SSERELAY_BROKER,
SSERELAY_REDIS_PREFIX, SSERELAY_REVOCATION_TTL, SSERELAY_DATA_DIR, LOG_LEVEL.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "revoke",
        help="revoke a token subject, a token (jti) or channels on every relay",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--sub", metavar="SUBJECT", help="every token whose sub is SUBJECT")
    what.add_argument("--jti", metavar="ID", help="the one token whose jti is ID")
    what.add_argument(
        "--channel", metavar="PATTERN", help="every stream on channels matching PATTERN ('room-*')"
    )
    p.add_argument(
        "--ttl",
        type=seconds,
        help="how long the revocation is kept: at least the longest token lifetime "
        "(env SSERELAY_REVOCATION_TTL; default 24h)",
    )
    add_bus_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bus.revocations import revoke

    bus = bus_settings(args)
    target: Any
    if bus.bus == "redis":
        require_redis("revoking on Redis")
        from ..bus.redis.publish import RedisBus

        assert bus.redis_url is not None
        target = RedisBus(bus.redis_url, prefix=bus.redis_prefix)
    else:
        target = resolve_dsn(bus.dsn, args.data_dir, announce=False)
    ttl = args.ttl if args.ttl is not None else bus.revocation_ttl
    at = revoke(target, subject=args.sub, jti=args.jti, channel=args.channel, ttl=ttl)
    when = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")
    print(when, flush=True)
    return 0
