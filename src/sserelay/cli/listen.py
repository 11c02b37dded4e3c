"""``sserelay listen``: print the events of some channels as they arrive."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import signal
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from ..config import Settings
from ..core.protocols import Notified
from ..wire.channels import validate_channel
from ..wire.envelope import event_from_notification
from ..wire.ids import IdSpelling, IntegerIds, StreamEntryIds
from .common import add_bus_options, bus_settings, require_redis, resolve_dsn, run_async

DESCRIPTION = """\
Print every event published on the CHANNELs as it arrives (Ctrl-C stops). It listens
on the bus directly, as a relay does: no relay needs to run.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "listen",
        help="print events as they arrive",
        description=DESCRIPTION,
        epilog="environment: DATABASE_URL, SSERELAY_REDIS_URL or REDIS_URL, SSERELAY_BROKER, "
        "SSERELAY_REDIS_PREFIX, SSERELAY_DATA_DIR, LOG_LEVEL.",
    )
    p.add_argument(
        "channels", nargs="+", metavar="CHANNEL", help="a channel to listen on; several allowed"
    )
    add_bus_options(p)
    p.set_defaults(func=run)


def format_event(channel: str, data: str, event: str | None, id_: str | None) -> str:
    """One human-readable block per event."""
    stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    meta = "".join(f"  {k}={v}" for k, v in (("event", event), ("id", id_)) if v)
    return f"[{stamp}] {channel}{meta}\n{data}\n"


class _Printer:
    """Prints what the bus delivers (a :class:`~sserelay.core.protocols.BusSink`)."""

    def __init__(self, spelling: IdSpelling) -> None:
        self.spelling = spelling

    def on_message(self, channel: str, payload: str) -> None:
        ev = event_from_notification(channel, payload)
        print(format_event(channel, ev.data, ev.event, ev.id), flush=True)

    def on_durable(self, channel: str, notified: Notified | None) -> None:
        if notified is None:
            return
        data = notified.data
        if data is None:
            data = "(too large to notify: read it from the event log)"
        id_ = self.spelling.format_id(notified.seq)
        print(format_event(channel, data, notified.event, id_), flush=True)

    def on_listening(self, channels: Iterable[str]) -> None:
        for channel in channels:
            print(f"# listening on {channel}", file=sys.stderr, flush=True)


async def listen(bus: Settings, channels: Sequence[str]) -> int:
    listener: Any
    if bus.bus == "redis":
        require_redis("listening on Redis")
        from ..bus.redis.cluster.listener import ClusterListener  # one Redis or a cluster

        assert bus.redis_url is not None
        listener = ClusterListener(
            bus.redis_url,
            _Printer(StreamEntryIds()),
            prefix=bus.redis_prefix,
            client_name="sserelay-cli",
        )
    else:
        from ..bus.postgres.listener import PostgresListener

        assert bus.dsn is not None
        printer = _Printer(IntegerIds())
        listener = PostgresListener(bus.dsn, printer, application_name="sserelay-cli")
    for channel in channels:
        listener.listen(channel)
    task = asyncio.create_task(listener.run())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


def run(args: argparse.Namespace) -> int:
    channels = [validate_channel(c) for c in args.channels]
    bus = bus_settings(args)
    if bus.bus == "postgres":
        bus = bus.replace(dsn=resolve_dsn(bus.dsn, args.data_dir, announce=False))
    return run_async(lambda: listen(bus, channels))
