"""Make unsafe HTTP requests safe to retry with an ``Idempotency-Key`` header."""

from idempotency.context import CurrentKey, NoIdempotencyKey, current_key, derive

__all__ = ["CurrentKey", "NoIdempotencyKey", "current_key", "derive"]

__version__ = "0.1.0.dev0"
