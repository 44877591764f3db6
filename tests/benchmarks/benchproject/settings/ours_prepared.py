"""django-idempotency with ``PREPARED_STATEMENTS = True``: on PostgreSQL a replay is
one prepared statement."""

from __future__ import annotations

from typing import Any

from benchproject.settings.ours import *  # noqa: F403

IDEMPOTENCY: dict[str, Any] = {"PREPARED_STATEMENTS": True}
