"""``uvicorn sserelay.asgi:app``: the relay as an ASGI app (see :mod:`sserelay.http.asgi`)."""

from __future__ import annotations

from .http.asgi import AsgiStream, RelayApp, app, create_app, route_path

__all__ = ["AsgiStream", "RelayApp", "app", "create_app", "route_path"]
