"""Fixtures of the stress suite: private database servers and databases to serve from.

The suite runs only with ``pytest --stress`` (the ``stress`` tox envs). It needs
``scripts/pg`` to start PostgreSQL 15 (as root, or as a user who can run
``initdb``) and ``scripts/mariadb`` to start MariaDB (as any user with
``mariadb-server`` installed, which it installs itself as root); where either is
impossible the scenarios on that database skip, saying why.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.stress.harness import (
    RESULTS,
    Cluster,
    Database,
    MariaDBServer,
    free_port,
    prepare,
    sqlite_database,
    table,
)

_names = itertools.count(1)


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    """Server logs and SQLite files; kept after the run when ``STRESS_KEEP`` is set."""
    path = Path(tempfile.mkdtemp(prefix="django-idempotency-stress."))
    yield path
    if os.environ.get("STRESS_KEEP"):
        print(f"\nstress suite: server logs kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    # Under /tmp, not pytest's private tmp folders: the server runs as `postgres`.
    directory = Path(tempfile.mkdtemp(prefix="django-idempotency-stress-pg."))
    server = Cluster(directory, free_port())
    try:
        server.start()
    except Exception as exc:  # any reason at all means "skip"
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"could not start a private PostgreSQL with scripts/pg: {exc}")
    try:
        # scripts/pg turns synchronous_commit off for speed; then a crash loses commits
        # the server had already acknowledged, which the outage scenario would count as
        # lost payments. Back to PostgreSQL's default: a commit survives a crash.
        with server.connect() as conn:
            conn.execute("ALTER SYSTEM SET synchronous_commit = on")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg_template(cluster: Cluster) -> str:
    database = cluster.create_database("stress_template")
    prepare(database)
    return database.name


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    directory = Path(tempfile.mkdtemp(prefix="django-idempotency-stress-mariadb."))
    server = MariaDBServer(directory, free_port())
    try:
        server.start()
    except Exception as exc:  # any reason at all means "skip"
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"could not start a private MariaDB with scripts/mariadb: {exc}")
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def mariadb_template(mariadb_server: MariaDBServer) -> str:
    database = mariadb_server.create_database("stress_template")
    prepare(database)
    return database.name


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Callable[[str], Database]:
    """A fresh, migrated database with the demo user: ``store("postgresql")``,
    ``store("mariadb")`` or ``store("mariadb-rr")`` (REPEATABLE READ). Each server
    starts the first time a test asks for it."""

    def make(kind: str) -> Database:
        name = f"stress_{next(_names)}"
        if kind == "postgresql":
            cluster: Cluster = request.getfixturevalue("cluster")
            template = request.getfixturevalue("pg_template")
            return cluster.create_database(name, template=template)
        server: MariaDBServer = request.getfixturevalue("mariadb_server")
        template = request.getfixturevalue("mariadb_template")
        isolation = {"mariadb": "", "mariadb-rr": "repeatable read"}[kind]
        return server.create_database(name, template=template, isolation=isolation)

    return make


@pytest.fixture(scope="session")
def sqlite_template(work_dir: Path) -> Path:
    database = sqlite_database(work_dir, None, "template")
    prepare(database)
    assert database.path is not None
    return database.path


@pytest.fixture
def sqlite_db(work_dir: Path, sqlite_template: Path) -> Database:
    return sqlite_database(work_dir, sqlite_template, f"stress_{next(_names)}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("stress results")
    for line in table(RESULTS):
        terminalreporter.write_line(line)
