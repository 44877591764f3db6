"""The ``IDEMPOTENCY`` settings dict, validated once and re-read on ``setting_changed``.

Nothing here reads Django settings at import time, so ``override_settings`` works
in tests and settings may be changed before the first request.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.http import HttpRequest
from django.utils.module_loading import import_string

SETTING_NAME = "IDEMPOTENCY"

#: Error codes used in problem+json bodies.
CODES = (
    "idempotency_key_missing",
    "idempotency_key_invalid",
    "idempotency_key_mismatch",
    "idempotency_key_locked",
    "idempotency_store_unavailable",
    "idempotency_request_too_large",
)

DEFAULTS: dict[str, Any] = {
    "HEADER": "Idempotency-Key",
    "METHODS": ("POST", "PUT", "PATCH", "DELETE"),
    "MAX_KEY_LENGTH": 255,
    "REQUIRED": False,
    "TTL": 24 * 3600,
    "LOCK_TIMEOUT": 60,
    "MISMATCH_STATUS": 409,
    "CONCURRENT_WAIT": 0,
    "ATOMIC": True,
    "SCOPE_FUNCTION": None,
    "FINGERPRINT_HEADERS": ("Content-Type",),
    "DATABASE": "default",
    "NON_STORABLE_STATUSES": (408, 425, 429, *range(500, 600)),
    "RETRY_AFTER": 1,
    "PROBLEM_TYPES": {},
    "EXEMPT_PATHS": (),
}

#: The longest key the ``key`` column can hold.
KEY_COLUMN_LENGTH = 255

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _fail(name: str, expected: str, value: object) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"{SETTING_NAME}[{name!r}] must be {expected}, got {value!r}. "
        f"HINT: fix {SETTING_NAME}[{name!r}] in your settings, or remove it to use the "
        f"default {DEFAULTS[name]!r}."
    )


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value)
    return value


def _seconds(name: str, value: Any, *, allow_zero: bool) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise _fail(name, "a number of seconds or a datetime.timedelta", value)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise _fail(name, "positive" if not allow_zero else "zero or positive", value)
    return seconds


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _fail(name, "a list or tuple of strings", value)
    items = tuple(value)
    if not all(isinstance(item, str) and item for item in items):
        raise _fail(name, "a list or tuple of non-empty strings", value)
    return items


def _int(name: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(name, f"an integer from {low} to {high}", value)
    return value


def _callable(name: str, value: Any) -> Callable[[HttpRequest], str] | None:
    if value is None or callable(value):
        return value
    if not isinstance(value, str):
        raise _fail(name, "None, a callable or a dotted import path", value)
    try:
        return import_string(value)  # type: ignore[no-any-return]
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"{SETTING_NAME}[{name!r}] = {value!r} could not be imported: {exc}. "
            "HINT: give the dotted path of a function f(request) -> str."
        ) from exc


def header_to_meta(header: str) -> str:
    """``Idempotency-Key`` -> ``HTTP_IDEMPOTENCY_KEY``, as Django stores it in META."""
    name = header.upper().replace("-", "_")
    if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return name
    return "HTTP_" + name


class Resolved:
    """The validated settings, with derived values the hot path needs."""

    header: str
    header_meta: str
    methods: frozenset[str]
    max_key_length: int
    required: bool
    ttl: float
    lock_timeout: float
    mismatch_status: int
    concurrent_wait: float
    atomic: bool
    scope_function: Callable[[HttpRequest], str] | None
    fingerprint_headers: tuple[str, ...]
    fingerprint_meta: tuple[str, ...]
    database: str
    non_storable: frozenset[int]
    retry_after: int
    problem_types: dict[str, str]
    exempt_paths: tuple[re.Pattern[str], ...]

    def __init__(self, user: dict[str, Any]) -> None:
        unknown = sorted(set(user) - set(DEFAULTS))
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, DEFAULTS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(DEFAULTS)
            raise ImproperlyConfigured(f"Unknown key {name!r} in {SETTING_NAME}. HINT: {hint}")
        raw = {**DEFAULTS, **user}

        header = raw["HEADER"]
        if not isinstance(header, str) or not _TOKEN_RE.match(header):
            raise _fail("HEADER", "an HTTP header name", header)
        self.header = header
        self.header_meta = header_to_meta(header)

        methods = _strings("METHODS", raw["METHODS"])
        self.methods = frozenset(m.upper() for m in methods)
        if self.methods & {"GET", "HEAD", "OPTIONS", "TRACE"}:
            raise _fail("METHODS", "unsafe methods only (not GET, HEAD, OPTIONS, TRACE)", methods)

        self.max_key_length = _int("MAX_KEY_LENGTH", raw["MAX_KEY_LENGTH"], 1, KEY_COLUMN_LENGTH)
        self.required = _bool("REQUIRED", raw["REQUIRED"])
        self.ttl = _seconds("TTL", raw["TTL"], allow_zero=False)
        self.lock_timeout = _seconds("LOCK_TIMEOUT", raw["LOCK_TIMEOUT"], allow_zero=False)
        self.mismatch_status = _int("MISMATCH_STATUS", raw["MISMATCH_STATUS"], 400, 499)
        self.concurrent_wait = _seconds("CONCURRENT_WAIT", raw["CONCURRENT_WAIT"], allow_zero=True)
        self.atomic = _bool("ATOMIC", raw["ATOMIC"])
        self.scope_function = _callable("SCOPE_FUNCTION", raw["SCOPE_FUNCTION"])
        self.fingerprint_headers = _strings("FINGERPRINT_HEADERS", raw["FINGERPRINT_HEADERS"])
        self.fingerprint_meta = tuple(header_to_meta(h) for h in self.fingerprint_headers)

        database = raw["DATABASE"]
        if not isinstance(database, str) or not database:
            raise _fail("DATABASE", "a database alias", database)
        if database not in settings.DATABASES:
            raise ImproperlyConfigured(
                f"{SETTING_NAME}['DATABASE'] = {database!r} is not in DATABASES. "
                f"HINT: use one of {sorted(settings.DATABASES)}."
            )
        self.database = database

        statuses = raw["NON_STORABLE_STATUSES"]
        if isinstance(statuses, str | bytes) or not isinstance(statuses, Iterable):
            raise _fail("NON_STORABLE_STATUSES", "a collection of HTTP status codes", statuses)
        statuses = tuple(statuses)
        for status in statuses:
            _int("NON_STORABLE_STATUSES", status, 100, 599)
        self.non_storable = frozenset(statuses)

        self.retry_after = _int("RETRY_AFTER", raw["RETRY_AFTER"], 0, 86400)

        types = raw["PROBLEM_TYPES"]
        if not isinstance(types, dict) or not all(isinstance(v, str) for v in types.values()):
            raise _fail("PROBLEM_TYPES", "a dict of error code -> type URI", types)
        bad = sorted(set(types) - set(CODES))
        if bad:
            raise _fail("PROBLEM_TYPES", f"keyed by error codes ({', '.join(CODES)})", bad[0])
        self.problem_types = dict(types)

        patterns = _strings("EXEMPT_PATHS", raw["EXEMPT_PATHS"])
        try:
            self.exempt_paths = tuple(re.compile(p) for p in patterns)
        except re.error as exc:
            raise _fail("EXEMPT_PATHS", f"valid regular expressions ({exc})", patterns) from exc


class IdempotencySettings:
    """Lazy access to the validated settings: ``idempotency_settings.get().ttl``."""

    def __init__(self) -> None:
        self._resolved: Resolved | None = None

    def get(self) -> Resolved:
        resolved = self._resolved
        if resolved is None:
            user = getattr(settings, SETTING_NAME, None) or {}
            if not isinstance(user, dict):
                raise ImproperlyConfigured(
                    f"{SETTING_NAME} must be a dict, got {type(user).__name__}. "
                    f"HINT: write {SETTING_NAME} = {{'TTL': 86400, ...}}."
                )
            resolved = self._resolved = Resolved(user)
        return resolved

    def reload(self) -> None:
        self._resolved = None


idempotency_settings = IdempotencySettings()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTING_NAME, "DATABASES"):
        idempotency_settings.reload()


setting_changed.connect(_on_setting_changed, dispatch_uid="idempotency.conf")
