"""What every variant shares: the apps, the middleware stack, DRF, the database."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import environ

DEBUG = False
SECRET_KEY = "benchmark-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

_default_db = Path(tempfile.gettempdir()) / "django-idempotency-bench.sqlite3"
DATABASES: dict[str, dict[str, Any]] = {
    "default": environ.Env.db_url_config(
        os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{_default_db}"
    ),
}
# Persistent connections, as a production deployment would have them.
DATABASES["default"]["CONN_MAX_AGE"] = 600

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "rest_framework",
    "rest_framework.authtoken",
    "benchproject.catalog",
]

#: Which integration ``benchproject.urls`` wraps the views with.
BENCH_INTEGRATION = "baseline"

#: Middleware of the integration, placed right after AuthenticationMiddleware.
INTEGRATION_MIDDLEWARE: list[str] = []


def middleware(integration: list[str]) -> list[str]:
    return [
        "benchproject.middleware.CountQueries",
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        *integration,
    ]


MIDDLEWARE = middleware(INTEGRATION_MIDDLEWARE)

ROOT_URLCONF = "benchproject.urls"
WSGI_APPLICATION = "benchproject.wsgi.application"
TEMPLATES: list[dict[str, Any]] = []

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
