"""django-idempotency with ``ATOMIC = False``: the view's writes commit on their own."""

from __future__ import annotations

from typing import Any

from benchproject.settings.ours import *  # noqa: F403

IDEMPOTENCY: dict[str, Any] = {"ATOMIC": False}
