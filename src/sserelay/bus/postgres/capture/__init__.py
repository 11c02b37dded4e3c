"""Change data capture: every committed row change of chosen tables, published on
durable channels, from PostgreSQL's logical replication (see docs/capture.md).

PostgreSQL-only, so it lives with the PostgreSQL bus and talks psycopg; the layers
above reach it through :mod:`.commands` (the CLI's ``sserelay capture``, Django's
command and check), :mod:`.serve` (a relay's ``--capture``) and :class:`Capturer`'s
status, never through the driver.

- :mod:`.rules`, :mod:`.tables`, :mod:`.template`, :mod:`.slot`: what is captured, and
  installing it;
- :mod:`.stream`, :mod:`.pgoutput`, :mod:`.lsn`: the replication session and its messages;
- :mod:`.changes`, :mod:`.consumer`, :mod:`.writer`: from a row change to a logged event;
- :mod:`.leader`, :mod:`.capturer`, :mod:`.options`, :mod:`.serve`: who consumes, and the
  long-lived task;
- :mod:`.status`: watching it (its metrics are read by ``sserelay.metrics``);
- :mod:`.commands`: what an operator does, on a DSN; :mod:`.errors`: the driver's errors
  translated.
"""

from __future__ import annotations

from .capturer import Capturer
from .options import CaptureOptions

__all__ = ["CaptureOptions", "Capturer"]
