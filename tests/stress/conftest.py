"""Fixtures of the stress suite: a private PostgreSQL and databases to serve from.

The suite runs only with ``pytest --stress`` (the ``stress`` tox envs). It needs
``scripts/pg`` to start PostgreSQL 15 (as root, or as a user who can run
``initdb``); where that is impossible the PostgreSQL scenarios skip, saying why.
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


@pytest.fixture
def pg_database(cluster: Cluster, pg_template: str) -> Callable[[], Database]:
    """A fresh, migrated PostgreSQL database with the demo user, per call."""

    def make() -> Database:
        return cluster.create_database(f"stress_{next(_names)}", template=pg_template)

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
