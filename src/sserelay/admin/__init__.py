"""The operator's page (``GET /admin``, off by default; docs/admin.md): what every relay of
the bus is doing, live.

- :mod:`~sserelay.admin.snapshot`: one relay's stats as compact JSON for the bus;
- :mod:`~sserelay.admin.peers`: the latest snapshot of every relay, merged into a view;
- :mod:`~sserelay.admin.page`: that view as HTML;
- :mod:`~sserelay.admin.operator`: the service that announces and updates, and the
  answers the fronts send (who may see it: :mod:`sserelay.access.operator`).
"""

from __future__ import annotations

from .operator import CONTROL, VIEW, Operator

__all__ = ["CONTROL", "VIEW", "Operator"]
