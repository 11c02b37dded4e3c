"""What the subcommands share: running a coroutine, the bus options, durations, logging."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .. import config
from ..bus.postgres.embedded import dsn_or_embedded
from ..config import Settings, settings_from_env
from ..errors import ConfigError


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def resolve_dsn(dsn: str | None, data_dir: Path | None, *, announce: bool) -> str:
    """``dsn``, or the embedded PostgreSQL's (started if it is not running)."""
    return dsn_or_embedded(dsn, data_dir, announce=announce)


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """``--log-level``: accepted before or after the subcommand."""
    parser.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (env LOG_LEVEL; default INFO)",
    )


def add_bus_options(parser: argparse.ArgumentParser, *, redis: bool = True) -> None:
    """``--dsn``, ``--redis``, ``--broker``, ``--data-dir``."""
    parser.add_argument(
        "--dsn",
        help="PostgreSQL DSN (env DATABASE_URL); default: the embedded PostgreSQL",
    )
    if redis:
        parser.add_argument(
            "--redis",
            metavar="URL",
            help="use Redis as the bus: redis://host:6379/0 (env SSERELAY_REDIS_URL, REDIS_URL)",
        )
        parser.add_argument(
            "--broker",
            choices=("postgres", "redis"),
            help="the bus when both a DSN and a Redis URL are set (env SSERELAY_BROKER;"
            " default: redis only if no DSN is set)",
        )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="embedded PostgreSQL data directory (env SSERELAY_DATA_DIR;"
        " default ~/.local/share/sserelay/pgdata)",
    )


def broker_flag(args: argparse.Namespace) -> str | None:
    """``--broker``; else ``--redis`` on the command line (without ``--dsn``) means Redis,
    whatever the environment says (flags win)."""
    broker: str | None = getattr(args, "broker", None)
    if broker is None and getattr(args, "redis", None) and not args.dsn:
        return "redis"
    return broker


def bus_settings(args: argparse.Namespace) -> Settings:
    """Which bus a command talks to: flags, then the environment (see Settings.bus)."""
    env = settings_from_env()
    keep: tuple[str, ...] = ("dsn", "redis_url", "broker", "redis_prefix", "revocation_ttl")
    keep += ("retention_count", "retention_age")
    values = {k: v for k, v in env.items() if k in keep}
    flags = {
        "dsn": args.dsn,
        "redis_url": getattr(args, "redis", None),
        "broker": broker_flag(args),
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]  # validated in __post_init__


def require_redis(what: str) -> None:
    """ConfigError naming the ``[redis]`` extra, rather than an ImportError from deep in
    the bus, if the redis package is not installed."""
    import importlib.util

    if importlib.util.find_spec("redis") is None:
        raise ConfigError(f"{what} needs the redis package: pip install 'sserelay[redis]'")


def env_dsn() -> str | None:
    value = settings_from_env().get("dsn")
    return value if isinstance(value, str) else None


def parse_duration(text: str) -> datetime.timedelta:
    """``7d``, ``12h``, ``1d12h``, ``90m``, ``30s``, ``2w`` -> a timedelta (for argparse)."""
    try:
        return datetime.timedelta(seconds=config.parse_duration(text))
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration like 90s, 15m, 12h, 7d or 1d12h"
        ) from None


def seconds(text: str) -> float:
    return parse_duration(text).total_seconds()


def configure_logging(level: str, *, tag: str = "") -> None:
    """Log to stderr; ``tag`` (e.g. ``worker 2``) goes in every line."""
    prefix = f"[{tag}] " if tag else ""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        stream=sys.stderr,
    )


def say(text: str) -> None:
    """A line for the person at the terminal (stdout, flushed)."""
    print(f"sserelay: {text}", flush=True)


def pid_tag() -> str:
    return f"pid {os.getpid()}"
