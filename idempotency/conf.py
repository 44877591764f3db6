"""The ``IDEMPOTENCY`` settings dict, validated once and re-read on ``setting_changed``.

Nothing here reads Django settings at import time, so ``override_settings`` works
in tests and settings may be changed before the first request.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, cast

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
    "idempotency_response_too_large",
    "idempotency_response_not_kept",
)

#: The longest key the ``key`` column can hold.
KEY_COLUMN_LENGTH = 255

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


ProblemKind = Literal["type", "unknown", "value", "import", "database"]


class SettingError(ImproperlyConfigured):
    """One problem with the ``IDEMPOTENCY`` setting.

    ``str()`` is ``"<message> HINT: <hint>"``. The system checks report ``message``
    and ``hint`` apart, under an id chosen by ``kind``: ``"type"`` (the setting is
    not a dict), ``"unknown"`` (a key that does not exist), ``"value"`` (a wrong type
    or value), ``"import"`` (a dotted path that does not import a callable),
    ``"database"`` (an alias missing from ``DATABASES``).
    """

    def __init__(self, kind: ProblemKind, key: str | None, message: str, hint: str) -> None:
        super().__init__(f"{message} HINT: {hint}")
        self.kind = kind
        self.key = key
        self.message = message
        self.hint = hint


def _fail(name: str, expected: str, value: object) -> SettingError:
    return SettingError(
        "value",
        name,
        f"{SETTING_NAME}[{name!r}] must be {expected}, got {value!r}.",
        f"fix {SETTING_NAME}[{name!r}] in your settings, or remove it to use the "
        f"default {DEFAULTS[name]!r}.",
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


def _positive_seconds(name: str, value: Any) -> float:
    return _seconds(name, value, allow_zero=False)


def _seconds_or_zero(name: str, value: Any) -> float:
    return _seconds(name, value, allow_zero=True)


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
        return cast("Callable[[HttpRequest], str] | None", value)
    if not isinstance(value, str):
        raise _fail(name, "None, a callable or a dotted import path", value)
    hint = "give the dotted path of a function f(request) -> str."
    try:
        imported = import_string(value)
    except ImportError as exc:
        raise SettingError(
            "import",
            name,
            f"{SETTING_NAME}[{name!r}] = {value!r} could not be imported: {exc}.",
            hint,
        ) from exc
    if not callable(imported):
        raise SettingError(
            "import",
            name,
            f"{SETTING_NAME}[{name!r}] = {value!r} imports {imported!r}, which is not callable.",
            hint,
        )
    return imported  # type: ignore[no-any-return]


def _headers(name: str, value: Any) -> tuple[str, ...]:
    headers = _strings(name, value)
    for header in headers:
        if not _TOKEN_RE.match(header):
            raise _fail(name, "a list or tuple of HTTP header names", value)
    return headers


def _cookies(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        # Read when the settings are resolved, so that override_settings works.
        return (settings.SESSION_COOKIE_NAME,)
    return _strings(name, value)


def _header(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.match(value):
        raise _fail(name, "an HTTP header name", value)
    return value


def _methods(name: str, value: Any) -> frozenset[str]:
    methods = _strings(name, value)
    upper = frozenset(m.upper() for m in methods)
    if upper & {"GET", "HEAD", "OPTIONS", "TRACE"}:
        raise _fail(name, "unsafe methods only (not GET, HEAD, OPTIONS, TRACE)", methods)
    return upper


def _key_length(name: str, value: Any) -> int:
    return _int(name, value, 1, KEY_COLUMN_LENGTH)


def _client_error_status(name: str, value: Any) -> int:
    return _int(name, value, 400, 499)


def _database(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(name, "a database alias", value)
    if value not in settings.DATABASES:
        raise SettingError(
            "database",
            name,
            f"{SETTING_NAME}[{name!r}] = {value!r} is not in DATABASES.",
            f"use one of {sorted(settings.DATABASES)}.",
        )
    return value


def _statuses(name: str, value: Any) -> frozenset[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _fail(name, "a collection of HTTP status codes", value)
    statuses = tuple(value)
    for status in statuses:
        _int(name, status, 100, 599)
    return frozenset(statuses)


def _retry_after(name: str, value: Any) -> int:
    return _int(name, value, 0, 86400)


def _problem_types(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _fail(name, "a dict of error code -> type URI", value)
    bad = sorted(set(value) - set(CODES), key=str)
    if bad:
        raise _fail(name, f"keyed by error codes ({', '.join(CODES)})", bad[0])
    return dict(value)


def _size_or_none(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(name, "None or a number of bytes (an integer, 0 or more)", value)
    return value


def _patterns(name: str, value: Any) -> tuple[re.Pattern[str], ...]:
    patterns = _strings(name, value)
    try:
        return tuple(re.compile(p) for p in patterns)
    except re.error as exc:
        raise _fail(name, f"valid regular expressions ({exc})", patterns) from exc


def header_to_meta(header: str) -> str:
    """``Idempotency-Key`` -> ``HTTP_IDEMPOTENCY_KEY``, as Django stores it in META."""
    name = header.upper().replace("-", "_")
    if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return name
    return "HTTP_" + name


def _headers_to_meta(headers: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(header_to_meta(header) for header in headers)


@dataclass(frozen=True, eq=False)
class Setting:
    """One key of ``IDEMPOTENCY``: its default, its check, where it lands on :class:`Resolved`.

    ``check(key, value)`` returns the value the app uses or raises :class:`SettingError`.
    That value becomes the attribute ``attr`` of :class:`Resolved`, and each entry of
    ``derived`` (attribute name -> function of the value) one more attribute.
    """

    key: str
    default: Any
    check: Callable[[str, Any], Any]
    attr: str
    derived: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)


#: Every setting, in the order problems are reported and the docs list them.
SETTINGS: tuple[Setting, ...] = (
    Setting("HEADER", "Idempotency-Key", _header, "header", {"header_meta": header_to_meta}),
    Setting("METHODS", ("POST", "PUT", "PATCH", "DELETE"), _methods, "methods"),
    Setting("MAX_KEY_LENGTH", KEY_COLUMN_LENGTH, _key_length, "max_key_length"),
    Setting("REQUIRED", False, _bool, "required"),
    Setting("TTL", 24 * 3600, _positive_seconds, "ttl"),
    Setting("LOCK_TIMEOUT", 60, _positive_seconds, "lock_timeout"),
    Setting("MISMATCH_STATUS", 409, _client_error_status, "mismatch_status"),
    Setting("CONCURRENT_WAIT", 0, _seconds_or_zero, "concurrent_wait"),
    Setting("ATOMIC", True, _bool, "atomic"),
    Setting("SCOPE_FUNCTION", None, _callable, "scope_function"),
    Setting(
        "CREDENTIAL_HEADERS",
        ("Authorization", "X-API-Key"),
        _headers,
        "credential_headers",
        {"credential_meta": _headers_to_meta},
    ),
    Setting("CREDENTIAL_COOKIES", None, _cookies, "credential_cookies"),
    Setting(
        "FINGERPRINT_HEADERS",
        ("Content-Type",),
        _strings,
        "fingerprint_headers",
        {"fingerprint_meta": _headers_to_meta},
    ),
    Setting("DATABASE", "default", _database, "database"),
    Setting("NON_STORABLE_STATUSES", (408, 425, 429, *range(500, 600)), _statuses, "non_storable"),
    Setting("RETRY_AFTER", 1, _retry_after, "retry_after"),
    Setting("PROBLEM_TYPES", {}, _problem_types, "problem_types"),
    Setting("EXEMPT_PATHS", (), _patterns, "exempt_paths"),
    Setting("MAX_RESPONSE_SIZE", 4 * 1024 * 1024, _size_or_none, "max_response_size"),
    Setting("PREPARED_STATEMENTS", False, _bool, "prepared_statements"),
)

#: The default of each key, from :data:`SETTINGS`. :func:`validate` reads it when it
#: runs, so a test run may change a default here.
DEFAULTS: dict[str, Any] = {setting.key: setting.default for setting in SETTINGS}


def user_setting() -> Any:
    """The ``IDEMPOTENCY`` setting as the project wrote it (``{}`` when unset)."""
    return getattr(settings, SETTING_NAME, None) or {}


def validate(user: Any) -> tuple[dict[str, Any], list[SettingError]]:
    """Validate a value of the ``IDEMPOTENCY`` setting, reporting every problem.

    Returns the value the app uses for each valid key (defaults filled in), and a
    :class:`SettingError` for each problem: unknown keys first, then the keys in
    :data:`SETTINGS` order. Never raises.
    """
    if not isinstance(user, dict):
        return {}, [
            SettingError(
                "type",
                None,
                f"{SETTING_NAME} must be a dict, got {type(user).__name__}.",
                f"write {SETTING_NAME} = {{'TTL': 86400, ...}}.",
            )
        ]
    problems: list[SettingError] = []
    for name in sorted(set(user) - set(DEFAULTS), key=str):
        close = difflib.get_close_matches(name, DEFAULTS, n=1) if isinstance(name, str) else []
        hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(DEFAULTS)
        problems.append(
            SettingError("unknown", str(name), f"Unknown key {name!r} in {SETTING_NAME}.", hint)
        )
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        name = setting.key
        try:
            values[name] = setting.check(name, user.get(name, DEFAULTS[name]))
        except SettingError as exc:
            problems.append(exc)
    return values, problems


@dataclass(frozen=True, eq=False)
class Resolved:
    """The validated settings, with derived values the hot path needs.

    Each field is the ``attr`` of one entry of :data:`SETTINGS`, or one of its ``derived``;
    :func:`resolve` builds it from a value of the ``IDEMPOTENCY`` setting.
    """

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
    credential_headers: tuple[str, ...]
    credential_meta: tuple[str, ...]
    credential_cookies: tuple[str, ...]
    fingerprint_headers: tuple[str, ...]
    fingerprint_meta: tuple[str, ...]
    database: str
    non_storable: frozenset[int]
    retry_after: int
    problem_types: dict[str, str]
    exempt_paths: tuple[re.Pattern[str], ...]
    max_response_size: int | None
    prepared_statements: bool


def resolve(user: Any) -> Resolved:
    """The :class:`Resolved` settings of ``user``, a value of the ``IDEMPOTENCY`` setting.

    Raises the first problem :func:`validate` finds in ``user``, as ``SettingError``.
    """
    values, problems = validate(user)
    if problems:
        raise problems[0]
    attrs: dict[str, Any] = {}
    for setting in SETTINGS:
        value = attrs[setting.attr] = values[setting.key]
        for attr, derive in setting.derived.items():
            attrs[attr] = derive(value)
    return Resolved(**attrs)


class IdempotencySettings:
    """Lazy access to the validated settings: ``idempotency_settings.get().ttl``."""

    def __init__(self) -> None:
        self._resolved: Resolved | None = None

    def get(self) -> Resolved:
        resolved = self._resolved
        if resolved is None:
            resolved = self._resolved = resolve(user_setting())
        return resolved

    def reload(self) -> None:
        self._resolved = None


idempotency_settings = IdempotencySettings()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTING_NAME, "DATABASES", "SESSION_COOKIE_NAME"):
        idempotency_settings.reload()


setting_changed.connect(_on_setting_changed, dispatch_uid="idempotency.conf")
