"""A TCP proxy to a broker that can be cut, for outages the relay cannot tell from real ones."""

from __future__ import annotations

import asyncio
import contextlib

HOST = "127.0.0.1"


async def open_upstream(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the broker at ``host``:``port``. A ``host`` that is a directory
    (``/var/run/postgresql``, as in a DSN; the embedded PostgreSQL's) means PostgreSQL's
    unix socket in it."""
    if host.startswith("/"):
        return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
    return await asyncio.open_connection(host, port)


class Proxy:
    """A TCP proxy that can be cut (existing connections reset, new ones closed at once) and
    restored (``up = True``): to the relay behind it, the broker is down, as during a restart.

    ``async with Proxy(host, port) as proxy:`` listens on ``HOST`` and ``proxy.port``; the
    broker is reached with :func:`open_upstream`.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = True
        #: Cleared by :meth:`freeze`: bytes stop moving, connections stay open (a hung link).
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        """Stop moving bytes both ways but keep every connection open: a frozen link."""
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def cut(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self.up:
                return
            up_reader, up_writer = await open_upstream(*self.target)
            self._writers.add(up_writer)
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                up_writer.transport.abort()
                self._writers.discard(up_writer)
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
