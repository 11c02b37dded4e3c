"""WSGI (gunicorn, runserver): the streams come from `sserelay serve` (CHAT_STREAM_URL)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

application = get_wsgi_application()
