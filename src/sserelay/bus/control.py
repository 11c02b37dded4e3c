"""The bus's control channel: revocations, as every relay hears of them
(docs/revocation.md). What the PostgreSQL and Redis feeds share.

Each relay holds one :class:`RevocationFeed` (a supervised service): it subscribes to
the bus's control channel (``sserelay.revoked``, after the Redis prefix), then reads
every revocation in force, and hands both to the relay (``on_change``). It reads them
all again whenever its connection comes back (a revocation made while it was away is
not missed) and every ``reload_interval`` seconds (jittered), which also forgets those
older than ``revocation_ttl``. Nothing ends it but a cancellation: a lost connection
is retried with jittered backoff, anything unexpected is logged with its traceback and
counted (:attr:`RevocationFeed.failures`), and a database without the schema is
reported (``/healthz`` details) and asked again later.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from .. import jitter
from ..access.revocations import Revocation, check_revocation
from ..errors import ConfigError, SchemaMissing
from .listener import one_line

log = logging.getLogger("sserelay.revocations")

#: The control channel every relay subscribes to (PostgreSQL NOTIFY, Redis PUBLISH).
CONTROL_CHANNEL = "sserelay.revoked"
#: Default seconds a revocation is kept: at least the longest lifetime of a token.
DEFAULT_TTL = 24 * 3600.0

#: What a relay is told: revocations, and whether they are the whole set (a reload).
OnChange = Callable[[list[Revocation], bool], None]


def parse_control(payload: str) -> Revocation | None:
    """A control message (``{"kind": ..., "value": ..., "at": ...}``), None if malformed."""
    try:
        found = json.loads(payload)
        kind, value = check_revocation(found["kind"], found["value"])
        return Revocation(kind, value, float(found["at"]))
    except (ValueError, KeyError, TypeError, ConfigError):
        return None


class RevocationFeed(ABC):
    """One relay's subscription to the bus's revocations (see the module docstring)."""

    #: What a lost or refused connection raises: retried after a jittered backoff.
    errors: ClassVar[tuple[type[BaseException], ...]]

    def __init__(
        self,
        on_change: OnChange,
        *,
        ttl: float = DEFAULT_TTL,
        reload_interval: float = 60.0,
        reconnect_min: float = 0.25,
        reconnect_max: float = 10.0,
        timeout: float = 10.0,
    ) -> None:
        self.on_change = on_change
        self.ttl = ttl
        self.reload_interval = reload_interval
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.timeout = timeout
        #: Subscribed and loaded: revocations made from now on reach this relay.
        self.connected = False
        self.loads = 0
        self.messages = 0
        self.malformed = 0
        #: Unexpected errors (each logged with its traceback; the feed started again).
        self.failures = 0
        self.last_error: str | None = None

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "loads": self.loads,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        """Subscribe and load until cancelled; start again after any error."""
        failures = 0
        while True:
            loads = self.loads
            try:
                await self._session()
                continue  # a reload is due: subscribe and read again, at once
            except SchemaMissing as exc:
                if self.last_error != str(exc):  # said once, not every reload_interval
                    log.warning("revocations are not available: %s", exc)
                self.last_error = str(exc)
            except self.errors as exc:
                self.last_error = one_line(exc)
            except Exception as exc:  # not a lost connection: a bug or a surprise
                self.failures += 1
                self.last_error = one_line(exc)
                log.exception("the revocation feed failed unexpectedly; starting again")
            finally:
                self.connected = False
            failures = 0 if self.loads > loads else failures + 1
            missing = "schema is not installed" in (self.last_error or "")
            if failures == 1 and not missing:
                log.warning("revocation feed: %s; reconnecting", self.last_error)
            delay = min(self.reconnect_max, self.reconnect_min * 2 ** min(failures, 16))
            if missing:
                delay = self.reload_interval
            await asyncio.sleep(delay * jitter.uniform(0.5, 1.0))

    def _loaded(self, found: list[Revocation]) -> None:
        self.connected = True
        self.loads += 1
        self.last_error = None
        self.on_change(found, True)

    def _notified(self, payload: str) -> None:
        revocation = parse_control(payload)
        if revocation is None:
            self.malformed += 1
            log.warning("ignored a malformed revocation message (%d bytes)", len(payload))
            return
        self.messages += 1
        self.on_change([revocation], False)

    def _next_reload(self) -> float:
        return self.reload_interval * jitter.uniform(0.8, 1.2)

    @abstractmethod
    async def _session(self) -> None:
        """Connect, subscribe to the control channel, then load (:meth:`_loaded`) and
        hand over messages (:meth:`_notified`) until something fails, or return when
        the revocations are to be read again."""

    @abstractmethod
    async def revoke(self, kind: str, value: str) -> float:
        """Revoke now (``POST /revoke``); the revocation's time, seconds since the epoch."""
