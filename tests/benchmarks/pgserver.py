"""Database servers for a benchmark: the one given, or a throwaway one of its own."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def postgres_server(url: str | None, port: int | None = None) -> Iterator[str]:
    """Yield ``url``; without one, start a PostgreSQL 15 with ``scripts/pg`` (on ``port``,
    else a free one) and stop it after."""
    if url:
        yield url
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.stress.harness import Cluster, free_port

    directory = Path(tempfile.mkdtemp(prefix="django-idempotency-bench-pg."))
    cluster = Cluster(directory, port or free_port())
    try:
        cluster.start()
        yield cluster.url()
    finally:
        try:
            cluster.destroy()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def mariadb_server(url: str | None, port: int | None = None) -> Iterator[str]:
    """Yield ``url``; without one, start a MariaDB with ``scripts/mariadb`` (on ``port``,
    else a free one) and stop it after.

    The throwaway server flushes its redo log about once a second, as the throwaway
    PostgreSQL runs without ``fsync``: both measure the app's work, not the disk's.
    """
    if url:
        yield url
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.stress.harness import MariaDBServer, free_port

    directory = Path(tempfile.mkdtemp(prefix="django-idempotency-bench-mariadb."))
    server = MariaDBServer(directory, port or free_port(), durable=False)
    try:
        server.start()
        yield server.url()
    finally:
        try:
            server.destroy()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def fresh_database(vendor: str, name: str, postgres_url: str, mariadb_url: str) -> str:
    """The URL of an empty database ``name`` (dropped first if it is there): a SQLite file
    in a new temporary folder, or a database on the PostgreSQL or MariaDB server."""
    if vendor == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp(prefix=f'{name}.')}/bench.sqlite3"
    if vendor == "mariadb":
        conn = mysql_connect(mariadb_url)
        try:
            cursor = conn.cursor()
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
            cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return urlunsplit(urlsplit(mariadb_url)._replace(path=f"/{name}"))
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as pg:
        pg.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        pg.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def mysql_connect(url: str) -> Any:
    """A MySQLdb connection in autocommit to the server of ``url`` (mysql://user@host:port/)."""
    import MySQLdb

    parts = urlsplit(url)
    return MySQLdb.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
    )


def add_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("TEST_POSTGRES_URL"),
        help="PostgreSQL server URL (a database of its own is created there); "
        "default TEST_POSTGRES_URL, else a throwaway server started with scripts/pg",
    )
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get("TEST_MARIADB_URL"),
        help="MariaDB server URL, mysql://user@host:port/ (a database of its own is created "
        "there); default TEST_MARIADB_URL, else a throwaway server started with scripts/mariadb",
    )
