"""``sserelay serve``: run the relay (one process, or ``--workers N`` on one port)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

from ..config import Settings, load_settings
from ..errors import ConfigError
from .common import add_bus_options, broker_flag, resolve_dsn, run_async, say, seconds

log = logging.getLogger("sserelay")

DESCRIPTION = """\
Run the relay: hold browsers' Server-Sent Events streams (GET /events/CHANNEL) and
deliver every event published on PostgreSQL (NOTIFY, sserelay.publish) or Redis to
every subscriber of its channel. With no --dsn/DATABASE_URL it starts the embedded
PostgreSQL.
"""

EPILOG = """\
environment (flags win): DATABASE_URL, SSERELAY_LISTEN_DSN, SSERELAY_REDIS_URL or
REDIS_URL, SSERELAY_BROKER, SSERELAY_REDIS_PREFIX, SSERELAY_HOST, SSERELAY_PORT,
SSERELAY_WORKERS, SSERELAY_DATA_DIR, ALLOWED_ORIGINS (comma-separated origins or *;
no flag), LOG_LEVEL, SSERELAY_HEARTBEAT, SSERELAY_RETRY_MS, SSERELAY_HEADER_TIMEOUT,
SSERELAY_PROBE_INTERVAL, SSERELAY_SHUTDOWN_TIMEOUT, SSERELAY_MAX_CLIENT_BUFFER,
SSERELAY_MAX_CHANNELS, SSERELAY_MAX_HEADER_BYTES, SSERELAY_RETENTION_AGE,
SSERELAY_RETENTION_COUNT, SSERELAY_MAX_REPLAY, SSERELAY_JWT_SECRET,
SSERELAY_JWT_PUBLIC_KEY, SSERELAY_PUBLIC_CHANNELS, SSERELAY_TOKEN_COOKIE,
SSERELAY_MAX_STREAMS, SSERELAY_MAX_STREAMS_PER_CLIENT, SSERELAY_MAX_STREAMS_PER_SUBJECT,
SSERELAY_MAX_DISTINCT_CHANNELS, SSERELAY_MAX_CHANNELS_PER_CLIENT,
SSERELAY_FORWARDED_ALLOW_IPS, SSERELAY_DRAIN_TIMEOUT,
SSERELAY_MAX_STREAM_LIFETIME, SSERELAY_MAX_PUBLISH_BYTES, SSERELAY_PUBLISH_RATE,
SSERELAY_PUBLISH_BURST, SSERELAY_CAPTURE, SSERELAY_CAPTURE_MAX_LAG. Every setting is
described in the README's "Settings" section.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the relay",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8001)")
    p.add_argument("--workers", type=int, help="worker processes on one port (default 1)")
    p.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 15)")
    p.add_argument("--retry", type=int, help="client reconnect delay in ms (default 2000)")
    p.add_argument(
        "--retention-age",
        type=seconds,
        help="durable channels: prune events older than this (7d, 12h, 90m)",
    )
    p.add_argument(
        "--retention-count", type=int, help="durable channels: keep at most N events per channel"
    )
    p.add_argument(
        "--max-replay", type=int, help="most events replayed per channel to one stream (10000)"
    )
    _add_security_options(p)
    _add_capture_options(p)
    _add_admin_options(p)
    _add_presence_options(p)
    add_bus_options(p)
    p.set_defaults(func=run)


def _add_security_options(p: argparse.ArgumentParser) -> None:
    """Tokens and public channels."""
    p.add_argument(
        "--jwt-secret",
        help="HS256 secret verifying tokens; prefer env SSERELAY_JWT_SECRET (flags show in ps)",
    )
    p.add_argument(
        "--jwt-public-key",
        type=Path,
        metavar="PEM",
        help="RSA or EC P-256 public key file verifying RS256/ES256 tokens",
    )
    p.add_argument(
        "--public-channel",
        action="append",
        dest="public_channels",
        metavar="PATTERN",
        help="channel (or pattern like 'news-*') anyone may read without a token; repeatable",
    )
    p.add_argument("--token-cookie", help="cookie that may carry the token (sserelay_token)")
    _add_limit_options(p)


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    """Limits on streams, channels and publishing."""
    p.add_argument("--max-streams", type=int, help="streams per process (default 20000)")
    p.add_argument(
        "--max-streams-per-client", type=int, help="streams per client address (default 0: none)"
    )
    p.add_argument(
        "--max-streams-per-subject",
        type=int,
        help="streams per token subject (default 64; 0: no limit)",
    )
    p.add_argument(
        "--max-distinct-channels",
        type=int,
        help="distinct channels per process (default 10000; 0: no limit)",
    )
    p.add_argument(
        "--max-channels-per-client",
        type=int,
        help="distinct channels per token subject, else client address (default 1000; 0: none)",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="proxies whose X-Forwarded-For names the client: comma-separated, or *"
        " (default 127.0.0.1,::1)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        help="seconds a catching-up stream may take to accept what it was sent (default 10)",
    )
    p.add_argument(
        "--max-stream-lifetime",
        type=seconds,
        help="end each stream after this long (90s, 15m, 12h; -0-10%% jitter); default: never",
    )
    p.add_argument(
        "--revocation-ttl",
        type=seconds,
        help="how long a revocation refuses the tokens it names: at least the longest token"
        " lifetime (default 24h)",
    )
    p.add_argument(
        "--max-publish-bytes", type=int, help="POST /publish: largest body in bytes (65536)"
    )
    p.add_argument(
        "--publish-rate",
        type=float,
        help="POST /publish: events per second per token subject, on average (50)",
    )
    p.add_argument(
        "--publish-burst", type=int, help="POST /publish: events a subject may send at once (100)"
    )


