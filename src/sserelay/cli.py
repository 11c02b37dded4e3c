"""The ``sserelay`` command: ``serve``, ``publish``, ``listen``, ``migrate``, ``prune``,
``token``, ``demo``, ``capture``."""

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


async def _serve(settings: Settings, dsn: str | None, sock: socket.socket | None) -> int:
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


def serve_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``serve``: its flags over the environment over the defaults."""
    return load_settings(
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
        jwt_secret=args.jwt_secret,
        jwt_public_key=args.jwt_public_key,
        public_channels=tuple(args.public_channels) if args.public_channels else None,
        token_cookie=args.token_cookie,
        max_streams=args.max_streams,
        max_streams_per_client=args.max_streams_per_client,
        max_streams_per_subject=args.max_streams_per_subject,
        max_stream_lifetime=args.max_stream_lifetime,
        max_publish_bytes=args.max_publish_bytes,
        publish_rate=args.publish_rate,
        publish_burst=args.publish_burst,
        redis_url=args.redis,
        broker=_broker_flag(args),
        capture=args.capture,
        capture_max_lag=args.capture_max_lag,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    settings = serve_settings(args)
    dsn = None
    if settings.bus == "postgres":
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
    bus = _bus_settings(args)
    target: Any
    if bus.bus == "redis":
        from .redis_log import RedisBus

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


# -- migrate, prune (durable channels) -----------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from .schema import migrate

    if _bus_settings(args).bus == "redis":
        print("sserelay: Redis needs no migration (streams appear on first publish)", flush=True)
        return 0
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
    bus = _bus_settings(args)
    if bus.bus == "redis":
        return run_async(lambda: _prune_redis(bus, args.max_age, args.max_count))
    dsn = resolve_dsn(args.dsn or _env_dsn(), args.data_dir, announce=False)
    deleted = prune(dsn, max_age=args.max_age, max_count=args.max_count)
    if deleted is None:
        print("sserelay: another prune is running; nothing done", flush=True)
        return 1
    print(f"sserelay: pruned {deleted} events", flush=True)
    return 0


async def _prune_redis(
    bus: Settings, max_age: datetime.timedelta | None, max_count: int | None
) -> int:
    from .redis_log import RedisLog

    assert bus.redis_url is not None
    log_ = RedisLog(bus.redis_url, prefix=bus.redis_prefix)
    try:
        deleted = await log_.prune(max_age, max_count)
    finally:
        await log_.close()
    print(f"sserelay: pruned {deleted} events", flush=True)
    return 0


# -- listen --------------------------------------------------------------------------


def format_event(channel: str, payload: str) -> str:
    """One human-readable block per event, for ``sserelay listen``."""
    ev = event_from_notification(channel, payload)
    stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    meta = "".join(f"  {k}={v}" for k, v in (("event", ev.event), ("id", ev.id)) if v)
    return f"[{stamp}] {channel}{meta}\n{ev.data}\n"


async def _listen(bus: Settings, channels: Sequence[str]) -> int:
    from .postgres import PostgresListener

    def show(channel: str, payload: str) -> None:
        print(format_event(channel, payload), flush=True)

    def ready(live: Any) -> None:
        for channel in live:
            print(f"# listening on {channel}", file=sys.stderr, flush=True)

    listener: Any
    if bus.bus == "redis":
        from .redis_broker import RedisListener

        assert bus.redis_url is not None
        listener = RedisListener(
            bus.redis_url, show, ready, prefix=bus.redis_prefix, client_name="sserelay-cli"
        )
    else:
        assert bus.dsn is not None
        listener = PostgresListener(bus.dsn, show, ready, application_name="sserelay-cli")
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
    bus = _bus_settings(args)
    if bus.bus == "postgres":
        bus = bus.replace(dsn=resolve_dsn(bus.dsn, args.data_dir, announce=False))
    return run_async(lambda: _listen(bus, channels))


def _broker_flag(args: argparse.Namespace) -> str | None:
    """``--broker``; else ``--redis`` on the command line (without ``--dsn``) means Redis,
    whatever the environment says (flags win)."""
    if args.broker is None and args.redis and not args.dsn:
        return "redis"
    return args.broker  # type: ignore[no-any-return]  # argparse: a choice or None


def _bus_settings(args: argparse.Namespace) -> Settings:
    """Which bus a command talks to: flags, then the environment (see Settings.bus)."""
    env = settings_from_env()
    keep = ("dsn", "redis_url", "broker", "redis_prefix", "retention_count", "retention_age")
    values = {k: v for k, v in env.items() if k in keep}
    flags = {"dsn": args.dsn, "redis_url": args.redis, "broker": _broker_flag(args)}
    values.update({k: v for k, v in flags.items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]  # validated in __post_init__


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


# -- demo --------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .contrib.django.demo import run_demo

    dsn = resolve_dsn(args.dsn or _env_dsn(), args.data_dir, announce=False)
    return run_demo(
        dsn,
        mode=args.mode,
        host=args.host,
        port=args.port,
        relay_port=args.relay_port,
        example=args.example,
    )


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
            "--redis",
            metavar="URL",
            help="use Redis as the bus: redis://host:6379/0 (env SSERELAY_REDIS_URL, REDIS_URL)",
        )
        p.add_argument(
            "--broker",
            choices=("postgres", "redis"),
            help="the bus when both a DSN and a Redis URL are set (env SSERELAY_BROKER;"
            " default: redis only if no DSN is set)",
        )
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
    serve.add_argument(
        "--jwt-secret",
        help="HS256 secret verifying tokens; prefer env SSERELAY_JWT_SECRET (flags show in ps)",
    )
    serve.add_argument(
        "--jwt-public-key",
        type=Path,
        metavar="PEM",
        help="RSA or EC P-256 public key file verifying RS256/ES256 tokens",
    )
    serve.add_argument(
        "--public-channel",
        action="append",
        dest="public_channels",
        metavar="PATTERN",
        help="channel (or pattern like 'news-*') anyone may read without a token; repeatable",
    )
    serve.add_argument("--token-cookie", help="cookie that may carry the token (sserelay_token)")
    serve.add_argument("--max-streams", type=int, help="streams per process (default 20000)")
    serve.add_argument(
        "--max-streams-per-client",
        type=int,
        help="streams per client address (default 0: no limit)",
    )
    serve.add_argument(
        "--max-streams-per-subject",
        type=int,
        help="streams per token subject (default 64; 0: no limit)",
    )
    serve.add_argument(
        "--max-stream-lifetime",
        type=_seconds,
        help="end each stream after this long (90s, 15m, 12h; -0-10%% jitter); default: never",
    )
    serve.add_argument(
        "--max-publish-bytes", type=int, help="POST /publish: largest body in bytes (65536)"
    )
    serve.add_argument(
        "--publish-rate",
        type=float,
        help="POST /publish: events per second per token subject, on average (50)",
    )
    serve.add_argument(
        "--publish-burst", type=int, help="POST /publish: events a subject may send at once (100)"
    )
    serve.add_argument(
        "--capture",
        action="store_const",
        const=True,
        help="run change data capture too (env SSERELAY_CAPTURE; docs/capture.md)",
    )
    serve.add_argument(
        "--capture-max-lag",
        type=_seconds,
        help="capture lag (30s, 5m) past which /healthz answers 503; default: never",
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

    demo = sub.add_parser("demo", help="run the Django chat example (examples/chat)")
    demo.add_argument(
        "--mode",
        choices=("asgi", "wsgi"),
        default="asgi",
        help="asgi: Django serves the streams; wsgi: Django + `sserelay serve` (default asgi)",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="the chat's port (8000)")
    demo.add_argument("--relay-port", type=int, default=8001, help="wsgi mode: relay port (8001)")
    demo.add_argument("--example", type=Path, help="the chat example's directory")
    database_options(demo)
    demo.set_defaults(func=cmd_demo)

    from .capture.cli import add_capture_parser

    add_capture_parser(sub)
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
