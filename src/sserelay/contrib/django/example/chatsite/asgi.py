"""ASGI: ``uvicorn chatsite.asgi:application --timeout-graceful-shutdown 3``.

sserelay's wrapper of Django's handler starts the listener with the server and ends
the streams gracefully at shutdown (see docs/django.md).
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from sserelay.contrib.django.asgi import get_asgi_application  # after the env

application = get_asgi_application()
