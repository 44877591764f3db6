"""Sphinx configuration for the django-idempotency documentation."""

project = "django-idempotency"
author = "django-idempotency contributors"
copyright = "2026, django-idempotency contributors"
# myst-parser only renders CHANGELOG.md (docs/changelog.rst includes it); every
# page of its own is reStructuredText.
extensions: list[str] = ["myst_parser"]
source_suffix = {".rst": "restructuredtext"}
html_theme = "furo"
html_title = "django-idempotency"
exclude_patterns = ["_build"]
