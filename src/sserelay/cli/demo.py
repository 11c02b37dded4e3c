"""``sserelay demo``: the Django chat example, running, in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import add_bus_options, env_dsn, resolve_dsn


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the Django chat example",
        description="Run the chat example (a Django site with live rooms) on the embedded "
        "PostgreSQL (or --dsn) and print its URL. Needs the [demo] extra: "
        "pip install 'sserelay[demo]'.",
        epilog="environment: DATABASE_URL, SSERELAY_DATA_DIR, LOG_LEVEL, "
        "SSERELAY_JWT_SECRET (generated when unset), DJANGO_SECRET_KEY (when unset, the "
        "example keeps a key of its own in CHAT_SECRET_KEY_FILE, by default "
        "~/.local/share/sserelay/chat-secret-key).",
    )
    p.add_argument(
        "--mode",
        choices=("asgi", "wsgi"),
        default="asgi",
        help="asgi: Django serves the streams; wsgi: Django + `sserelay serve` (default asgi)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="the chat's port (8000)")
    p.add_argument("--relay-port", type=int, default=8001, help="wsgi mode: relay port (8001)")
    p.add_argument(
        "--example",
        type=Path,
        help="run a copy of the chat example from this directory (default: the one "
        "installed with sserelay, sserelay/contrib/django/example)",
    )
    p.add_argument(
        "--capture",
        action="store_true",
        help="publish the chat's messages by change data capture (CHAT_CAPTURE=1), so rows "
        "inserted by psql appear too; needs wal_level = logical (the embedded PostgreSQL "
        "has it)",
    )
    add_bus_options(p, redis=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..contrib.django.demo import run_demo
    except ImportError as exc:
        raise ConfigError(
            f"the demo needs Django: pip install 'sserelay[demo]' ({exc.name} is missing)"
        ) from None
    dsn = resolve_dsn(args.dsn or env_dsn(), args.data_dir, announce=False)
    return run_demo(
        dsn,
        mode=args.mode,
        host=args.host,
        port=args.port,
        relay_port=args.relay_port,
        example=args.example,
        capture=args.capture,
    )
