"""The site's URLs: the chat, and the in-process streams under ``sse/``."""

from django.urls import include, path

urlpatterns = [
    path("", include("chat.urls")),
    # The in-process streams (ASGI). Under WSGI the relay serves them instead.
    path("sse/", include("sserelay.contrib.django.urls")),
]
