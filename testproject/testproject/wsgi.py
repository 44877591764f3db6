"""WSGI entry point: ``gunicorn testproject.wsgi`` from the outer ``testproject/`` directory."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

application = get_wsgi_application()
