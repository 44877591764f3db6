"""djangorestframework-idempotency-key: its middleware claims the key, its
decorator on the DRF ``create`` stores and replays (DRF requests only)."""

from __future__ import annotations

from benchproject.settings.base import *  # noqa: F403
from benchproject.settings.base import INSTALLED_APPS, middleware

BENCH_INTEGRATION = "djangorestframework-idempotency-key"
INSTALLED_APPS = [*INSTALLED_APPS, "rest_framework_idempotency_key"]
MIDDLEWARE = middleware(["rest_framework_idempotency_key.middleware.IdempotencyKeyMiddleware"])
IDEMPOTENCY_KEY_LOCK_TIMEOUT = 60
