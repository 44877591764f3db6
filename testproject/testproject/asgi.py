"""ASGI entry point: ``uvicorn testproject.asgi:application`` from the outer directory."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

application = get_asgi_application()
