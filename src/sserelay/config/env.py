"""Settings from the environment and the command line.

Environment variables (the names ``sse-relay-server`` used keep their meaning):
``DATABASE_URL``, ``ALLOWED_ORIGINS``, ``LOG_LEVEL``, and ``SSERELAY_*`` for the rest.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import ConfigError
from .settings import LEVELS_HINT, Settings


def parse_patterns(value: str) -> tuple[str, ...]:
    """``SSERELAY_PUBLIC_CHANNELS``: comma-separated channel patterns (``lobby, news-*``)."""
    return tuple(p.strip() for p in value.split(",") if p.strip())


def parse_log_level(value: str, source: str = "LOG_LEVEL") -> str:
    """A level name in any case, upper-cased; a ConfigError naming ``source`` if unknown."""
    level = value.strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise ConfigError(f"{source}={value!r} is not a log level; {LEVELS_HINT}")
    return level


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_DURATION_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str, source: str = "duration") -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``, ``1d12h`` -> seconds (positive)."""
    text = value.strip().lower()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text or any(u == "" for _, u in parts[:-1]):
        raise ConfigError(f"{source}={value!r} is not a duration like 90s, 15m, 12h, 7d or 1d12h")
    seconds = sum(float(n) * _DURATION_SECONDS[u] for n, u in parts)
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{source}={value!r} must be a positive duration")
    return seconds


def parse_origins(value: str) -> tuple[str, ...]:
    """``ALLOWED_ORIGINS``: a comma- or space-separated list of origins, or ``*``."""
    origins = tuple(o.strip().rstrip("/") for o in value.replace(",", " ").split() if o.strip())
    for origin in origins:
        if origin != "*" and "://" not in origin:
            raise ConfigError(
                f"ALLOWED_ORIGINS entry {origin!r} is not an origin like https://example.com"
            )
    return origins


def _text(var: str, raw: str) -> str:
    return raw


def _lower(var: str, raw: str) -> str:
    return raw.strip().lower()


def _bool(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ConfigError(f"{var}={raw!r} is not a boolean (1/0, true/false, yes/no, on/off)")
    return value in ("1", "true", "yes", "on")


def _path(var: str, raw: str) -> Path:
    return Path(raw)


def _number(var: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from None


_int = functools.partial(_number, kind=int)
_float = functools.partial(_number, kind=float)


#: Environment variable -> (setting, parser of (variable, text)). An empty value is unset.
_ENV: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "DATABASE_URL": ("dsn", _text),
    "SSERELAY_LISTEN_DSN": ("listen_dsn", _text),
    "SSERELAY_BROKER": ("broker", _lower),
    "SSERELAY_REDIS_PREFIX": ("redis_prefix", _text),
    "SSERELAY_HOST": ("host", _text),
    "SSERELAY_DATA_DIR": ("data_dir", _path),
    "ALLOWED_ORIGINS": ("allowed_origins", lambda var, raw: parse_origins(raw)),
    "LOG_LEVEL": ("log_level", lambda var, raw: parse_log_level(raw)),
    "SSERELAY_JWT_SECRET": ("jwt_secret", _text),
    "SSERELAY_JWT_PUBLIC_KEY": ("jwt_public_key", _path),
    "SSERELAY_PUBLIC_CHANNELS": ("public_channels", lambda var, raw: parse_patterns(raw)),
    "SSERELAY_TOKEN_COOKIE": ("token_cookie", _text),
    "SSERELAY_RETENTION_AGE": ("retention_age", lambda var, raw: parse_duration(raw, var)),
    "SSERELAY_MAX_STREAM_LIFETIME": (
        "max_stream_lifetime",
        lambda var, raw: parse_duration(raw, var),
    ),
    "SSERELAY_REVOCATION_TTL": ("revocation_ttl", lambda var, raw: parse_duration(raw, var)),
    "SSERELAY_CAPTURE": ("capture", _bool),
    "SSERELAY_CAPTURE_MAX_LAG": ("capture_max_lag", lambda var, raw: parse_duration(raw, var)),
    "SSERELAY_ADMIN": ("admin", _bool),
    "SSERELAY_ADMIN_USER": ("admin_user", _text),
    "SSERELAY_ADMIN_PASSWORD": ("admin_password", _text),
    "SSERELAY_ADMIN_INTERVAL": ("admin_interval", _float),
    "SSERELAY_PRESENCE": ("presence", lambda var, raw: parse_patterns(raw)),
    "SSERELAY_PRESENCE_EVENTS": ("presence_events", _bool),
    "SSERELAY_PRESENCE_INTERVAL": ("presence_interval", _float),
    "SSERELAY_PRESENCE_LEASE": ("presence_lease", lambda var, raw: parse_duration(raw, var)),
    "SSERELAY_PRESENCE_LINGER": ("presence_linger", _float),
    "SSERELAY_PRESENCE_MAX_EVENTS": ("presence_max_events", _int),
    "SSERELAY_HEARTBEAT": ("heartbeat", _float),
    "SSERELAY_HEADER_TIMEOUT": ("header_timeout", _float),
    "SSERELAY_PROBE_INTERVAL": ("probe_interval", _float),
    "SSERELAY_SHUTDOWN_TIMEOUT": ("shutdown_timeout", _float),
    "SSERELAY_DRAIN_TIMEOUT": ("drain_timeout", _float),
    "SSERELAY_PUBLISH_RATE": ("publish_rate", _float),
    "SSERELAY_PORT": ("port", _int),
    "SSERELAY_WORKERS": ("workers", _int),
    "SSERELAY_RETRY_MS": ("retry_ms", _int),
    "SSERELAY_MAX_CLIENT_BUFFER": ("max_client_buffer", _int),
    "SSERELAY_MAX_CHANNELS": ("max_channels_per_stream", _int),
    "SSERELAY_MAX_HEADER_BYTES": ("max_header_bytes", _int),
    "SSERELAY_RETENTION_COUNT": ("retention_count", _int),
    "SSERELAY_MAX_REPLAY": ("max_replay", _int),
    "SSERELAY_MAX_PUBLISH_BYTES": ("max_publish_bytes", _int),
    "SSERELAY_PUBLISH_BURST": ("publish_burst", _int),
    "SSERELAY_MAX_STREAMS": ("max_streams", _int),
    "SSERELAY_MAX_STREAMS_PER_CLIENT": ("max_streams_per_client", _int),
    "SSERELAY_MAX_STREAMS_PER_SUBJECT": ("max_streams_per_subject", _int),
    "SSERELAY_MAX_DISTINCT_CHANNELS": ("max_distinct_channels", _int),
    "SSERELAY_MAX_CHANNELS_PER_CLIENT": ("max_channels_per_client", _int),
    "SSERELAY_FORWARDED_ALLOW_IPS": (
        "forwarded_allow_ips",
        lambda var, raw: tuple(p.strip() for p in raw.replace(",", " ").split() if p.strip()),
    ),
}


def settings_from_env(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """The settings the environment sets, as keyword arguments for :class:`Settings`."""
    env = os.environ if env is None else env
    out: dict[str, object] = {}
    redis_url = env.get("SSERELAY_REDIS_URL") or env.get("REDIS_URL")
    if redis_url:
        out["redis_url"] = redis_url
    for var, (name, parse) in _ENV.items():
        if env.get(var):
            out[name] = parse(var, env[var])
    return out


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with ``overrides`` (e.g. CLI flags) taking precedence."""
    values = settings_from_env()
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)  # type: ignore[arg-type]  # validated in __post_init__
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
