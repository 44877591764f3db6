"""Sphinx configuration for the django-idempotency documentation."""

project = "django-idempotency"
author = "django-idempotency contributors"
copyright = "2026, django-idempotency contributors"
extensions: list[str] = []
html_theme = "furo"
exclude_patterns = ["_build"]
