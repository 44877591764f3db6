"""System checks: ``manage.py check`` reports misconfiguration before the first request.

Every message has an id ``idempotency.E0xx`` (error) or ``idempotency.W0xx``
(warning) that is never reused, and a hint. They are listed in ``docs/checks.rst``.
All checks carry the ``idempotency`` tag: ``manage.py check --tag idempotency``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import DatabaseError, connections, router
from django.db.utils import load_backend
from django.utils.connection import ConnectionDoesNotExist
from django.utils.module_loading import import_string

from idempotency.conf import SETTING_NAME, SettingError, user_setting, validate
from idempotency.store import STATEMENT_MARGIN, SUPPORTED_VENDORS, max_allowed_packet

TAG = "idempotency"

MIDDLEWARE_PATH = "idempotency.middleware.IdempotencyMiddleware"
AUTH_MIDDLEWARE_PATH = "django.contrib.auth.middleware.AuthenticationMiddleware"
LOGIN_REQUIRED_MIDDLEWARE_PATH = "django.contrib.auth.middleware.LoginRequiredMiddleware"

#: The id of each kind of problem :func:`idempotency.conf.validate` reports.
SETTING_IDS = {
    "type": "idempotency.E002",
    "unknown": "idempotency.E003",
    "value": "idempotency.E004",
    "import": "idempotency.E005",
    "database": "idempotency.E006",
}

#: A setting name at least this close to ``IDEMPOTENCY`` (difflib's ratio) looks like a
#: misspelling of it. Django's own setting names all score 0.5 or less.
NEAR_MISS_CUTOFF = 0.8
#: Names that start like the setting but are not it: ``IDEMPOTENCY_SETTINGS``, ``IDEMPOTENT``.
NEAR_MISS_PREFIX = "IDEMPOTEN"

AppConfigs = Sequence[AppConfig] | None


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _load(path: str) -> Any:
    try:
        return import_string(path)
    except Exception:
        # Not this app's business: Django reports a broken MIDDLEWARE entry itself.
        return None


def _positions(base_path: str) -> list[int]:
    """Indexes in MIDDLEWARE of ``base_path`` and of entries that subclass it."""
    base = _load(base_path)
    found = []
    for index, path in enumerate(settings.MIDDLEWARE or ()):
        if path == base_path:
            found.append(index)
            continue
        cls = _load(path)
        if isinstance(base, type) and isinstance(cls, type) and issubclass(cls, base):
            found.append(index)
    return found


@register(TAG)
def check_middleware_order(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """``IdempotencyMiddleware`` after ``AuthenticationMiddleware`` and ``LoginRequiredMiddleware``."""
    ours = _positions(MIDDLEWARE_PATH)
    if not ours:
        return []
    first = ours[0]
    messages: list[CheckMessage] = []
    auth = _positions(AUTH_MIDDLEWARE_PATH)
    if not auth:
        values, _problems = validate(user_setting())
        if values.get("SCOPE_FUNCTION") is None:
            messages.append(
                Warning(
                    f"{MIDDLEWARE_PATH} is in MIDDLEWARE without {AUTH_MIDDLEWARE_PATH}: "
                    "unless another middleware sets request.user, keys are scoped by the "
                    "Authorization header only, and requests without one share the "
                    "anonymous scope.",
                    hint=f"Add {AUTH_MIDDLEWARE_PATH!r} to MIDDLEWARE before "
                    f"{MIDDLEWARE_PATH!r}, or set {SETTING_NAME}['SCOPE_FUNCTION'] to a "
                    "function that tells your users apart. If another middleware sets "
                    "request.user, place this one after it and silence idempotency.W001.",
                    id="idempotency.W001",
                )
            )
    elif first < auth[0]:
        messages.append(
            Error(
                f"{MIDDLEWARE_PATH} is placed before {AUTH_MIDDLEWARE_PATH} in MIDDLEWARE.",
                hint=f"Move {MIDDLEWARE_PATH!r} after {AUTH_MIDDLEWARE_PATH!r}, so that "
                "middleware that depend on authentication check a request before its key "
                "is claimed.",
                id="idempotency.E001",
            )
        )
    login_required = _positions(LOGIN_REQUIRED_MIDDLEWARE_PATH)
    if login_required and first < login_required[-1]:
        messages.append(
            Warning(
                f"{MIDDLEWARE_PATH} is placed before {LOGIN_REQUIRED_MIDDLEWARE_PATH} in "
                "MIDDLEWARE: it claims the key of a request that the login check then "
                "redirects, and stores and replays that redirect.",
                hint=f"Move {MIDDLEWARE_PATH!r} after {LOGIN_REQUIRED_MIDDLEWARE_PATH!r}.",
                id="idempotency.W002",
            )
        )
    return messages


def _setting_message(problem: SettingError) -> Error:
    return Error(problem.message, hint=_sentence(problem.hint), id=SETTING_IDS[problem.kind])


@register(TAG)
def check_settings(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """Every problem with the ``IDEMPOTENCY`` dict: unknown keys, wrong types and values."""
    _values, problems = validate(user_setting())
    return [_setting_message(problem) for problem in problems]


def _near_misses() -> list[str]:
    """The project's setting names that look like a misspelt ``IDEMPOTENCY``."""
    # dir() lists what settings.py defined, and what override_settings() and
    # settings.configure() set (both keep them in a UserSettingsHolder).
    names = {name for name in dir(settings) if name.isupper() and name != SETTING_NAME}
    if not names:
        return []
    close = difflib.get_close_matches(SETTING_NAME, names, n=len(names), cutoff=NEAR_MISS_CUTOFF)
    return sorted({*close, *(name for name in names if name.startswith(NEAR_MISS_PREFIX))})


