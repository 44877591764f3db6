"""What the benchmark scripts share: paths, machine facts, Django, servers.

- the repository's paths, and :func:`write_json` for ``results/*.json``;
- machine facts (CPU, cores, memory, platform, load average, dates, versions), which
  each script puts in its results under its own keys;
- the testproject under Django in this process (:func:`setup_django`,
  :func:`setup_inprocess`) or in a child's environment (:func:`testproject_env`), and
  the *floor* of ``bench_inprocess.py`` (:class:`FloorMiddleware`);
- database servers: the one given, or a throwaway PostgreSQL or MariaDB of its own
  (:func:`postgres_server`, :func:`mariadb_server`), and databases on them;
- app servers (:class:`AppServer`: gunicorn, in a process group of its own) and worker
  processes that answer with one line of JSON (:func:`run_json`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "tests" / "benchmarks"
RESULTS = BENCH_DIR / "results"
TESTPROJECT = ROOT / "testproject"
DOCS_STATIC = ROOT / "docs" / "_static"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.stress.harness import child_pids, free_port, stop_process_group, tail  # noqa: E402


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON in ``path``, its folder made if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- machine facts


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo``, if it says."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return match.group(1).strip() if match else None


def memory_gib() -> float | None:
    """The machine's memory from ``/proc/meminfo``, in GiB (one decimal)."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def machine() -> dict[str, Any]:
    """Platform, CPU (its model, else the architecture), cores and memory."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_model() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
    }


def machine_line(*, cores: bool = True) -> str:
    """``x86_64, 2 cores, Linux-...``: the machine in one line (cores left out on request)."""
    parts = [platform.machine(), f"{os.cpu_count()} cores", platform.platform()]
    return ", ".join(parts if cores else parts[::2])


def load_average() -> float:
    """The one-minute load average."""
    return os.getloadavg()[0]


def utc_iso() -> str:
    """Now, in UTC, to the second: ``2026-12-04T19:21:07+00:00``."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def utc_minute() -> str:
    """Now, in UTC, to the minute: ``2026-12-04 19:21 UTC``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def version(distribution: str, missing: str | None = None) -> str | None:
    """The installed version of ``distribution``, else ``missing``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return missing


# ----------------------------------------------------------------------- Django

#: The testproject's middleware under test.
OURS = "idempotency.middleware.IdempotencyMiddleware"
#: Only for the benchmarks' throwaway databases (the testproject wants one with DEBUG off).
SECRET_KEY = "bench-not-secret-0123456789abcdefghijklmnopqrstuvwxyz"


def _testproject_settings(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DEBUG": "0",
        "SECRET_KEY": SECRET_KEY,
    }


