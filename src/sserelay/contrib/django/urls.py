"""``path("sse/", include("sserelay.contrib.django.urls"))``: the in-process stream view.

- ``events/<channel>``: one channel;
- ``events/?channel=a&channel=b``: several channels on one stream.
"""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "sserelay"

urlpatterns = [
    path("events/", views.stream, name="events"),
    path("events/<path:channel>", views.stream, name="events-channel"),
]
