"""Change data capture: every committed row change of chosen tables, published on
durable channels, from PostgreSQL's logical replication (see docs/capture.md).

- :mod:`.rules`, :mod:`.template`, :mod:`.slot`: what is captured, and installing it;
- :mod:`.stream`, :mod:`.pgoutput`: the replication session and its messages;
- :mod:`.changes`, :mod:`.consumer`, :mod:`.writer`: from a row change to a logged event;
- :mod:`.leader`, :mod:`.capturer`: who consumes, and the long-lived task;
- :mod:`.status`, :mod:`.metrics`, :mod:`.cli`: watching it.
"""

from __future__ import annotations

from .capturer import Capturer
from .options import CaptureOptions

__all__ = ["CaptureOptions", "Capturer"]