def testproject_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a child process that runs the testproject on ``database_url``
    (``manage.py``, gunicorn), with DEBUG off; ``extra`` added last."""
    paths = [str(TESTPROJECT), str(ROOT)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {
        **os.environ,
        **_testproject_settings(database_url),
        "PYTHONPATH": os.pathsep.join(paths),
        **extra,
    }


def setup_django(
    database_url: str, *, migrate: bool = True, idempotency: dict[str, Any] | None = None
) -> None:
    """The testproject in this process, on ``database_url``, with DEBUG off; its
    ``IDEMPOTENCY`` updated with ``idempotency``; then migrated, unless told not to."""
    os.environ.update(_testproject_settings(database_url))
    sys.path[:0] = [path for path in (str(ROOT), str(TESTPROJECT)) if path not in sys.path]
    import django

    django.setup()
    if idempotency:
        override_idempotency(**idempotency)
    if migrate:
        run_migrations()


def override_idempotency(**values: Any) -> None:
    """``settings.IDEMPOTENCY`` with ``values`` on top, reloaded by the app."""
    from django.conf import settings

    from idempotency.conf import idempotency_settings

    settings.IDEMPOTENCY = {**getattr(settings, "IDEMPOTENCY", {}), **values}
    idempotency_settings.reload()


def run_migrations() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def setup_inprocess(database_url: str) -> None:
    """The set-up of ``bench_inprocess.py`` and ``bench_profile.py``: the testproject,
    migrated, with the floor's table; ``PREPARED_STATEMENTS`` on when the environment
    has ``BENCH_PREPARED_STATEMENTS``."""
    prepared = {"PREPARED_STATEMENTS": True} if os.environ.get("BENCH_PREPARED_STATEMENTS") else {}
    setup_django(database_url, idempotency=prepared)
    create_floor_table()


def database_version() -> tuple[str, str]:
    """The default connection's server: ``("postgresql", "15.18")``, ``("mariadb", ...)``,
    ``("sqlite", ...)``."""
    from django.db import connection

    vendor = connection.vendor
    if vendor == "sqlite":
        return "sqlite", ".".join(map(str, connection.Database.sqlite_version_info))
    if vendor == "mysql":
        name = "mariadb" if connection.mysql_is_mariadb else "mysql"
        return name, ".".join(map(str, connection.mysql_version))
    major, minor = divmod(connection.pg_version, 10000)
    return "postgresql", f"{major}.{minor}"


def test_client(middleware: list[str]) -> Any:
    """A test client whose handler has loaded ``middleware`` (loaded once, on first use)."""
    from django.test import Client, override_settings

    client = Client()
    with override_settings(MIDDLEWARE=middleware):
        client.handler.load_middleware()
    return client


# ------------------------------------------------------------------------ the floor

#: The dotted path of :class:`FloorMiddleware`, for ``MIDDLEWARE``.
FLOOR_MIDDLEWARE = f"{__name__}.FloorMiddleware"
#: What the floor stores as the response's headers: a constant, not encoded per request.
FLOOR_HEADERS = json.dumps([["Content-Type", "application/json"]])
FLOOR_TTL = dt.timedelta(days=1)


def create_floor_table() -> None:
    """The floor's table (dropped first if it is there): what the floor's definition
    names, a primary key, a unique (scope, key) index and an expiry index; the
    response's status, headers and body."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_floor")
        serial, stamp, blob = {
            "postgresql": ("BIGSERIAL", "TIMESTAMP WITH TIME ZONE", "BYTEA"),
            "mysql": ("BIGINT AUTO_INCREMENT", "DATETIME(6)", "LONGBLOB"),
        }.get(connection.vendor, ("INTEGER", "DATETIME", "BLOB"))
        key = connection.ops.quote_name("key")
        cursor.execute(
            f"CREATE TABLE bench_floor (id {serial} PRIMARY KEY, scope VARCHAR(255), "
            f"{key} VARCHAR(255), state VARCHAR(16), expires_at {stamp}, status INTEGER, "
            f"headers TEXT, body {blob}, UNIQUE (scope, {key}))"
        )
        cursor.execute("CREATE INDEX bench_floor_expires ON bench_floor (expires_at)")


class FloorMiddleware:
    """The physical floor: claim INSERT (autocommit); view + UPDATE storing its response
    in one transaction; COMMIT. Nothing else: no parsing, hashing or lookup."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        from django.db import connection, transaction
        from django.utils import timezone

        key = connection.ops.quote_name("key")
        expires = connection.ops.adapt_datetimefield_value(timezone.now() + FLOOR_TTL)
        insert = (
            f"INSERT INTO bench_floor (scope, {key}, state, expires_at) "
            "VALUES ('anonymous', %s, 'running', %s)"
        )
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"{insert} RETURNING id", [uuid.uuid4().hex, expires])
                row_id = cursor.fetchone()[0]
            else:
                cursor.execute(insert, [uuid.uuid4().hex, expires])
                row_id = cursor.lastrowid
        with transaction.atomic():
            response = self.get_response(request)
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE bench_floor SET state = 'completed', status = %s, headers = %s, "
                    "body = %s WHERE id = %s",
                    [response.status_code, FLOOR_HEADERS, response.content, row_id],
                )
        return response


# ------------------------------------------------------------------ database servers


@contextmanager
def postgres_server(url: str | None, port: int | None = None) -> Iterator[str]:
    """Yield ``url``; without one, start a PostgreSQL 15 with ``scripts/pg`` (on ``port``,
    else a free one) and stop it after."""
    if url:
        yield url
        return
    from tests.stress.harness import Cluster

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
    from tests.stress.harness import MariaDBServer

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


def is_mariadb(url: str) -> bool:
    return url.startswith("mysql://")


def with_database(url: str, name: str) -> str:
    """``url`` with the database ``name``."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


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


