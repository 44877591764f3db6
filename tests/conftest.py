"""Shared pytest configuration.

The database comes from ``DATABASE_URL`` (read by ``tests/settings.py``; SQLite
when unset). For PostgreSQL, MariaDB and MySQL the server is probed once at
start-up: when it cannot be reached, every test is skipped with the reason instead
of failing one by one. Tests marked ``@pytest.mark.postgres`` or
``@pytest.mark.mysql`` (MariaDB or MySQL) are skipped on other backends. The stress
suite (``tests/stress``) is collected only with ``--stress``. A test module that needs
a package beyond ``requirements/tests.txt`` skips when it is missing, naming the
requirements file that installs it (``pytest.importorskip`` at its top).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

STRESS_DIR = Path(__file__).resolve().parent / "stress"

POSTGRES_ENGINES = ("django.db.backends.postgresql",)
MYSQL_ENGINES = ("django.db.backends.mysql",)
PROBE_TIMEOUT = 3  # seconds

# Set in pytest_configure: why the configured database server cannot be used.
_server_unreachable: str | None = None


def _default_database() -> dict[str, Any]:
    from django.conf import settings

    return settings.DATABASES["default"]


def _is_postgres(db: dict[str, Any]) -> bool:
    return db.get("ENGINE", "").startswith(POSTGRES_ENGINES)


def _is_mysql(db: dict[str, Any]) -> bool:
    return db.get("ENGINE", "").startswith(MYSQL_ENGINES)


def _address(db: dict[str, Any]) -> str:
    host = db.get("HOST") or "localhost"
    return f"{host}:{db.get('PORT') or (3306 if _is_mysql(db) else 5432)}"


def _probe_postgres(db: dict[str, Any]) -> str | None:
    """Return None when the server accepts a connection, else the error."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed: {exc}"
    params: dict[str, Any] = {
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "connect_timeout": PROBE_TIMEOUT,
    }
    params = {k: v for k, v in params.items() if v is not None}
    error: Exception | None = None
    # Django creates the test database from the "postgres" maintenance
    # database; fall back to the configured one like Django does.
    for dbname in dict.fromkeys(["postgres", db.get("NAME") or "postgres"]):
        try:
            psycopg.connect(dbname=dbname, **params).close()
        except psycopg.Error as exc:
            error = exc
        else:
            return None
    # libpq's message is "connection to server at ... failed: <reason>\n<hint>".
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return message.rsplit("failed: ", 1)[-1] or type(error).__name__


def _probe_mysql(db: dict[str, Any]) -> str | None:
    """Return None when the MariaDB/MySQL server accepts a connection, else the error."""
    try:
        import MySQLdb
    except ImportError as exc:
        return f"mysqlclient is not installed: {exc}"
    params: dict[str, Any] = {
        "host": db.get("HOST") or None,
        "port": int(db["PORT"]) if db.get("PORT") else None,
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "connect_timeout": PROBE_TIMEOUT,
    }
    params = {k: v for k, v in params.items() if v is not None}
    # Without a database: Django creates the test database itself.
    try:
        MySQLdb.connect(**params).close()
    except MySQLdb.Error as exc:
        return str(exc.args[1]) if len(exc.args) > 1 else type(exc).__name__
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stress",
        action="store_true",
        help="run the stress suite in tests/stress (app servers, a private PostgreSQL)",
    )


#: Set by the ``*-prepared`` tox envs: the whole suite with ``PREPARED_STATEMENTS`` on
#: wherever a test does not set it.
PREPARED_BY_DEFAULT = bool(os.environ.get("TEST_PREPARED_STATEMENTS"))


def pytest_configure(config: pytest.Config) -> None:
    global _server_unreachable
    if PREPARED_BY_DEFAULT:
        from idempotency import conf

        conf.DEFAULTS["PREPARED_STATEMENTS"] = True
    db = _default_database()
    if _is_postgres(db):
        error = _probe_postgres(db)
        if error is not None:
            _server_unreachable = (
                f"PostgreSQL not reachable at {_address(db)} ({error}); "
                "start one with scripts/pg or use the sqlite envs"
            )
    elif _is_mysql(db):
        error = _probe_mysql(db)
        if error is not None:
            _server_unreachable = (
                f"MariaDB/MySQL not reachable at {_address(db)} ({error}); "
                "start one with scripts/mariadb or use the sqlite envs"
            )


