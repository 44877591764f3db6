"""django-idempotency: the middleware for the plain view, the mixin for the DRF view."""

from __future__ import annotations

from typing import Any

from benchproject.settings.base import *  # noqa: F403
from benchproject.settings.base import INSTALLED_APPS, middleware

BENCH_INTEGRATION = "ours"
INSTALLED_APPS = [*INSTALLED_APPS, "idempotency"]
MIDDLEWARE = middleware(["idempotency.middleware.IdempotencyMiddleware"])
IDEMPOTENCY: dict[str, Any] = {}
