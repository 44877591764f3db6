"""No idempotency at all."""

from __future__ import annotations

from benchproject.settings.base import *  # noqa: F403