def pytest_report_header(config: pytest.Config) -> list[str]:
    db = _default_database()
    engine = db.get("ENGINE", "?").rsplit(".", 1)[-1]
    if _is_postgres(db) or _is_mysql(db):
        where = f"{_address(db)}/{db.get('NAME')}"
        state = "unreachable, every test is skipped" if _server_unreachable else "reachable"
        isolation = db.get("OPTIONS", {}).get("isolation_level")
        if isolation:
            state += f", isolation level {isolation}"
        return [f"database: {engine} at {where} ({state})"]
    test_name = db.get("TEST", {}).get("NAME")
    if engine == "sqlite3" and not test_name:
        return [f"database: {engine}, test database in memory"]
    return [f"database: {engine}, test database {test_name or 'test_' + str(db.get('NAME'))}"]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without ``--stress``, do not import the stress suite at all: its modules need
    packages (hypothesis, uvicorn, ...) that the rest of the suite does not."""
    if config.getoption("stress"):
        return None
    if collection_path == STRESS_DIR or STRESS_DIR in collection_path.parents:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("stress"):
        stress = [item for item in items if STRESS_DIR in item.path.parents]
        if stress:
            config.hook.pytest_deselected(items=stress)
            items[:] = [item for item in items if STRESS_DIR not in item.path.parents]
    if _server_unreachable:
        skip_all = pytest.mark.skip(reason=_server_unreachable)
        for item in items:
            item.add_marker(skip_all)
        return
    db = _default_database()
    engine = db.get("ENGINE", "?").rsplit(".", 1)[-1]
    skips = []
    if not _is_postgres(db):
        skips.append(
            ("postgres", f"needs PostgreSQL, the database is {engine}; run a *-postgres tox env")
        )
    if not _is_mysql(db):
        skips.append(
            ("mysql", f"needs MariaDB or MySQL, the database is {engine}; run a *-mariadb tox env")
        )
    for marker, reason in skips:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if item.get_closest_marker(marker):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def django_db_modify_db_settings_tox_suffix() -> None:
    """Give each tox env its own test database.

    Parallel tox envs share one PostgreSQL (or MariaDB) server; with the same test database
    name they would drop each other's database. (pytest-django's own version
    of this fixture reads TOX_PARALLEL_ENV, which tox 4 no longer sets.)
    """
    env_name = os.environ.get("TOX_ENV_NAME")
    if not env_name:
        return
    from django.conf import settings

    suffix = re.sub(r"\W", "_", env_name)
    for db in settings.DATABASES.values():
        test_name = db.get("TEST", {}).get("NAME")
        if not test_name:
            if db.get("ENGINE") == "django.db.backends.sqlite3":
                continue  # an in-memory database, private to the process
            test_name = f"test_{db['NAME']}"
        if test_name == ":memory:" or "mode=memory" in test_name:
            continue
        db.setdefault("TEST", {})["NAME"] = f"{test_name}_{suffix}"


MIDDLEWARE = "idempotency.middleware.IdempotencyMiddleware"


@pytest.fixture(params=["without-middleware", "with-middleware"])
def middleware(request: pytest.FixtureRequest, settings: Any) -> bool:
    """Run a test of the mixin or the decorator alone, then with the middleware too.

    Returns whether the middleware is installed.
    """
    assert MIDDLEWARE in settings.MIDDLEWARE
    if request.param == "without-middleware":
        settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE]
        return False
    return True


@pytest.fixture
def no_middleware(settings: Any) -> None:
    """Take the middleware out of ``MIDDLEWARE``."""
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE]


@pytest.fixture
def alice() -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_user("alice")


@pytest.fixture
def bob() -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_user("bob")
