"""Settings: the :class:`Settings` dataclass (``settings.py``) and how the environment
and the command line fill it (``env.py``)."""

from .env import (
    load_settings,
    parse_duration,
    parse_log_level,
    parse_origins,
    parse_patterns,
    settings_from_env,
)
from .settings import BROKERS, REDIS_SCHEMES, Settings, check_port

__all__ = [
    "BROKERS",
    "REDIS_SCHEMES",
    "Settings",
    "check_port",
    "load_settings",
    "parse_duration",
    "parse_log_level",
    "parse_origins",
    "parse_patterns",
    "settings_from_env",
]
