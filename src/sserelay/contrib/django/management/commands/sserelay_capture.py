"""``manage.py sserelay_capture``: install ``SSERELAY["CAPTURE"]`` in the database, show
the capture's status, or run a capturer (``--run``) with Django's database settings."""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from .....bus.postgres.capture import Capturer, commands
from .....bus.postgres.capture.serve import run_alone
from .....bus.postgres.capture.status import describe
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
        try:
            dsn = listener_dsn(options["database"])
            if options["status"]:
                status = commands.status(dsn, application_name="sserelay-django")
                self.stdout.write("\n".join(describe(status)))
                return
            installed, removed = apply(dsn, remove_others=options["remove_others"])
        except SseRelayError as exc:
            raise CommandError(str(exc)) from None
        for rule in installed:
            events = ",".join(sorted(rule.events))
            self.stdout.write(f"capturing {rule.name} ({events}) on {rule.channel.text!r}")
        for name in removed:
            self.stdout.write(f"no longer capturing {name}")
        if not installed:
            self.stdout.write("SSERELAY['CAPTURE'] names no model: nothing captured")
        if options["run"]:
            self._run(dsn)

    def _run(self, dsn: str) -> None:
        def started() -> None:
            self.stdout.write("capturing (Ctrl-C to stop)")

        if asyncio.run(run_alone(Capturer(dsn), started=started)):
            raise CommandError("the capturer ended by itself (see the log)")
