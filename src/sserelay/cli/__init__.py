"""The ``sserelay`` command: one module per subcommand (``serve``, ``publish``, ``listen``,
``migrate``/``prune``, ``token``, ``revoke``, ``demo``, ``capture``), assembled here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..config import parse_log_level, settings_from_env
from ..errors import SseRelayError
from . import capture, demo, listen, log, publish, revoke, serve, token
from .common import add_log_level, configure_logging

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sserelay",
        description="Relay PostgreSQL (or Redis) events to browsers as Server-Sent Events.",
        epilog="`sserelay COMMAND --help` describes each command and the environment "
        "variables it reads.",
    )
    parser.add_argument("--version", action="version", version=f"sserelay {__version__}")
    add_log_level(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(sub)
    publish.add_parser(sub)
    listen.add_parser(sub)
    log.add_parsers(sub)
    token.add_parser(sub)
    revoke.add_parser(sub)
    demo.add_parser(sub)
    capture.add_parser(sub)
    for command in sub.choices.values():
        add_log_level(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Inside the try: a bad --log-level, LOG_LEVEL or SSERELAY_* is a one-line error.
        flag = getattr(args, "log_level", None)
        if flag:
            level = parse_log_level(flag, "--log-level")
        else:
            level = str(settings_from_env().get("log_level", "INFO"))
        configure_logging(level)
        return int(args.func(args))
    except SseRelayError as exc:
        print(f"sserelay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
