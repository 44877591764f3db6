"""Settings of the testproject as the stress suite serves it (gunicorn, uvicorn).

The testproject's own settings, plus:

- ``STRESS_IDEMPOTENCY``: the ``IDEMPOTENCY`` setting, as JSON;
- ``STRESS_SCHEMA_HOOKS``: drf-spectacular postprocessing hooks to add, as a JSON list
  of dotted paths;
- the stress views of :mod:`tests.stress.server_urls`;
- warnings and errors of the app logged to the server's stderr.
"""

from __future__ import annotations

import json
import os
from typing import Any

from testproject.settings import *  # noqa: F403

IDEMPOTENCY: dict[str, Any] = json.loads(os.environ.get("STRESS_IDEMPOTENCY") or "{}")

ROOT_URLCONF = "tests.stress.server_urls"

_schema_hooks: list[str] = json.loads(os.environ.get("STRESS_SCHEMA_HOOKS") or "[]")
if _schema_hooks:
    SPECTACULAR_SETTINGS = {
        **SPECTACULAR_SETTINGS,  # noqa: F405
        "POSTPROCESSING_HOOKS": [
            "drf_spectacular.hooks.postprocess_schema_enums",  # drf-spectacular's default
            *_schema_hooks,
        ],
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "idempotency": {"handlers": ["console"], "level": "WARNING"},
        "django.request": {"handlers": ["console"], "level": "ERROR"},
    },
}
