"""``sserelay serve --capture``: the capturer a relay runs beside its listener."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from ..errors import ConfigError
from .capturer import Capturer
from .metrics import CaptureCollector
from .options import CaptureOptions


def capturer_for(
    dsn: str | None, *, bus: str, max_lag: float | None, registry: CollectorRegistry
) -> Capturer:
    """A capturer for the relay's database, its metrics registered on ``registry``."""
    if bus != "postgres" or dsn is None:
        raise ConfigError("capture needs the PostgreSQL bus: its events go to the PostgreSQL log")
    capturer = Capturer(dsn, CaptureOptions(max_lag=max_lag))
    registry.register(CaptureCollector(capturer))
    return capturer