def _add_capture_options(p: argparse.ArgumentParser) -> None:
    """Change data capture (docs/capture.md)."""
    p.add_argument(
        "--capture",
        action="store_const",
        const=True,
        help="run change data capture too (env SSERELAY_CAPTURE; README: 'Change data capture')",
    )
    p.add_argument(
        "--capture-max-lag",
        type=seconds,
        help="capture lag (30s, 5m) past which /healthz answers 503; default: never",
    )


def _add_admin_options(p: argparse.ArgumentParser) -> None:
    """The operator's page (docs/admin.md)."""
    p.add_argument(
        "--admin",
        action="store_const",
        const=True,
        help="serve the operator's page GET /admin (env SSERELAY_ADMIN; docs/admin.md)",
    )
    p.add_argument(
        "--admin-user",
        help="HTTP Basic user of /admin; the password only from SSERELAY_ADMIN_PASSWORD",
    )


def _add_presence_options(p: argparse.ArgumentParser) -> None:
    """Presence (docs/presence.md)."""
    p.add_argument(
        "--presence",
        action="append",
        metavar="PATTERN",
        help="keep who is subscribed to channels matching PATTERN ('room-*'; repeatable or "
        "comma-separated; env SSERELAY_PRESENCE)",
    )
    p.add_argument(
        "--presence-events",
        action="store_const",
        const=True,
        help="send sserelay.join / sserelay.leave events on those channels",
    )
    p.add_argument(
        "--presence-lease",
        type=seconds,
        help="how long a relay's presence rows outlive it (default 15s)",
    )


def _patterns(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    return tuple(p.strip() for value in values for p in value.split(",") if p.strip())


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
        max_distinct_channels=args.max_distinct_channels,
        max_channels_per_client=args.max_channels_per_client,
        forwarded_allow_ips=_ips(args.forwarded_allow_ips),
        drain_timeout=args.drain_timeout,
        max_stream_lifetime=args.max_stream_lifetime,
        revocation_ttl=args.revocation_ttl,
        max_publish_bytes=args.max_publish_bytes,
        publish_rate=args.publish_rate,
        publish_burst=args.publish_burst,
        redis_url=args.redis,
        broker=broker_flag(args),
        capture=args.capture,
        capture_max_lag=args.capture_max_lag,
        admin=args.admin,
        admin_user=args.admin_user,
        presence=_patterns(args.presence),
        presence_events=args.presence_events,
        presence_lease=args.presence_lease,
    )


def _ips(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(p.strip() for p in text.replace(",", " ").split() if p.strip())


def run(args: argparse.Namespace) -> int:
    settings = serve_settings(args)
    dsn = None
    if settings.bus == "postgres":
        dsn = resolve_dsn(settings.dsn, settings.data_dir, announce=True)
    if settings.workers == 1:
        return run_async(lambda: serve(settings, dsn, None))
    from ..workers import bind, supervise

    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        raise cannot_listen(settings, exc) from exc
    say(f"{settings.workers} workers on port {sock.getsockname()[1]}")

    def worker(index: int) -> int:
        return run_async(lambda: serve(settings, dsn, sock, worker=index))

    return supervise(settings.workers, worker, grace=settings.shutdown_timeout + 2)


async def serve(
    settings: Settings, dsn: str | None, sock: socket.socket | None, *, worker: int | None = None
) -> int:
    """Run one relay process until SIGTERM/SIGINT; its exit status (1 if it failed)."""
    from ..relay import Relay

    relay = Relay(settings, dsn=dsn)
    try:
        await relay.start(sock)
    except OSError as exc:  # the port is taken, the host is not ours...
        await relay.shutdown()
        raise cannot_listen(settings, exc) from exc
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    who = "" if worker is None else f"worker {worker} (pid {os.getpid()}) "
    say(f"{who}serving on {relay.url} (streams at {relay.url}/events/CHANNEL)")
    if not settings.allowed_origins and not worker:
        log.info("ALLOWED_ORIGINS is empty: browsers on other origins cannot read the streams")
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(relay.failed())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
    if relay.failure is not None:
        # Serving silence is worse than exiting: a supervisor (systemd, --workers) restarts us.
        log.critical("the %s cannot be kept running: shutting down", relay.failure)
    else:
        log.info("shutting down")
    await relay.shutdown()
    return 0 if relay.failure is None else 1


def cannot_listen(settings: Settings, exc: OSError) -> ConfigError:
    reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
    return ConfigError(f"cannot listen on {settings.host}:{settings.port}: {reason}")
