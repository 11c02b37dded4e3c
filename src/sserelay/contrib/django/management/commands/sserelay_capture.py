"""``manage.py sserelay_capture``: install ``SSERELAY["CAPTURE"]`` in the database, show
the capture's status, or run a capturer (``--run``) with Django's database settings."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandError, CommandParser

from .....errors import SseRelayError
from ...capture import apply
from ...runtime import listener_dsn


class Command(BaseCommand):
    help = "Install SSERELAY['CAPTURE'] (change data capture), show its status, or run it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database", help="the DATABASES alias (default: SSERELAY['DATABASE'])"
        )
        parser.add_argument(
            "--remove-others",
            action="store_true",
            help="stop capturing tables that SSERELAY['CAPTURE'] does not name",
        )
        parser.add_argument(
            "--status", action="store_true", help="print the capture's status, change nothing"
        )
        parser.add_argument(
            "--run",
            action="store_true",
            help="after installing, run a capturer until interrupted (instead of "
            "`sserelay serve --capture`)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dsn = listener_dsn(options["database"])
        try:
            with psycopg.connect(dsn, autocommit=True, application_name="sserelay-django") as conn:
                if options["status"]:
                    self._status(conn)
                    return
                installed, removed = apply(conn, remove_others=options["remove_others"])
        except (SseRelayError, psycopg.Error) as exc:
            raise CommandError(str(exc)) from None
        for rule in installed:
            events = ",".join(sorted(rule.events))
            self.stdout.write(f"capturing {rule.name} ({events}) on {rule.channel.text!r}")
        for name in removed:
            self.stdout.write(f"no longer capturing {name}")
        if not installed:
            self.stdout.write("SSERELAY['CAPTURE'] names no model: nothing captured")
        if options["run"]:
            asyncio.run(self._run(dsn))

    def _status(self, conn: psycopg.Connection[Any]) -> None:
        from .....capture.cli import describe
        from .....capture.status import read_status

        status = read_status(conn)
        if status is None:
            raise CommandError("capture is not installed: run manage.py sserelay_capture")
        self.stdout.write("\n".join(describe(status)))

    async def _run(self, dsn: str) -> None:
        from .....capture import Capturer

        task = asyncio.create_task(Capturer(dsn).run())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        self.stdout.write("capturing (Ctrl-C to stop)")
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
