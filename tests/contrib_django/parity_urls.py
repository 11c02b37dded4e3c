"""The stream view at the root, so that its paths are the relay's (``/events/...``)."""

from django.urls import include, path

urlpatterns = [path("", include("sserelay.contrib.django.urls"))]
