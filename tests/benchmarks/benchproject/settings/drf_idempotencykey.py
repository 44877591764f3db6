"""drf-idempotencykey: its DRF mixin (authenticated requests only)."""

from __future__ import annotations

from benchproject.settings.base import *  # noqa: F403
from benchproject.settings.base import INSTALLED_APPS

BENCH_INTEGRATION = "drf-idempotencykey"
INSTALLED_APPS = [*INSTALLED_APPS, "drf_idempotencykey"]