@register(TAG)
def check_setting_name(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """A setting whose name looks like a misspelt ``IDEMPOTENCY``, which is ignored."""
    has_setting = hasattr(settings, SETTING_NAME)
    messages: list[CheckMessage] = []
    for name in _near_misses():
        if has_setting:
            fix = f"Move what it holds into {SETTING_NAME} and remove {name}"
        else:
            fix = f"Rename it to {SETTING_NAME}"
        messages.append(
            Warning(
                f"The setting {name} looks like a misspelling of {SETTING_NAME}: "
                f"django-idempotency reads only {SETTING_NAME}, so {name} is ignored.",
                hint=f"{fix}. If {name} belongs to something else, add "
                "'idempotency.W006' to SILENCED_SYSTEM_CHECKS.",
                id="idempotency.W006",
            )
        )
    return messages


@register(TAG)
def check_ttl(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """``TTL`` shorter than ``LOCK_TIMEOUT``."""
    values, _problems = validate(user_setting())
    ttl, lease = values.get("TTL"), values.get("LOCK_TIMEOUT")
    if ttl is None or lease is None or ttl >= lease:
        return []
    return [
        Warning(
            f"{SETTING_NAME}['TTL'] ({ttl:g} s) is shorter than "
            f"{SETTING_NAME}['LOCK_TIMEOUT'] ({lease:g} s): a stored response is kept for "
            "less time than one request may run, so a client that retries on that time "
            "scale may find it gone and run the operation again.",
            hint=f"Raise {SETTING_NAME}['TTL'] to at least {SETTING_NAME}['LOCK_TIMEOUT'] "
            "(the default TTL is 24 hours), or lower LOCK_TIMEOUT.",
            id="idempotency.W003",
        )
    ]


@register(TAG)
def check_mismatch_status(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """``MISMATCH_STATUS`` other than 409 or 422."""
    values, _problems = validate(user_setting())
    status = values.get("MISMATCH_STATUS")
    if status is None or status in (409, 422):
        return []
    return [
        Warning(
            f"{SETTING_NAME}['MISMATCH_STATUS'] is {status}: clients expect 409 Conflict or "
            "422 Unprocessable Content when a key is reused for a different request.",
            hint="Use 409 (the default) or 422 (the IETF draft's choice).",
            id="idempotency.W004",
        )
    ]


def _write_aliases() -> set[str]:
    """Where the routers send writes of the project's models (not this app's)."""
    return {
        router.db_for_write(model)
        for model in apps.get_models()
        if model._meta.app_label != "idempotency"
    }


@register(TAG)
def check_atomic_database(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """``ATOMIC`` with a store on a database that no model is written to.

    Best effort: the views' writes are assumed to go where the routers in
    ``DATABASE_ROUTERS`` (or, without them, ``default``) send the project's models.
    """
    values, _problems = validate(user_setting())
    alias = values.get("DATABASE")
    if alias is None or not values.get("ATOMIC"):
        return []
    writes = _write_aliases()
    if not writes or alias in writes:
        return []
    return [
        Error(
            f"{SETTING_NAME}['ATOMIC'] is on but the store is on database {alias!r}, while "
            f"the project's models are written to {', '.join(map(repr, sorted(writes)))}: "
            "a view's writes would not commit or roll back with its stored response.",
            hint=f"Set {SETTING_NAME}['DATABASE'] to the alias your views write to, or route "
            f"those writes to {alias!r} in DATABASE_ROUTERS, or set "
            f"{SETTING_NAME}['ATOMIC'] = False (see the guarantees this loses). If your "
            f"views write to {alias!r} explicitly (.using()), add 'idempotency.E007' to "
            "SILENCED_SYSTEM_CHECKS.",
            id="idempotency.E007",
        )
    ]


def _vendor(alias: str) -> str | None:
    """``connection.vendor`` of ``alias``, without connecting."""
    try:
        return str(connections[alias].vendor)
    except ConnectionDoesNotExist:
        # DATABASES changed after the connections were set up (override_settings).
        pass
    try:
        backend = load_backend(settings.DATABASES[alias].get("ENGINE", ""))
    except Exception:
        return None  # Django reports a broken ENGINE itself
    return str(backend.DatabaseWrapper.vendor)


@register(TAG)
def check_database_vendor(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """The store's database is one the store has SQL for."""
    values, _problems = validate(user_setting())
    alias = values.get("DATABASE")
    if alias is None or alias not in settings.DATABASES:
        return []  # idempotency.E006
    vendor = _vendor(alias)
    if vendor is None or vendor in SUPPORTED_VENDORS:
        return []
    engine = settings.DATABASES[alias].get("ENGINE", "?")
    return [
        Error(
            f"The idempotency store's database {alias!r} is {vendor!r} ({engine}), which "
            "the store has no SQL for: every request with a key would answer 503 "
            "idempotency_store_unavailable.",
            hint="Keep the store on SQLite, PostgreSQL, MariaDB or MySQL through Django's "
            f"own backends: point {SETTING_NAME}['DATABASE'] at such a database (it may "
            "be another alias than the one the views write to, with ATOMIC = False).",
            id="idempotency.E008",
        )
    ]


@register(TAG)
def check_atomic_requests(app_configs: AppConfigs = None, **kwargs: Any) -> list[CheckMessage]:
    """``ATOMIC_REQUESTS`` on the store's database."""
    values, _problems = validate(user_setting())
    alias = values.get("DATABASE")
    if alias is None or not settings.DATABASES[alias].get("ATOMIC_REQUESTS", False):
        return []
    return [
        Warning(
            f"DATABASES[{alias!r}] (the idempotency store) has ATOMIC_REQUESTS on: the "
            "@idempotent decorator and the DRF IdempotencyMixin claim keys inside the "
            "request's transaction, where concurrent duplicates cannot see the claim until "
            "it commits, so they wait on the unique index instead of getting 409 "
            "idempotency_key_locked.",
            hint=f"Turn ATOMIC_REQUESTS off for {alias!r} and rely on "
            f"{SETTING_NAME}['ATOMIC'], which runs each protected view in a transaction, or "
            "use IdempotencyMiddleware, which claims before the request's transaction begins.",
            id="idempotency.W005",
        )
    ]


#: The largest value PostgreSQL keeps in a field, and the largest message it takes.
POSTGRES_MAX_VALUE = 1024**3 - 1
#: SQLite's default SQLITE_MAX_LENGTH, where the limit cannot be read (Python < 3.11).
SQLITE_DEFAULT_MAX_LENGTH = 1_000_000_000


def _response_capacity(alias: str) -> tuple[int, str]:
    """The largest body the store's database ``alias`` takes in one statement, and why."""
    conn = connections[alias]
    if conn.vendor == "mysql":
        packet = max_allowed_packet(conn)
        return (packet - STATEMENT_MARGIN) // 2, (
            f"its max_allowed_packet is {packet} bytes, and a body goes in the statement "
            "escaped, which may double it"
        )
    if conn.vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        if is_psycopg3:
            return POSTGRES_MAX_VALUE - STATEMENT_MARGIN, "PostgreSQL keeps at most 1 GB in a field"
        return (POSTGRES_MAX_VALUE - STATEMENT_MARGIN) // 2, (
            "psycopg2 sends the body hex-escaped in the query, which PostgreSQL takes up to 1 GB"
        )
    conn.ensure_connection()
    getlimit = getattr(conn.connection, "getlimit", None)
    if getlimit is None:
        length = SQLITE_DEFAULT_MAX_LENGTH
    else:
        import sqlite3

        # Python 3.11+, like getlimit() itself.
        length = int(getlimit(getattr(sqlite3, "SQLITE_LIMIT_LENGTH", 0)))
    return length, f"its SQLITE_LIMIT_LENGTH is {length} bytes"


@register(TAG, Tags.database)
def check_response_size(
    app_configs: AppConfigs = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``MAX_RESPONSE_SIZE`` above what the store's database takes in one statement.

    A database check: it asks the server, so it runs with ``migrate`` and
    ``check --database``, when the store's alias is among the databases checked.
    """
    values, _problems = validate(user_setting())
    alias = values.get("DATABASE")
    if alias is None or not databases or alias not in databases:
        return []
    if "MAX_RESPONSE_SIZE" not in values or _vendor(alias) not in SUPPORTED_VENDORS:
        return []  # idempotency.E004, idempotency.E008
    limit = values["MAX_RESPONSE_SIZE"]
    try:
        capacity, reason = _response_capacity(alias)
    except DatabaseError:
        # Not reachable (or no such database yet): nothing to compare with. The
        # check runs again with migrate, which needs the server.
        return []
    if limit is not None and limit <= capacity:
        return []
    setting = f"{SETTING_NAME}['MAX_RESPONSE_SIZE']"
    stated = "None (no limit)" if limit is None else f"{limit} bytes"
    hint = f"Set {setting} to {capacity} or less"
    if limit is not None and connections[alias].vendor == "mysql":
        needed = 2 * limit + STATEMENT_MARGIN
        hint += f", or raise max_allowed_packet on the server to at least {needed} bytes"
    hint += ". If no response gets that large, silence idempotency.W007."
    return [
        Warning(
            f"{setting} is {stated}, but the store's database {alias!r} takes a response "
            f"body of at most {capacity} bytes ({reason}): a larger response is not "
            "stored. With ATOMIC its request is rolled back and answers 500 "
            "idempotency_response_too_large; without, its retries get 500 "
            "idempotency_response_not_kept.",
            hint=hint,
            id="idempotency.W007",
        )
    ]
