"""Settings of the chat example. Everything that differs between runs comes from the
environment, so one project runs both ways:

- WSGI + relay: ``CHAT_STREAM_URL=http://127.0.0.1:8001`` (where ``sserelay serve``
  listens), and the relay runs with the same ``SSERELAY_JWT_SECRET``;
- ASGI: no ``CHAT_STREAM_URL``; uvicorn serves the streams from Django itself.

``CHAT_CAPTURE=1`` switches publishing to change data capture: the views publish
nothing, and every row inserted into ``chat_message`` (by the site, ``psql`` or anything
else) reaches the room's channel from PostgreSQL's logical replication stream. It needs
``wal_level = logical``, ``manage.py sserelay_capture`` after ``migrate``, and a capturer:
``sserelay serve --capture`` (WSGI) or ``manage.py sserelay_capture --run`` (ASGI). See
the example's README.

``DJANGO_SECRET_KEY`` signs the username cookie. Without it the example keeps a key of its
own in a file (``CHAT_SECRET_KEY_FILE``, by default ``chat-secret-key`` in sserelay's data
directory, next to the embedded database), created on first run: a key drawn anew at each
start would void every open page's cookie at each restart. Production sets the variable.
"""

import os
import secrets
from pathlib import Path

from sserelay.contrib.django.conf import database_from_url

BASE_DIR = Path(__file__).resolve().parent.parent


def development_secret_key() -> str:
    """The key kept in ``CHAT_SECRET_KEY_FILE``; made (readable by this user only) if missing."""
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    path = Path(os.environ.get("CHAT_SECRET_KEY_FILE") or data / "sserelay" / "chat-secret-key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f"{path.name}.{os.getpid()}")
        draft.touch(mode=0o600)
        draft.write_text(secrets.token_urlsafe(40) + "\n")
        # link(): the key appears whole or not at all, and of two processes starting at
        # once the second keeps the first one's key.
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or development_secret_key()
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
    # Seconds; the page's client (sserelay.js) asks the room's token URL for a new one
    # before it expires.
    "TOKEN_TTL": int(os.environ.get("CHAT_TOKEN_TTL", "3600")),
    "RETRY_MS": int(os.environ.get("SSERELAY_RETRY_MS", "2000")),
    "HEARTBEAT": float(os.environ.get("SSERELAY_HEARTBEAT", "15")),
    "MAX_STREAMS_PER_CLIENT": int(os.environ.get("SSERELAY_MAX_STREAMS_PER_CLIENT", "256")),
}

# Change data capture instead of publish_changes (chat/apps.py): the room's channel, the
# fields of Message.as_event(), inserts only (the page shows new messages), named
# message.insert with the row under "new" (room.html reads both shapes).
CAPTURE = os.environ.get("CHAT_CAPTURE", "").lower() in {"1", "true", "yes", "on"}
if CAPTURE:
    SSERELAY["CAPTURE"] = {
        "chat.Message": {
            "channel": "chat-{room}",
            "fields": ["id", "room", "user", "text", "created"],
            "events": ["insert"],
            "event_prefix": "message",
        }
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"sserelay": {"handlers": ["console"], "level": "INFO"}},
}
