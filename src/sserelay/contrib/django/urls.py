"""``path("sse/", include("sserelay.contrib.django.urls"))``: the in-process stream view.

- ``events/<channel>``: one channel;
- ``events/?channel=a&channel=b``: several channels on one stream;
- ``sserelay.js``, ``sserelay.classic.js``: the browser client; ``token?channel=a``: a fresh
  token for it (see :mod:`~sserelay.contrib.django.client`);
- ``presence/<channel>``: who is subscribed to a presence channel, when
  ``SSERELAY["PRESENCE"]`` names it (docs/presence.md);
- ``admin``, ``admin/stream``: the operator's page and its updates, when
  ``SSERELAY["ADMIN"]`` is on (docs/admin.md).
"""

from __future__ import annotations

from django.urls import path

from . import client, views

app_name = "sserelay"

urlpatterns = [
    path("events/", views.stream, name="events"),
    path("events/<path:channel>", views.stream, name="events-channel"),
    path("sserelay.js", client.script, {"name": "sserelay.js"}, name="script"),
    path("sserelay.classic.js", client.script, {"name": "sserelay.classic.js"}, name="classic"),
    path("token", client.token, name="token"),
    path("presence/<path:channel>", views.presence, name="presence"),
    path("admin", views.operator, name="admin"),
    path("admin/stream", views.operator, {"stream": True}, name="admin-stream"),
]
