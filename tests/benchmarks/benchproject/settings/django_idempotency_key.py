"""django-idempotency-key: its middleware, responses in Django's database cache.

The database cache is what all gunicorn workers share (the default store is a
dict per process). ``CONFLICT_STATUS_CODE = None`` replays the stored status
instead of 409.
"""

from __future__ import annotations

from benchproject.settings.base import *  # noqa: F403
from benchproject.settings.base import middleware

BENCH_INTEGRATION = "django-idempotency-key"
MIDDLEWARE = middleware(["idempotency_key.middleware.IdempotencyKeyMiddleware"])
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "idempotency": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "idempotency_key_cache",
        "TIMEOUT": 24 * 3600,
        "OPTIONS": {"MAX_ENTRIES": 10_000_000},
    },
}
IDEMPOTENCY_KEY = {
    "CONFLICT_STATUS_CODE": None,
    "STORAGE": {
        "CLASS": "idempotency_key.storage.CacheKeyStorage",
        "CACHE_NAME": "idempotency",
    },
}
