"""Settings of the chat example. Everything that differs between runs comes from the
environment, so one project runs both ways:

- WSGI + relay: ``CHAT_STREAM_URL=http://127.0.0.1:8001`` (where ``sserelay serve``
  listens), and the relay runs with the same ``SSERELAY_JWT_SECRET``;
- ASGI: no ``CHAT_STREAM_URL``; uvicorn serves the streams from Django itself.
"""

import os
import secrets
from pathlib import Path

from sserelay.contrib.django.conf import database_from_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(40)
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "sserelay.contrib.django",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
WSGI_APPLICATION = "chatsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csrf",
            ],
        },
    }
]

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/chat")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"

SSERELAY = {
    # None: streams come from this site (ASGI). A URL: from `sserelay serve` (WSGI).
    "STREAM_URL": os.environ.get("CHAT_STREAM_URL") or None,
    # Shared with the relay (SSERELAY_JWT_SECRET): rooms are private, each page gets a
    # token for its room.
    "JWT_SECRET": os.environ.get("SSERELAY_JWT_SECRET") or None,
    "TOKEN_TTL": 3600,
    "RETRY_MS": int(os.environ.get("SSERELAY_RETRY_MS", "2000")),
    "HEARTBEAT": float(os.environ.get("SSERELAY_HEARTBEAT", "15")),
    "MAX_STREAMS_PER_CLIENT": int(os.environ.get("SSERELAY_MAX_STREAMS_PER_CLIENT", "256")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"sserelay": {"handlers": ["console"], "level": "INFO"}},
}
