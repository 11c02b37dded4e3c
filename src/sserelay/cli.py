"""The ``sserelay`` command: ``serve``, ``publish``, ``listen``, ``migrate``, ``prune``,
``token``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import __version__, config
from .config import Settings, load_settings, parse_log_level, settings_from_env
from .errors import ConfigError, SseRelayError
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
    try:
        await relay.start(sock)
    except OSError as exc:  # the port is taken, the host is not ours...
        await relay.shutdown()
        raise _cannot_listen(settings, exc) from exc
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


def _cannot_listen(settings: Settings, exc: OSError) -> ConfigError:
    reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
    return ConfigError(f"cannot listen on {settings.host}:{settings.port}: {reason}")


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        host=args.host,
        port=args.port,
        workers=args.workers,
        dsn=args.dsn,
        data_dir=args.data_dir,
        heartbeat=args.heartbeat,
        retry_ms=args.retry,
        retention_age=args.retention_age,
        retention_count=args.retention_count,
        max_replay=args.max_replay,
    )
    if settings.jwt_secret is not None or settings.jwt_public_key is not None:
        # Fail closed until the HTTP adapters check tokens (the next step): a relay given
        # a key must never serve the channels it would make private to everyone.
        raise ConfigError(
            "SSERELAY_JWT_SECRET / SSERELAY_JWT_PUBLIC_KEY are set, but serve does not "
            "check tokens yet; unset them to run an open relay"
        )
    dsn = resolve_dsn(settings.dsn, settings.data_dir, announce=True)
    if settings.workers == 1:
        return run_async(lambda: _serve(settings, dsn, None))
    from .workers import bind, supervise

    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        raise _cannot_listen(settings, exc) from exc
    print(f"sserelay: {settings.workers} workers on port {sock.getsockname()[1]}", flush=True)

    def worker(index: int) -> None:
        run_async(lambda: _serve(settings, dsn, sock))

    return supervise(settings.workers, worker, grace=settings.shutdown_timeout + 2)


# -- publish -------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    from .publish import publish

    data = sys.stdin.read() if args.data == "-" else args.data
    dsn = resolve_dsn(args.dsn or _env_dsn(), args.data_dir, announce=False)
    event_id = publish(
        dsn,
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


# -- migrate, prune (durable channels) -----------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from .schema import migrate

    dsn = resolve_dsn(args.dsn or _env_dsn(), args.data_dir, announce=False)
    print(f"sserelay: schema at version {migrate(dsn)}", flush=True)
    return 0


def parse_duration(text: str) -> datetime.timedelta:
    """``7d``, ``12h``, ``1d12h``, ``90m``, ``30s``, ``2w`` -> a timedelta (for argparse)."""
    try:
        return datetime.timedelta(seconds=config.parse_duration(text))
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration like 90s, 15m, 12h, 7d or 1d12h"
        ) from None


def _seconds(text: str) -> float:
    return parse_duration(text).total_seconds()


def cmd_prune(args: argparse.Namespace) -> int:
    from .durable import prune

    if args.max_age is None and args.max_count is None:
        print("sserelay: error: prune needs --max-age and/or --max-count", file=sys.stderr)
        return 2
    dsn = resolve_dsn(args.dsn or _env_dsn(), args.data_dir, announce=False)
    deleted = prune(dsn, max_age=args.max_age, max_count=args.max_count)
    if deleted is None:
        print("sserelay: another prune is running; nothing done", flush=True)
        return 1
    print(f"sserelay: pruned {deleted} events", flush=True)
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


# -- token ---------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import load_private_key, mint_token, read_key_file

    if not args.channels and not args.publish:
        raise ConfigError("token needs at least one --channel or --publish")
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
    )
    print(token, flush=True)
    return 0


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
    serve.add_argument(
        "--retention-age",
        type=_seconds,
        help="durable channels: prune events older than this (7d, 12h, 90m)",
    )
    serve.add_argument(
        "--retention-count", type=int, help="durable channels: keep at most N events per channel"
    )
    serve.add_argument(
        "--max-replay", type=int, help="most events replayed per channel to one stream (10000)"
    )
    database_options(serve)
    serve.set_defaults(func=cmd_serve)

    pub = sub.add_parser("publish", help="publish one event")
    pub.add_argument("channel")
    pub.add_argument("data", help="the event's data ('-' reads standard input)")
    pub.add_argument("--event", help="SSE event name")
    pub.add_argument("--id", help="SSE event id")
    pub.add_argument("--retry", type=int, help="SSE retry hint (ms)")
    pub.add_argument(
        "--durable",
        action=argparse.BooleanOptionalAction,
        help="append to the event log and print the id (default: if `sserelay migrate` ran)",
    )
    database_options(pub)
    pub.set_defaults(func=cmd_publish)

    mig = sub.add_parser("migrate", help="install or upgrade the schema for durable channels")
    database_options(mig)
    mig.set_defaults(func=cmd_migrate)

    prune = sub.add_parser("prune", help="delete old events from the durable log")
    prune.add_argument(
        "--max-age", type=parse_duration, help="delete events older than this (7d, 12h, 90m)"
    )
    prune.add_argument("--max-count", type=int, help="keep at most this many events per channel")
    database_options(prune)
    prune.set_defaults(func=cmd_prune)

    listen = sub.add_parser("listen", help="print events as they arrive")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL")
    database_options(listen)
    listen.set_defaults(func=cmd_listen)

    tok = sub.add_parser("token", help="print a signed token for a subscriber or publisher")
    tok.add_argument(
        "--channel",
        action="append",
        default=[],
        dest="channels",
        metavar="PATTERN",
        help="channel (or pattern like 'room-*') the bearer may subscribe to; repeatable",
    )
    tok.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="PATTERN",
        help="channel (or pattern) the bearer may publish to; repeatable",
    )
    tok.add_argument(
        "--ttl", type=_seconds, default=3600.0, help="lifetime: 3600, 15m, 12h (default 1h)"
    )
    tok.add_argument("--subject", help="who the bearer is (the sub claim), for logs and limits")
    key = tok.add_mutually_exclusive_group()
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
    tok.set_defaults(func=cmd_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Inside the try: a bad --log-level, LOG_LEVEL or SSERELAY_* is a one-line error.
        if args.log_level:
            level = parse_log_level(args.log_level, "--log-level")
        else:
            level = str(settings_from_env().get("log_level", "INFO"))
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        return int(args.func(args))
    except SseRelayError as exc:
        print(f"sserelay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
