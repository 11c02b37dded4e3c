"""``sserelay token``: mint a signed token for a subscriber or a publisher."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from .common import seconds


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "token",
        help="print a signed token for a subscriber or publisher",
        description="Print a JWT that lets its bearer subscribe to (--channel) and/or publish "
        "on (--publish) channels, signed with the relay's HS256 secret or an RS256/ES256 "
        "private key.",
        epilog="environment: SSERELAY_JWT_SECRET (the HS256 secret), LOG_LEVEL.",
    )
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        dest="channels",
        metavar="PATTERN",
        help="channel (or pattern like 'room-*') the bearer may subscribe to; repeatable",
    )
    p.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="PATTERN",
        help="channel (or pattern) the bearer may publish to; repeatable",
    )
    p.add_argument(
        "--ttl", type=seconds, default=3600.0, help="lifetime: 3600, 15m, 12h (default 1h)"
    )
    p.add_argument("--subject", help="who the bearer is (the sub claim), for logs and limits")
    p.add_argument("--jti", help="the token's own id (the jti claim): `sserelay revoke --jti`")
    p.add_argument(
        "--admin",
        action="store_true",
        help="the admin grant: the operator's views (/healthz details)",
    )
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--jwt-secret",
        help="HS256 secret; prefer env SSERELAY_JWT_SECRET (flags show in ps and history)",
    )
    key.add_argument(
        "--jwt-private-key",
        type=Path,
        metavar="PEM",
        help="RSA or EC P-256 private key file, to sign RS256/ES256 tokens",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..access.keys import load_private_key, read_key_file
    from ..access.tokens import mint_token

    if not args.channels and not args.publish and not args.admin:
        raise ConfigError("token needs at least one --channel, --publish or --admin")
    key: str | bytes
    if args.jwt_private_key is not None:
        key = read_key_file(args.jwt_private_key, "--jwt-private-key")
        _, algorithm = load_private_key(key, f"--jwt-private-key {str(args.jwt_private_key)!r}")
    else:
        key = args.jwt_secret or os.environ.get("SSERELAY_JWT_SECRET", "")
        algorithm = "HS256"
        if not key:
            raise ConfigError(
                "token needs a key: SSERELAY_JWT_SECRET, --jwt-secret or --jwt-private-key"
            )
    token = mint_token(
        key,
        subscribe=args.channels,
        publish=args.publish,
        ttl=args.ttl,
        subject=args.subject,
        algorithm=algorithm,
        admin=args.admin,
        jti=args.jti,
    )
    print(token, flush=True)
    return 0
