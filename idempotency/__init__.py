"""Make unsafe HTTP requests safe to retry with an ``Idempotency-Key`` header."""

__version__ = "0.1.0.dev0"
