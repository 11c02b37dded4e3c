"""``sserelay capture ...``: install, add, remove, list, status, run, reset-slot, uninstall
(change data capture, docs/capture.md).

Each subcommand reaches the database through :mod:`sserelay.bus.postgres.capture.commands`
and returns the exit status; errors are :class:`~sserelay.errors.SseRelayError`, which
``main`` prints on one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ..bus.postgres.capture import Capturer, commands
from ..bus.postgres.capture.rules import DEFAULT_EVENTS, EVENTS
from ..bus.postgres.capture.serve import run_alone
from ..bus.postgres.capture.status import describe
from ..errors import ConfigError
from .common import add_log_level, env_dsn, resolve_dsn, run_async, say

DESCRIPTION = """\
Change data capture: publish every committed row change of chosen tables on durable
channels, read from PostgreSQL's logical replication (wal_level = logical). `add` a
table, then run `sserelay serve --capture` (or `sserelay capture run`).
"""


def _dsn(args: argparse.Namespace) -> str:
    return resolve_dsn(args.dsn or env_dsn(), args.data_dir, announce=False)


def _names(text: str | None, flag: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{flag} needs at least one name")
    return names


def install(args: argparse.Namespace) -> int:
    name = commands.install(_dsn(args), slot=args.slot)
    say(f"capture installed (slot {name}); add tables with `sserelay capture add`")
    return 0


def add(args: argparse.Namespace) -> int:
    columns = _names(args.columns, "--columns")
    spec = commands.RuleSpec(
        table=args.table,
        channel=args.channel,
        columns=None if columns is None else tuple(columns),
        where=args.where,
        events=_names(args.events, "--events") or DEFAULT_EVENTS,
        event_prefix=args.event_prefix,
    )
    name, rule = commands.add(_dsn(args), spec, slot=args.slot)
    events = ", ".join(e for e in EVENTS if e in rule.events)
    say(
        f"capturing {rule.name} ({events}) on {rule.channel.text!r} as "
        f"{rule.event_prefix}.*; slot {name}. Run `sserelay serve --capture` or "
        "`sserelay capture run` to publish the changes."
    )
    return 0


def remove(args: argparse.Namespace) -> int:
    if not commands.remove(_dsn(args), args.table):
        print(f"sserelay: {args.table} was not captured", file=sys.stderr)
        return 1
    say(f"no longer capturing {args.table}")
    return 0


def list_rules(args: argparse.Namespace) -> int:
    found = commands.list_rules(_dsn(args))
    if args.json:
        print(json.dumps([r.as_dict() for r in found], indent=2))
        return 0
    if not found:
        print("no table is captured (sserelay capture add TABLE --channel CHANNEL)")
    for rule in found:
        d = rule.as_dict()
        extra = "".join(
            f"  {k}={v}" for k, v in (("columns", d["columns"]), ("where", d["where"])) if v
        )
        print(f"{d['table']}  -> {d['channel']}  events={','.join(d['events'])}{extra}")
    return 0


def status(args: argparse.Namespace) -> int:
    found = commands.status(_dsn(args))
    if args.json:
        print(json.dumps(found.as_dict(), indent=2))
    else:
        print("\n".join(describe(found)))
    return 1 if found.lost else 0


def reset_slot(args: argparse.Namespace) -> int:
    name, told = commands.reset_slot(_dsn(args))
    say(f"slot {name} recreated; `missed` sent on {len(told)} channels")
    return 0


def uninstall(args: argparse.Namespace) -> int:
    name = commands.uninstall(_dsn(args))
    say(f"capture uninstalled (slot {name or '-'} and publications dropped)")
    return 0


def run(args: argparse.Namespace) -> int:
    """A capturer alone, until SIGTERM/SIGINT (``serve --capture`` runs the same)."""
    capturer = Capturer(_dsn(args))
    return run_async(lambda: run_alone(capturer, started=lambda: say("capturing (Ctrl-C to stop)")))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``capture`` and its subcommands to the ``sserelay`` parser."""
    capture = sub.add_parser(
        "capture",
        help="change data capture: publish row changes of tables",
        description=DESCRIPTION,
        epilog="environment: DATABASE_URL, SSERELAY_DATA_DIR, LOG_LEVEL. "
        "See the README's 'Change data capture' section.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands_ = capture.add_subparsers(dest="capture_command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        parser = commands_.add_parser(name, help=help, description=help)
        parser.add_argument("--dsn", help="PostgreSQL DSN (env DATABASE_URL); default: embedded")
        parser.add_argument(
            "--data-dir",
            type=Path,
            help="embedded PostgreSQL data directory (env SSERELAY_DATA_DIR)",
        )
        add_log_level(parser)
        parser.set_defaults(func=func)
        return parser

    p = command("install", install, "install capture: publications and replication slot")
    p.add_argument("--slot", help="replication slot name (default sserelay_<database>)")
    p = command("add", add, "capture a table's row changes on a channel")
    p.add_argument("table", help="the table, as in SQL: orders, public.orders, '\"Orders\"'")
    p.add_argument(
        "--channel", required=True, help="channel or template: orders, 'orders:{customer_id}'"
    )
    p.add_argument("--columns", help="publish only these columns: id,status,total")
    p.add_argument("--where", help="publish only rows matching this SQL expression")
    p.add_argument("--events", help="what to capture: insert,update,delete (default), truncate too")
    p.add_argument("--event-prefix", help="event names are PREFIX.insert... (default: the table)")
    p.add_argument("--slot", help="replication slot name, on first install")
    p = command("remove", remove, "stop capturing a table")
    p.add_argument("table")
    p = command("list", list_rules, "list the captured tables")
    p.add_argument("--json", action="store_true", help="as JSON")
    p = command("status", status, "slot, lag and last capture (exit 1 if the slot is lost)")
    p.add_argument("--json", action="store_true", help="as JSON")
    command("run", run, "run the capturer alone (as `serve --capture` does)")
    command("reset-slot", reset_slot, "recreate a lost slot; send `missed` on its channels")
    command("uninstall", uninstall, "drop the slot and publications, forget the rules")
