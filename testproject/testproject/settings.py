"""Settings of the demo and test project.

Read from the environment with django-environ:

- ``DATABASE_URL``: default ``sqlite:///<this directory's parent>/db.sqlite3``;
  for PostgreSQL e.g. ``postgres://user:password@localhost:5432/idempotency``, for
  MariaDB or MySQL ``mysql://user:password@localhost:3306/idempotency``.
- ``DATABASE_ISOLATION_LEVEL``: MariaDB/MySQL only, the ``isolation_level`` option
  (e.g. ``repeatable read``); default Django's, ``read committed``.
- ``SECRET_KEY``: required unless ``DEBUG`` is on.
- ``DEBUG``: default True.
- ``ALLOWED_HOSTS``: comma-separated, default ``localhost,127.0.0.1,testserver``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG: bool = env.bool("DEBUG", default=True)

SECRET_KEY: str = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set the SECRET_KEY environment variable when DEBUG is off.")
    SECRET_KEY = "django-insecure-testproject-dev-only-never-use-in-production"

ALLOWED_HOSTS: list[str] = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "testserver"]
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "idempotency",
    "shop",
]

# drf-spectacular is optional: with it, the OpenAPI schema is served at /api/schema/.
_spectacular = importlib.util.find_spec("drf_spectacular") is not None
if _spectacular:
    INSTALLED_APPS.append("drf_spectacular")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "idempotency.middleware.IdempotencyMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES: dict[str, dict[str, Any]] = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent writers: wait for the lock instead of failing at once, take the write
    # lock when a transaction begins (no deadlock on lock upgrade), and let readers
    # proceed while one writer writes.
    _sqlite_options = DATABASES["default"].setdefault("OPTIONS", {})
    _sqlite_options.setdefault("timeout", 20)
    _sqlite_options.setdefault("transaction_mode", "IMMEDIATE")
    _sqlite_options.setdefault("init_command", "PRAGMA journal_mode=WAL;")
    # A file, not Django's default in-memory test database, so that tests with threads
    # share it; next to the configured file, never the file itself.
    _sqlite_name = str(DATABASES["default"].get("NAME") or "")
    if _sqlite_name and _sqlite_name != ":memory:" and not _sqlite_name.startswith("file:"):
        _sqlite_path = Path(_sqlite_name)
        DATABASES["default"].setdefault("TEST", {}).setdefault(
            "NAME", str(_sqlite_path.with_name(f"test_{_sqlite_path.name}"))
        )

if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    _isolation_level: str = env.str("DATABASE_ISOLATION_LEVEL", default="")
    if _isolation_level:
        DATABASES["default"].setdefault("OPTIONS", {})["isolation_level"] = _isolation_level

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

# django-idempotency: empty means "all defaults". Every option (TTL, REQUIRED, ATOMIC, ...)
# and its default is listed in the settings reference of the documentation.
IDEMPOTENCY: dict[str, Any] = {}

REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
    ],
}
if _spectacular:
    REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"
    SPECTACULAR_SETTINGS = {
        "TITLE": "django-idempotency test project",
        "VERSION": "1.0.0",
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "simple": {"format": "{levelname} {name}: {message}", "style": "{"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "simple"},
    },
    "loggers": {
        "idempotency": {
            "handlers": ["console"],
            "level": "INFO" if DEBUG else "WARNING",
        },
    },
}
