"""Serve a relay through either HTTP front (native server, ASGI app under uvicorn), for
the tests that hold for both; and any ASGI app under uvicorn (:func:`uvicorn_serving`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from sserelay.asgi import RelayApp, create_app
from sserelay.config import Settings
from sserelay.relay import Relay
from sserelay.testing import RawResponse, SseClient, raw_request, running_relay, wait_until

FRONTS = ["native", "asgi"]


@dataclass
class Front:
    """A relay served by one of the two fronts."""

    relay: Relay
    port: int

    async def open(self, path: str, headers: dict[str, str] | None = None) -> SseClient:
        return await SseClient.open("127.0.0.1", self.port, path, headers)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> RawResponse:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        return await raw_request("127.0.0.1", self.port, request)


@contextlib.asynccontextmanager
async def serving(kind: str, dsn: str, **settings: Any) -> AsyncIterator[Front]:
    settings.setdefault("heartbeat", 30.0)
    if kind == "native":
        async with running_relay(dsn, **settings) as relay:
            yield Front(relay, relay.port)
        return
    app = create_app(Settings(**settings), dsn=dsn)
    async with uvicorn_serving(app, app) as served:
        await wait_until(lambda: app.relay.listener.connected_event.is_set(), timeout=30)
        yield Front(app.relay, served.port)


@dataclass
class Served:
    """An ASGI app under uvicorn (``relay_app``: the relay app in it, maybe mounted)."""

    app: RelayApp
    server: uvicorn.Server
    port: int

    async def open(self, path: str, headers: dict[str, str] | None = None) -> SseClient:
        return await SseClient.open("127.0.0.1", self.port, path, headers)


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any, relay_app: RelayApp, **config: Any) -> AsyncIterator[Served]:
    """Run ``app`` under uvicorn in this event loop, on a free port."""
    config.setdefault("lifespan", "on")
    # A stream never ends on its own: without a bound, uvicorn's exit would wait for clients.
    config.setdefault("timeout_graceful_shutdown", 5)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", log_config=None, **config
        )
    )
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        await wait_until(lambda: server.started or task.done(), timeout=30, message="uvicorn start")
        if task.done():
            task.result()
            raise AssertionError("uvicorn exited during startup")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Served(relay_app, server, port)
    finally:
        server.should_exit = True
        async with asyncio.timeout(30):
            await task
