"""``sserelay capture ...``: install, add, remove, list, status, run, reset-slot, uninstall.

:func:`add_capture_parser` adds the ``capture`` command to the ``sserelay`` parser; each
subcommand's function takes the parsed arguments and returns the exit status. Errors are
:class:`~sserelay.errors.SseRelayError` (the main parser prints them on one line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ..config import settings_from_env
from ..errors import BrokerUnavailable, ConfigError
from . import rules as rules_
from . import slot as slot_
from .status import SlotStatus, read_status


def _dsn(args: argparse.Namespace) -> str:
    explicit = args.dsn or settings_from_env().get("dsn")
    if isinstance(explicit, str) and explicit:
        return explicit
    from ..embedded import start_embedded

    return start_embedded(args.data_dir)


@contextlib.contextmanager
def _connect(args: argparse.Namespace) -> Any:
    dsn = _dsn(args)
    try:
        conn = psycopg.connect(dsn, autocommit=True, application_name="sserelay-cli")
    except psycopg.Error as exc:
        raise BrokerUnavailable(f"cannot connect to the database: {exc}") from None
    with conn:
        yield conn


def cmd_install(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        name = slot_.install(conn, slot=args.slot)
    print(f"sserelay: capture installed (slot {name}); add tables with `sserelay capture add`")
    return 0


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--columns needs at least one column name")
    return names


def cmd_add(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        name = slot_.install(conn, slot=args.slot)
        rule = rules_.add(
            conn,
            args.table,
            args.channel,
            columns=_names(args.columns),
            row_filter=args.where,
            events=_names(args.events) or rules_.DEFAULT_EVENTS,
            event_prefix=args.event_prefix,
        )
    events = ", ".join(e for e in rules_.EVENTS if e in rule.events)
    print(
        f"sserelay: capturing {rule.name} ({events}) on {rule.channel.text!r} as "
        f"{rule.event_prefix}.*; slot {name}. Run `sserelay serve --capture` or "
        "`sserelay capture run` to publish the changes."
    )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        if slot_.configured_slot(conn) is None:
            raise ConfigError("capture is not installed in this database")
        removed = rules_.remove(conn, args.table)
    if not removed:
        print(f"sserelay: {args.table} was not captured", file=sys.stderr)
        return 1
    print(f"sserelay: no longer capturing {args.table}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        if slot_.configured_slot(conn) is None:
            raise ConfigError("capture is not installed in this database")
        found = rules_.load_rules(conn)
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


def describe(status: SlotStatus) -> list[str]:
    state = "LOST" if status.lost else ("active" if status.slot_active else "inactive")
    lag = status.lag_seconds
    lines = [
        f"slot:           {status.slot} ({state}, wal_status {status.wal_status or '-'})",
        f"lag:            {status.lag_bytes if status.lag_bytes is not None else '-'} bytes, "
        f"{'-' if lag is None else f'{lag:.1f}'} s",
        f"last captured:  commit {status.last_commit_lsn} at "
        f"{status.last_commit_time.isoformat() if status.last_commit_time else '-'}",
        f"captured:       {status.transactions} transactions, {status.events} events, "
        f"{status.rows_skipped} rows skipped; {status.rules} tables",
    ]
    if status.last_error:
        lines.append(f"last error:     {status.last_error} ({status.last_error_at})")
    if status.lost:
        lines.append(
            f"lost:           {status.lost_reason or 'the slot is gone'}; run "
            "`sserelay capture reset-slot`"
        )
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        status = read_status(conn)
    if status is None:
        raise ConfigError("capture is not installed in this database")
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
    else:
        print("\n".join(describe(status)))
    return 1 if status.lost else 0


def cmd_reset_slot(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        name, told = slot_.reset_slot(conn)
    print(f"sserelay: slot {name} recreated; `missed` sent on {len(told)} channels")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        name = slot_.uninstall(conn)
    print(f"sserelay: capture uninstalled (slot {name or '-'} and publications dropped)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .capturer import Capturer
    from .options import CaptureOptions

    dsn = _dsn(args)
    capturer = Capturer(dsn, CaptureOptions())

    async def main() -> int:
        task = asyncio.create_task(capturer.run(), name="sserelay-capture")
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print("sserelay: capturing (Ctrl-C to stop)", flush=True)
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return 0

    return asyncio.run(main())


def add_capture_parser(subparsers: Any) -> None:
    """Add ``capture`` and its subcommands to the ``sserelay`` parser's subparsers."""
    capture = subparsers.add_parser(
        "capture", help="change data capture: publish row changes of tables"
    )
    sub = capture.add_subparsers(dest="capture_command", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> Any:
        parser = sub.add_parser(name, help=help)
        parser.add_argument("--dsn", help="PostgreSQL DSN (env DATABASE_URL); default: embedded")
        parser.add_argument(
            "--data-dir", type=Path, help="embedded PostgreSQL data directory (SSERELAY_DATA_DIR)"
        )
        parser.set_defaults(func=func)
        return parser

    p = command("install", cmd_install, "install capture: publications and replication slot")
    p.add_argument("--slot", help="replication slot name (default sserelay_<database>)")
    p = command("add", cmd_add, "capture a table's row changes on a channel")
    p.add_argument("table", help="the table, as in SQL: orders, public.orders, '\"Orders\"'")
    p.add_argument(
        "--channel", required=True, help="channel or template: orders, 'orders:{customer_id}'"
    )
    p.add_argument("--columns", help="publish only these columns: id,status,total")
    p.add_argument("--where", help="publish only rows matching this SQL expression")
    p.add_argument("--events", help="what to capture: insert,update,delete (default), truncate too")
    p.add_argument("--event-prefix", help="event names are PREFIX.insert... (default: the table)")
    p.add_argument("--slot", help="replication slot name, on first install")
    p = command("remove", cmd_remove, "stop capturing a table")
    p.add_argument("table")
    p = command("list", cmd_list, "list the captured tables")
    p.add_argument("--json", action="store_true", help="as JSON")
    p = command("status", cmd_status, "slot, lag and last capture (exit 1 if the slot is lost)")
    p.add_argument("--json", action="store_true", help="as JSON")
    command("run", cmd_run, "run the capturer alone (as `serve --capture` does)")
    command("reset-slot", cmd_reset_slot, "recreate a lost slot; send `missed` on its channels")
    command("uninstall", cmd_uninstall, "drop the slot and publications, forget the rules")
