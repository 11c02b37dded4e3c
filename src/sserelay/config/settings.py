"""Settings: one frozen dataclass, its defaults and its checks (``env.py`` reads it from
the environment)."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, InvalidChannel


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a relay process needs to know. Defaults are the documented ones."""

    host: str = "127.0.0.1"
    port: int = 8001
    workers: int = 1
    #: Database the relay LISTENs on. None = start the embedded PostgreSQL.
    dsn: str | None = None
    #: Separate DSN for the listening connection (must not go through PgBouncer
    #: in transaction mode). Defaults to ``dsn``.
    listen_dsn: str | None = None
    #: Redis to use as the bus instead of PostgreSQL (``redis://``, ``rediss://``, ``unix://``).
    redis_url: str | None = None
    #: ``postgres`` or ``redis``; None: Redis if only ``redis_url`` is set, else PostgreSQL.
    broker: str | None = None
    #: Prefix of every Redis pub/sub channel and key the relay uses (pub/sub is shared by
    #: every database of a Redis server: a prefix keeps deployments apart).
    redis_prefix: str = ""
    data_dir: Path | None = None
    #: Origins allowed by CORS; ``("*",)`` allows any (without credentials).
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    #: Seconds between heartbeat comments on a stream (each stream jittered by up to +25%).
    heartbeat: float = 15.0
    #: Reconnection delay (ms) sent to clients in ``retry:``.
    retry_ms: int = 2000
    #: A client whose unsent bytes pass this is dropped as slow.
    max_client_buffer: int = 256 * 1024
    max_channels_per_stream: int = 32
    #: Request line plus headers, bytes.
    max_header_bytes: int = 8192
    #: Seconds a client has to send its complete request head.
    header_timeout: float = 10.0
    #: Seconds between liveness probes of the listening connection.
    probe_interval: float = 5.0
    #: Seconds a probe may take before the connection is declared dead.
    probe_timeout: float = 5.0
    #: Reconnect backoff bounds (seconds), jittered.
    reconnect_min: float = 0.25
    reconnect_max: float = 10.0
    #: Seconds to wait for streams to close on shutdown.
    shutdown_timeout: float = 3.0
    #: Seconds a stream that is catching up from the log may take to accept what it was
    #: sent; past it, it is dropped as slow.
    drain_timeout: float = 10.0
    #: Durable channels: prune events older than this many seconds (None: keep).
    retention_age: float | None = None
    #: Durable channels: keep at most this many events per channel (None: keep all).
    retention_count: int | None = None
    #: Seconds between prune runs (jittered) when a retention is set.
    prune_interval: float = 60.0
    #: Most events replayed to one stream per channel; past it a ``missed`` event is sent.
    max_replay: int = 10_000
    #: HS256 secret that signs subscriber/publisher tokens (at least 32 bytes). With it, or
    #: with ``jwt_public_key``, every channel not in ``public_channels`` needs a token.
    jwt_secret: str | None = dataclasses.field(default=None, repr=False)
    #: PEM file of the RSA or EC P-256 public key that verifies RS256/ES256 tokens.
    jwt_public_key: Path | None = None
    #: Channel patterns (``lobby``, ``news-*``) anyone may read when tokens are configured.
    public_channels: tuple[str, ...] = ()
    #: The cookie a browser may carry its token in.
    token_cookie: str = "sserelay_token"
    #: Streams one process holds at most; past it new streams get 503.
    max_streams: int = 20_000
    #: Streams one client address (the TCP peer) may hold at most; past it new streams
    #: get 429. 0 (the default): no limit, since behind a reverse proxy every client
    #: has the proxy's address (limit there: nginx ``limit_conn``).
    max_streams_per_client: int = 0
    #: Streams one token subject (``sub``) may hold at most; past it new streams get 429.
    #: 0: no limit.
    max_streams_per_subject: int = 64
    #: Distinct channels the streams of one process may hold; past it a stream that would
    #: add one gets 503 (each channel costs a LISTEN and, on durable channels, log reads).
    #: 0: no limit.
    max_distinct_channels: int = 10_000
    #: Distinct channels the streams of one token subject (else of one client address)
    #: may hold; past it a stream that would add one gets 429. 0: no limit.
    max_channels_per_client: int = 1_000
    #: Peers whose ``X-Forwarded-For`` is believed (a reverse proxy): the client address
    #: (per-client limits, logs) is then the one the proxy saw. ``*``: every peer.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    #: Seconds a stream may stay open (each stream 0-10% less); None = no limit.
    max_stream_lifetime: float | None = None
    #: ``POST /publish``: largest request body, bytes.
    max_publish_bytes: int = 65536
    #: ``POST /publish``: events a second per token subject (or client address), on average.
    publish_rate: float = 50.0
    #: ``POST /publish``: events a token subject (or client address) may send at once.
    publish_burst: int = 100
    #: Run change data capture in this relay (``serve --capture``; docs/capture.md).
    capture: bool = False
    #: Seconds of capture lag past which ``/healthz`` answers 503 (None: never).
    capture_max_lag: float | None = None
    #: Serve the operator's page ``GET /admin`` and announce this relay's snapshot on the
    #: bus (docs/admin.md). Off by default.
    admin: bool = False
    #: HTTP Basic credentials for the operator's page (besides an admin token).
    admin_user: str | None = None
    admin_password: str | None = dataclasses.field(default=None, repr=False)
    #: Seconds between this relay's snapshots on the bus (and page updates).
    admin_interval: float = 2.0
    #: Seconds a revocation is kept (and refuses the tokens it names): at least the
    #: longest lifetime of a token (docs/revocation.md).
    revocation_ttl: float = 86400.0
    #: Channel patterns whose subscribers are kept as presence (``serve --presence``;
    #: docs/presence.md). Empty: presence is off.
    presence: tuple[str, ...] = ()
    #: Send ``sserelay.join`` / ``sserelay.leave`` events on the presence channels.
    presence_events: bool = False
    #: Seconds between two writes of a relay's presence changes (each jittered +-10%).
    presence_interval: float = 1.0
    #: Seconds a relay's presence rows live unless it renews them (a dead relay's go then).
    presence_lease: float = 15.0
    #: The coalescing window: seconds a subject whose last stream ended stays present,
    #: so that one who comes back within it sends no leave nor join.
    presence_linger: float = 2.0
    #: Join/leave events one relay sends per channel and write at most; past it, one
    #: ``sserelay.presence`` event with the counts.
    presence_max_events: int = 20

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # checked below

    def __post_init__(self) -> None:
        check_port(self.port)
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, not {self.workers}")
        for name in (
            "heartbeat",
            "header_timeout",
            "probe_interval",
            "probe_timeout",
            "reconnect_min",
            "reconnect_max",
            "shutdown_timeout",
            "drain_timeout",
            "revocation_ttl",
        ):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value}")
        for name in (
            "max_client_buffer",
            "max_channels_per_stream",
            "max_header_bytes",
            "max_streams",
            "max_publish_bytes",
            "publish_burst",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        if self.retry_ms < 0:
            raise ConfigError(f"retry_ms must not be negative, not {self.retry_ms}")
        _check_retention(self)
        for name in (
            "max_streams_per_client",
            "max_streams_per_subject",
            "max_distinct_channels",
            "max_channels_per_client",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (no limit) or more, not {getattr(self, name)}")
        if self.max_stream_lifetime is not None and not 0 < self.max_stream_lifetime < math.inf:
            raise ConfigError(
                f"max_stream_lifetime must be a positive number of seconds, "
                f"not {self.max_stream_lifetime}"
            )
        if not 0 < self.publish_rate < math.inf:
            raise ConfigError(f"publish_rate must be a positive number, not {self.publish_rate}")
        if self.max_replay < 1:
            raise ConfigError(f"max_replay must be at least 1, not {self.max_replay}")
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError("reconnect_max must not be smaller than reconnect_min")
        for check in (_check_broker, _check_capture, _check_presence):
            check(self)
        if self.log_level not in logging.getLevelNamesMapping():
            raise ConfigError(f"log_level={self.log_level!r} is not a log level; {LEVELS_HINT}")
        _check_auth(self)

    @property
    def listener_dsn(self) -> str | None:
        return self.listen_dsn or self.dsn

    @property
    def bus(self) -> str:
        """The broker in use: ``broker`` if set, else ``redis`` when only a Redis URL is
        configured, else ``postgres`` (so a ``REDIS_URL`` set for something else beside a
        ``DATABASE_URL`` changes nothing)."""
        if self.broker is not None:
            return self.broker
        return "redis" if self.redis_url and not self.dsn else "postgres"


BROKERS = ("postgres", "redis")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _check_broker(settings: Settings) -> None:
    if settings.broker is not None and settings.broker not in BROKERS:
        raise ConfigError(f"broker must be postgres or redis, not {settings.broker!r}")
    if settings.redis_url is not None and not settings.redis_url.startswith(REDIS_SCHEMES):
        raise ConfigError(
            f"redis_url must start with redis://, rediss:// or unix://, "
            f"not {settings.redis_url[:40]!r}"
        )
    if settings.bus == "redis" and not settings.redis_url:
        raise ConfigError("broker is redis but no Redis URL is set (--redis or REDIS_URL)")


def _check_retention(settings: Settings) -> None:
    """How long the log keeps events (and how often it is pruned)."""
    if settings.retention_age is not None and not settings.retention_age > 0:
        raise ConfigError(f"retention_age must be positive, not {settings.retention_age}")
    if settings.retention_count is not None and settings.retention_count < 1:
        raise ConfigError(f"retention_count must be at least 1, not {settings.retention_count}")
    if not settings.prune_interval > 0:
        raise ConfigError(f"prune_interval must be positive, not {settings.prune_interval}")


def _check_capture(settings: Settings) -> None:
    if settings.capture_max_lag is not None and not 0 < settings.capture_max_lag < math.inf:
        raise ConfigError(f"capture_max_lag must be positive, not {settings.capture_max_lag}")
    if settings.capture and settings.bus != "postgres":
        raise ConfigError("capture needs the PostgreSQL bus: its events go to the PostgreSQL log")


#: Shortest ``admin_password`` accepted.
MIN_ADMIN_PASSWORD = 12


def _check_admin(settings: Settings) -> None:
    """The operator's page: its interval, Basic credentials both or neither, and some way
    in when on."""
    if not 0 < settings.admin_interval < math.inf:
        raise ConfigError(
            f"admin_interval must be a positive number of seconds, not {settings.admin_interval}"
        )
    user, password = settings.admin_user, settings.admin_password
    if (user is None) != (password is None):
        raise ConfigError("set admin_user and admin_password together (HTTP Basic needs both)")
    if user is not None and (not user or ":" in user or any(ord(c) < 32 for c in user)):
        raise ConfigError("admin_user must be non-empty, without ':' or control characters")
    if password is not None and len(password) < MIN_ADMIN_PASSWORD:
        raise ConfigError(f"admin_password must be at least {MIN_ADMIN_PASSWORD} characters")
    has_key = settings.jwt_secret is not None or settings.jwt_public_key is not None
    if settings.admin and user is None and not has_key:
        raise ConfigError(
            "admin needs a way in: admin_user and admin_password (HTTP Basic), or a JWT key "
            "(jwt_secret or jwt_public_key) for admin tokens"
        )


def _check_presence(settings: Settings) -> None:
    for name in ("presence_interval", "presence_lease"):
        value = getattr(settings, name)
        if not 0 < value < math.inf:
            raise ConfigError(f"{name} must be a positive number of seconds, not {value}")
    if settings.presence_lease < 3 * settings.presence_interval:
        raise ConfigError(
            f"presence_lease ({settings.presence_lease:g}s) must be at least 3 times "
            f"presence_interval ({settings.presence_interval:g}s): a relay renews its rows "
            "at its writes, and one late write must not expire them"
        )
    if not 0 <= settings.presence_linger < math.inf:
        raise ConfigError(
            f"presence_linger must be 0 or more seconds, not {settings.presence_linger}"
        )
    if settings.presence_max_events < 1:
        raise ConfigError(
            f"presence_max_events must be at least 1, not {settings.presence_max_events}"
        )
    if settings.presence:
        from ..access import patterns  # only when needed

        for pattern in settings.presence:
            try:
                patterns.validate_pattern(pattern)
            except InvalidChannel as exc:
                raise ConfigError(f"presence: {exc}") from None


def check_port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, not {port}")
    return port


LEVELS_HINT = "use DEBUG, INFO, WARNING, ERROR or CRITICAL"

#: RFC 6265 cookie-name characters (an HTTP token).
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_auth(settings: Settings) -> None:
    """The token settings: one key at most, and a usable one; valid patterns and cookie;
    the operator's page's way in."""
    _check_admin(settings)
    if not _COOKIE_NAME.fullmatch(settings.token_cookie):
        raise ConfigError(f"token_cookie={settings.token_cookie!r} is not a valid cookie name")
    if settings.jwt_secret is not None and settings.jwt_public_key is not None:
        raise ConfigError(
            "set jwt_secret (HS256) or jwt_public_key (RS256/ES256), not both: the relay "
            "verifies tokens with one key and one algorithm"
        )
    configured = settings.jwt_secret is not None or settings.jwt_public_key is not None
    if not configured and not settings.public_channels:
        return
    from ..access import keys, patterns  # only when needed: they import pyjwt and cryptography

    if settings.jwt_secret is not None:
        keys.check_secret(settings.jwt_secret)
    if settings.jwt_public_key is not None:
        pem = keys.read_key_file(settings.jwt_public_key, "jwt_public_key")
        keys.load_public_key(pem, f"jwt_public_key {str(settings.jwt_public_key)!r}")
    for pattern in settings.public_channels:
        try:
            patterns.validate_pattern(pattern)
        except InvalidChannel as exc:
            raise ConfigError(f"public_channels: {exc}") from None
