"""drf-idempotency: its middleware, database backend."""

from __future__ import annotations

from typing import Any

from benchproject.settings.base import *  # noqa: F403
from benchproject.settings.base import INSTALLED_APPS, middleware

BENCH_INTEGRATION = "drf-idempotency"
INSTALLED_APPS = [*INSTALLED_APPS, "drf_idempotency"]
MIDDLEWARE = middleware(["drf_idempotency.middleware.IdempotencyMiddleware"])
IDEMPOTENCY: dict[str, Any] = {"BACKEND": "drf_idempotency.backends.database.DatabaseBackend"}
