"""The ``sserelay`` command: ``serve``, ``publish``, ``listen``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Settings, load_settings, settings_from_env
from .errors import SseRelayError
from .events import event_from_notification

log = logging.getLogger("sserelay")


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
    if dsn:
        return dsn
    from .embedded import start_embedded

    dsn = start_embedded(data_dir)
    if announce:
        print(
            f"sserelay: no DATABASE_URL or --dsn; started the embedded PostgreSQL.\n"
            f"sserelay: publish to it with:  psql '{dsn}'",
            flush=True,
        )
    return dsn


# -- serve ---------------------------------------------------------------------------


async def _serve(settings: Settings, dsn: str, sock: socket.socket | None) -> int:
    from .relay import Relay

    relay = Relay(settings, dsn=dsn)
    await relay.start(sock)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"sserelay: serving on {relay.url} (streams at {relay.url}/events/CHANNEL)", flush=True)
    if not settings.allowed_origins:
        log.info("ALLOWED_ORIGINS is empty: browsers on other origins cannot read the streams")
    await stop.wait()
    log.info("shutting down")
    await relay.shutdown()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        host=args.host,
        port=args.port,
        workers=args.workers,
        dsn=args.dsn,
        data_dir=args.data_dir,
        heartbeat=args.heartbeat,
        retry_ms=args.retry,
    )
    dsn = resolve_dsn(settings.dsn, settings.data_dir, announce=True)
    if settings.workers == 1:
        return run_async(lambda: _serve(settings, dsn, None))
    from .workers import bind, supervise

    sock = bind(settings.host, settings.port)
    print(f"sserelay: {settings.workers} workers on port {sock.getsockname()[1]}", flush=True)

    def worker(index: int) -> None:
        run_async(lambda: _serve(settings, dsn, sock))

    return supervise(settings.workers, worker, grace=settings.shutdown_timeout + 2)


# -- publish -------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    from .publish import publish

    data = sys.stdin.read() if args.data == "-" else args.data
    dsn = resolve_dsn(args.dsn or _env_dsn(), args.data_dir, announce=False)
    publish(dsn, args.channel, data, event=args.event, id=args.id, retry=args.retry)
    return 0


# -- listen --------------------------------------------------------------------------


def format_event(channel: str, payload: str) -> str:
    """One human-readable block per event, for ``sserelay listen``."""
    ev = event_from_notification(channel, payload)
    stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    meta = "".join(f"  {k}={v}" for k, v in (("event", ev.event), ("id", ev.id)) if v)
    return f"[{stamp}] {channel}{meta}\n{ev.data}\n"


async def _listen(dsn: str, channels: Sequence[str]) -> int:
    from .postgres import PostgresListener

    def show(channel: str, payload: str) -> None:
        print(format_event(channel, payload), flush=True)

    def ready(live: Any) -> None:
        for channel in live:
            print(f"# listening on {channel}", file=sys.stderr, flush=True)

    listener = PostgresListener(dsn, show, ready, application_name="sserelay-cli")
    for channel in channels:
        listener.listen(channel)
    task = asyncio.create_task(listener.run())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    from .channels import validate_channel

    channels = [validate_channel(c) for c in args.channels]
    dsn = resolve_dsn(args.dsn or _env_dsn(), args.data_dir, announce=False)
    return run_async(lambda: _listen(dsn, channels))


def _env_dsn() -> str | None:
    value = settings_from_env().get("dsn")
    return value if isinstance(value, str) else None


# -- the parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sserelay",
        description="Relay PostgreSQL notifications to browsers as Server-Sent Events.",
    )
    parser.add_argument("--version", action="version", version=f"sserelay {__version__}")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (env LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True)

    def database_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dsn", help="PostgreSQL DSN (env DATABASE_URL); default: embedded")
        p.add_argument(
            "--data-dir",
            type=Path,
            help="embedded PostgreSQL data directory (env SSERELAY_DATA_DIR)",
        )

    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8001)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 15)")
    serve.add_argument("--retry", type=int, help="client reconnect delay in ms (default 2000)")
    database_options(serve)
    serve.set_defaults(func=cmd_serve)

    pub = sub.add_parser("publish", help="publish one event")
    pub.add_argument("channel")
    pub.add_argument("data", help="the event's data ('-' reads standard input)")
    pub.add_argument("--event", help="SSE event name")
    pub.add_argument("--id", help="SSE event id")
    pub.add_argument("--retry", type=int, help="SSE retry hint (ms)")
    database_options(pub)
    pub.set_defaults(func=cmd_publish)

    listen = sub.add_parser("listen", help="print events as they arrive")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL")
    database_options(listen)
    listen.set_defaults(func=cmd_listen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or settings_from_env().get("log_level") or "INFO"
    logging.basicConfig(
        level=str(level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except SseRelayError as exc:
        print(f"sserelay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
