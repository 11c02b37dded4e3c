"""The capturer's settings, in one frozen dataclass (the defaults are the documented ones)."""

from __future__ import annotations

from dataclasses import dataclass

from ....errors import ConfigError


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    #: Past this many seconds of lag the capturer is unhealthy (``/healthz`` 503); None: never.
    max_lag: float | None = None
    #: Seconds between heartbeats: the leader's liveness probe and the lag measure.
    heartbeat_interval: float = 5.0
    #: Seconds between a standby's attempts to take the lock (and its status reads).
    standby_interval: float = 2.0
    #: Seconds the slot may stay busy with another session before the leader ends that one.
    takeover_timeout: float = 10.0
    reconnect_min: float = 0.25
    reconnect_max: float = 10.0
    connect_timeout: float = 10.0
    #: Seconds between status updates to the server when nothing else is said.
    status_interval: float = 10.0
    #: Events sent to the database per statement.
    batch_events: int = 500
    #: A log transaction takes more source transactions while fewer events than this...
    group_events: int = 5000
    #: ... and while it is younger than this many seconds (and more is ready at once).
    group_delay: float = 0.01
    application_name: str = "sserelay-capture"

    def __post_init__(self) -> None:
        if self.max_lag is not None and not self.max_lag > 0:
            raise ConfigError(f"capture max_lag must be positive, not {self.max_lag}")
        for name in (
            "heartbeat_interval",
            "standby_interval",
            "takeover_timeout",
            "reconnect_min",
            "reconnect_max",
            "connect_timeout",
            "status_interval",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"capture {name} must be positive, not {getattr(self, name)}")
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError("capture reconnect_max must not be smaller than reconnect_min")
        for name in ("batch_events", "group_events"):
            if getattr(self, name) < 1:
                raise ConfigError(f"capture {name} must be at least 1")
        if self.group_delay < 0:
            raise ConfigError("capture group_delay must not be negative")