def postgres_connect(url: str) -> Any:
    """A psycopg connection in autocommit to ``url``."""
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def drop_database(server_url: str, name: str) -> None:
    """Drop the database ``name`` on the PostgreSQL or MariaDB server of ``server_url``,
    if it is there (PostgreSQL: with its connections)."""
    if is_mariadb(server_url):
        conn = mysql_connect(server_url)
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()
        return
    with postgres_connect(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    """An empty database ``name`` (dropped first if it is there) on the PostgreSQL or
    MariaDB server of ``server_url`` (PostgreSQL: a copy of ``template``, if given); its
    URL."""
    drop_database(server_url, name)
    if is_mariadb(server_url):
        conn = mysql_connect(server_url)
        try:
            conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
    else:
        with postgres_connect(server_url) as conn:
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    return with_database(server_url, name)


def fresh_database(vendor: str, name: str, postgres_url: str, mariadb_url: str) -> str:
    """The URL of an empty database ``name`` (dropped first if it is there): a SQLite file
    in a new temporary folder, or a database on the PostgreSQL or MariaDB server."""
    if vendor == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp(prefix=f'{name}.')}/bench.sqlite3"
    return create_database(mariadb_url if vendor == "mariadb" else postgres_url, name)


# ----------------------------------------------------------- processes, app servers


def run_json(
    command: list[str],
    *,
    what: str,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    capture_stderr: bool = True,
) -> Any:
    """Run ``command`` from the repository's root; the JSON of its last line of output.

    Its standard error is shown if it fails (and, with ``capture_stderr=False``, as it
    goes)."""
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr else None,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        shown = f":\n{done.stderr}" if done.stderr else ""
        raise SystemExit(f"{what} failed ({done.returncode}){shown}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gunicorn(app: str, port: int, *options: str) -> list[str]:
    """gunicorn serving ``app`` on 127.0.0.1:``port``, with ``options``."""
    return [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", *options]


def peak_rss_kib(pid: int) -> int | None:
    """The peak resident set size (``VmHWM``) of a live process, in KiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


class AppServer:
    """An app server on 127.0.0.1:``port`` in a process group of its own.

    Its output goes to ``log`` (appended), or nowhere with ``quiet``, else to this
    process's."""

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        port: int,
        cwd: Path,
        env: dict[str, str],
        log: Path | None = None,
        quiet: bool = False,
    ) -> None:
        self.name = name
        self.command = command
        self.port = port
        self.cwd = cwd
        self.env = env
        self.log_path = log
        self.quiet = quiet
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        output: Any = subprocess.DEVNULL if self.quiet else None
        if self.log_path is not None:
            output = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                start_new_session=True,
            )
        finally:
            if self.log_path is not None:
                output.close()

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, interval: float) -> None:
        """Poll ``ready()`` every ``interval`` seconds; exit if the server does, or if it
        is not ready within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise SystemExit(f"{self.name} exited ({code}):\n{self.log_tail()}")
            if ready():
                return
            time.sleep(interval)
        raise SystemExit(f"{self.name} not ready within {timeout:g} s:\n{self.log_tail()}")

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        return child_pids(self.process)

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process_group(process)

    def log_tail(self, lines: int = 30) -> str:
        return "(no log)" if self.log_path is None else tail(self.log_path, lines)

    def __enter__(self) -> AppServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
