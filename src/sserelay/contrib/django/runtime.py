"""The process's relay for the in-process stream view: one hub, one listener.

Every stream a Django process serves (under ASGI) is a subscriber of one
:class:`~sserelay.relay.Relay` run without its HTTP server, so a process holds one
LISTEN connection however many browsers are connected. The listener connects with
its own connection built from ``DATABASES`` (never Django's connection, which
belongs to the ORM and to transactions), or with ``SSERELAY["LISTEN_DSN"]``.

The relay starts with the first stream (or on ASGI lifespan startup, with
:func:`sserelay.contrib.django.asgi.get_asgi_application`) and is owned by the
app's :class:`~sserelay.contrib.django.apps.SserelayConfig`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.db import connections

from ...bus.postgres.admin import libpq_dsn
from ...errors import ConfigError, SseRelayError
from ...relay import OpenStreams, Relay
from . import conf

log = logging.getLogger("sserelay.django")

#: Django ``DATABASES`` engines the listener can connect to.
POSTGRES_ENGINES = frozenset(
    {"django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis"}
)


def listener_dsn(alias: str | None = None) -> str:
    """A libpq DSN for the listener: ``SSERELAY["LISTEN_DSN"]``, else the connection
    parameters Django would use for ``DATABASES[alias]`` (only the libpq ones: Django's
    cursor factory and adapters are the ORM's business)."""
    configured = conf.get("LISTEN_DSN")
    if configured:
        return str(configured)
    alias = alias or conf.database_alias()
    if alias not in connections.settings:
        raise ConfigError(f"SSERELAY['DATABASE'] = {alias!r} is not in DATABASES")
    wrapper = connections[alias]
    if wrapper.settings_dict.get("ENGINE") not in POSTGRES_ENGINES:
        raise ConfigError(f"DATABASES[{alias!r}] is not PostgreSQL; sserelay needs PostgreSQL")
    return libpq_dsn(wrapper.get_connection_params())


class RelayRuntime:
    """Starts the process's relay once, shares it, and shuts it down."""

    def __init__(self) -> None:
        self._relay: Relay | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Streams this process's views are writing (shutdown waits for their farewell).
        self.streams = OpenStreams()
        #: The "Django 4.2 cannot tell us a client left" warning was logged.
        self.warned_no_disconnect = False

    @property
    def relay(self) -> Relay | None:
        """The running relay, or None before the first start and after shutdown."""
        return self._relay

    def _guard(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            if self._relay is not None and self._loop is not loop:
                # The relay's tasks belong to a loop that is gone (a test runner's loop):
                # start afresh rather than hand out a dead hub.
                log.warning("event loop changed: starting a new relay")
                self._relay = None
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def get(self) -> Relay:
        """The running relay, started on first use (concurrent callers share one start)."""
        relay = self._relay
        if relay is not None and self._loop is asyncio.get_running_loop():
            return relay
        async with self._guard():
            if self._relay is None:
                settings = conf.relay_settings()
                dsn = listener_dsn()
                relay = Relay(settings, dsn=dsn)
                await relay.start(serve=False)
                self._relay = relay
                log.info("sserelay: in-process relay started (one listener for this process)")
            return self._relay

    async def shutdown(self) -> None:
        """End every stream with a jittered ``retry:``, wait for them to send it (up to
        ``SHUTDOWN_TIMEOUT``), then stop the listener. Idempotent."""
        relay = self._relay
        if relay is None:
            return
        async with self._guard():
            if self._relay is not relay:
                return
            self._relay = None
            await relay.shutdown_after_streams(self.streams)


def runtime() -> RelayRuntime:
    """The process's runtime, held by the app config (so: one per process)."""
    from django.apps import apps

    config: Any = apps.get_app_config("sserelay")
    found = getattr(config, "runtime", None)
    if not isinstance(found, RelayRuntime):
        raise SseRelayError("sserelay.contrib.django is not in INSTALLED_APPS")
    return found
