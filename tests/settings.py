"""Settings of the test suite (``DJANGO_SETTINGS_MODULE`` in pyproject.toml).

The database comes from ``DATABASE_URL`` (SQLite when unset, next to this file); on
MariaDB or MySQL, ``DATABASE_ISOLATION_LEVEL`` sets the ``isolation_level`` option.
The test views write the models of ``tests.testapp``. The demo app (``shop``) is
installed too, for the tests of the demo and of the documentation's examples, which
serve ``testproject.urls``; tests started as servers run the demo with its own
settings.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import environ

BASE_DIR = Path(__file__).resolve().parent

env = environ.Env()

DEBUG = False
SECRET_KEY = "django-insecure-test-suite-only"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

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
    "tests.testapp",
    "shop",
]

# drf-spectacular is optional: the schema tests run where it is installed.
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

ROOT_URLCONF = "tests.urls"

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
    # Tests with threads write concurrently: wait for the lock instead of failing at
    # once, take the write lock when a transaction begins (no deadlock on lock
    # upgrade), and let readers proceed while one writer writes.
    _sqlite_options = DATABASES["default"].setdefault("OPTIONS", {})
    _sqlite_options.setdefault("timeout", 20)
    _sqlite_options.setdefault("transaction_mode", "IMMEDIATE")
    _sqlite_options.setdefault("init_command", "PRAGMA journal_mode=WAL;")
    # A file, not Django's default in-memory test database, so that those threads
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

# The default hasher takes about a second per user; the admin tests log several in.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

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
        "idempotency": {"handlers": ["console"], "level": "INFO"},
    },
}
