"""Real parts for the stress suite: private database servers, app servers, HTTP clients.

Nothing here is mocked. :class:`Cluster` runs a PostgreSQL 15 of its own through
``scripts/pg``, and :class:`MariaDBServer` a MariaDB through ``scripts/mariadb``
(so that a test may crash either without disturbing anyone else), :class:`Server` runs the testproject under gunicorn or uvicorn in its own process
group, and :func:`send` is a plain HTTP/1.1 client on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PG_SCRIPT = ROOT / "scripts" / "pg"
MARIADB_SCRIPT = ROOT / "scripts" / "mariadb"

#: The demo user's API token, created in every database by ``setup_demo``.
TOKEN = "stress-token-0123456789abcdef"
SERVER_SETTINGS = "tests.stress.server_settings"


def knob(name: str, default: int) -> int:
    """An integer from the environment: the soak (``tox -e stress``) turns these up."""
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


# ------------------------------------------------------------------ databases


class Cluster:
    """A private PostgreSQL server on 127.0.0.1, which a test may crash and restart."""

    vendor = "PostgreSQL"

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port

    def url(self, name: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        _run(["bash", str(PG_SCRIPT), "start", str(self.directory), str(self.port)], timeout=180)

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every connection dies at once, nothing is flushed."""
        _run(["bash", str(PG_SCRIPT), "crash", str(self.directory)], timeout=60)

    def destroy(self) -> None:
        _run(["bash", str(PG_SCRIPT), "stop", str(self.directory)], timeout=120)

    def connect(self, name: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(self.url(name), autocommit=True, connect_timeout=5)

    def create_database(self, name: str, template: str | None = None) -> Database:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}')
        return Database(url=self.url(name), cluster=self, name=name)


class MariaDBServer:
    """A private MariaDB server on 127.0.0.1, which a test may SIGKILL and restart.

    Every commit is durable (``MARIADB_DURABLE``): a crash must not lose a payment
    whose answer a client already has. ``durable=False`` is for benchmarks only.
    """

    vendor = "MariaDB"

    def __init__(self, directory: Path, port: int, *, durable: bool = True) -> None:
        self.directory = directory
        self.port = port
        self.durable = durable

    def url(self, name: str = "") -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{name}"

    def _script(self, *args: str, timeout: float) -> str:
        env = {**os.environ, "MARIADB_DURABLE": "1" if self.durable else "0"}
        return _run(["bash", str(MARIADB_SCRIPT), *args], env=env, timeout=timeout)

    def start(self) -> None:
        self._script("start", str(self.directory), str(self.port), timeout=900)

    def crash(self) -> None:
        """SIGKILL: every connection dies at once; InnoDB recovers on the next start."""
        self._script("crash", str(self.directory), timeout=60)

    def destroy(self) -> None:
        self._script("stop", str(self.directory), timeout=120)

    def connect(self, name: str = "") -> Any:
        """A connection in autocommit, to database ``name`` or to none."""
        import MySQLdb

        return MySQLdb.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            db=name,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
        )

    def _client(self, program: str) -> list[str]:
        return [program, "--no-defaults", "--protocol=tcp", "-h", "127.0.0.1"]

    def create_database(
        self, name: str, template: str | None = None, *, isolation: str = ""
    ) -> Database:
        """A new database; with ``template``, a copy of that one (schema and rows)."""
        with closing(self.connect()) as conn, closing(conn.cursor()) as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        if template:
            address = [*self._client("mariadb-dump"), "-P", str(self.port), "-u", "root"]
            dump = subprocess.run(
                [*address, "--single-transaction", template],
                capture_output=True,
                timeout=120,
                check=True,
            ).stdout
            load = [*self._client("mariadb"), "-P", str(self.port), "-u", "root", name]
            subprocess.run(load, input=dump, capture_output=True, timeout=120, check=True)
        return Database(url=self.url(name), cluster=self, name=name, isolation=isolation)


#: The databases a scenario's app servers run on, as the ``store`` fixture takes them:
#: PostgreSQL, and MariaDB under Django's READ COMMITTED and the server's REPEATABLE READ.
STORES = ("postgresql", "mariadb", "mariadb-rr")


@dataclass
class Database:
    """One database the servers of a scenario share: PostgreSQL, MariaDB or a SQLite file.

    ``isolation`` (MariaDB only) is the servers' ``isolation_level`` option; empty for
    Django's default, READ COMMITTED.
    """

    url: str
    cluster: Cluster | MariaDBServer | None = None
    name: str = ""
    path: Path | None = None
    isolation: str = ""

    @property
    def label(self) -> str:
        """How the results table names this database: ``PostgreSQL``, ``MariaDB RR``..."""
        if self.cluster is None:
            return "SQLite"
        if self.isolation:
            short = "".join(word[0] for word in self.isolation.split()).upper()
            return f"{self.cluster.vendor} {short}"
        return self.cluster.vendor

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.path is not None:
            with sqlite3.connect(self.path, timeout=30) as conn:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
        assert self.cluster is not None
        with closing(self.cluster.connect(self.name)) as conn, closing(conn.cursor()) as cursor:
            cursor.execute(sql, params)
            return [tuple(row) for row in cursor.fetchall()]

    def count_by(self, table: str, column: str, prefix: str) -> Counter[str]:
        """How many rows of ``table`` hold each value of ``column`` starting with ``prefix``."""
        rows = self.query(
            f"SELECT {column}, COUNT(*) FROM {table} WHERE {column} LIKE %s GROUP BY {column}",
            (prefix + "%",),
        )
        return Counter({value: count for value, count in rows})

    def key_states(self, keys: list[str]) -> Counter[str]:
        rows = self.query(
            "SELECT k.state, COUNT(*), COUNT(k.response_status) FROM idempotency_idempotencykey k "
            "WHERE k.key LIKE %s GROUP BY k.state",
            (_shared_start(keys) + "%",),
        )
        states: Counter[str] = Counter()
        for state, count, with_response in rows:
            states[state] += count
            states["with response"] += with_response
        return states


def _shared_start(values: list[str]) -> str:
    """The longest string every value starts with."""
    if not values:
        return ""
    low, high = min(values), max(values)
    size = 0
    while size < len(low) and low[size] == high[size]:
        size += 1
    return low[:size]


def manage(database: Database, *args: str, debug: bool = False) -> str:
    env = server_env(database, {}, debug=debug)
    return _run([sys.executable, "testproject/manage.py", *args], env=env, timeout=300)


def prepare(database: Database) -> None:
    """Migrate and create the demo user with :data:`TOKEN`."""
    manage(database, "migrate", "--noinput", "-v", "0")
    manage(database, "setup_demo", "--token", TOKEN, debug=True)


def sqlite_database(directory: Path, template: Path | None, name: str) -> Database:
    path = directory / f"{name}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if template is not None:
        shutil.copyfile(template, path)
    return Database(url=f"sqlite:///{path}", path=path, name=name)


# -------------------------------------------------------------------- servers


def server_env(database: Database, idempotency: dict[str, Any], *, debug: bool) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "PYTEST_", "COV_"))
    }
    python_path = [str(ROOT), str(ROOT / "testproject")]
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(python_path),
        DJANGO_SETTINGS_MODULE=SERVER_SETTINGS,
        DATABASE_URL=database.url,
        DATABASE_ISOLATION_LEVEL=database.isolation,
        STRESS_IDEMPOTENCY=json.dumps(idempotency),
        DEBUG="1" if debug else "0",
        SECRET_KEY="stress-suite-secret-key-not-for-production-0123456789",
        ALLOWED_HOSTS="127.0.0.1",
        PYTHONUNBUFFERED="1",
    )
    return env


def gunicorn_command(app: str, port: int, workers: int) -> list[str]:
    """gunicorn on 127.0.0.1:``port`` with ``workers`` sync workers."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        # Fork workers from a loaded app: a killed worker is back within
        # milliseconds, not after re-importing Django.
        "--preload",
        "--timeout",
        "120",
        "--graceful-timeout",
        "5",
        "--backlog",
        "2048",
    ]


def child_pids(process: subprocess.Popen[bytes] | None) -> list[int]:
    """The live children of ``process`` (a server's workers)."""
    if process is None:
        return []
    pid = process.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(child) for child in children]


def stop_process_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group of ``process`` (started with ``start_new_session``),
    SIGKILL whatever is left after a grace period."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)  # workers left behind, if any
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Server:
    """The testproject under gunicorn (WSGI, sync workers) or uvicorn (ASGI)."""

    def __init__(
        self,
        database: Database,
        log_dir: Path,
        *,
        kind: str = "gunicorn",
        workers: int = 4,
        idempotency: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.database = database
        self.kind = kind
        self.workers = workers
        self.idempotency = idempotency or {}
        self.env = env or {}
        self.port = free_port()
        self.log_path = log_dir / f"{kind}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        address = ["127.0.0.1", str(self.port)]
        if self.kind == "gunicorn":
            return gunicorn_command("testproject.wsgi:application", self.port, self.workers)
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "testproject.asgi:application",
            "--host",
            address[0],
            "--port",
            address[1],
            "--workers",
            str(self.workers),
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "5",
        ]

    def start(self) -> Server:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT / "testproject",
            env={**server_env(self.database, self.idempotency, debug=False), **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start:\n{self.log_tail()}")
            reply = send(self.port, "GET", "/stress/ping/", timeout=2)
            if reply.status == 200 and len(self.worker_pids()) >= self.workers:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not answer within 60 s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        """The live worker processes (children of the master process)."""
        return child_pids(self.process)

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process_group(process)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------- client


@dataclass
class Reply:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None

    @property
    def replayed(self) -> bool:
        return self.headers.get("idempotent-replayed") == "true"

    @property
    def code(self) -> str | None:
        """The ``code`` of a problem+json answer."""
        if self.headers.get("content-type") != "application/problem+json":
            return None
        try:
            value = json.loads(self.body).get("code")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        return f"{self.status} {self.body[:300]!r}"


def send(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 60,
) -> Reply:
    """One request on a new connection; a connection error is a Reply with no status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Reply(
            status=response.status,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=data,
        )
    except (OSError, http.client.HTTPException) as exc:
        return Reply(status=None, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


@dataclass(frozen=True)
class Endpoint:
    """A protected endpoint and how to find the rows its requests create."""

    name: str
    path: str
    table: str
    column: str
    auth: bool

    def body(self, reference: str) -> bytes:
        if self.table == "shop_order":
            data: dict[str, Any] = {"item": reference, "quantity": 1, "amount": "9.99"}
        else:
            data = {"amount": "10.00", "currency": "EUR", "reference": reference}
        return json.dumps(data).encode()

    def headers(self, key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if self.auth:
            headers["Authorization"] = f"Token {TOKEN}"
        return headers


ORDERS = Endpoint("DRF orders", "/api/orders/", "shop_order", "item", auth=True)
PAYMENTS = Endpoint("payments (middleware)", "/payments/", "shop_payment", "reference", auth=False)
ASYNC_PAYMENTS = Endpoint(
    "async payments (middleware)", "/stress/async-payments/", "shop_payment", "reference", False
)


class Tally:
    """Every answer of a scenario, counted from many threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.statuses: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.unexpected: list[str] = []

    def add(self, reply: Reply) -> None:
        with self.lock:
            self.requests += 1
            self.statuses[str(reply.status) if reply.status else "no answer"] += 1
            if reply.code:
                self.codes[reply.code] += 1

    def flag(self, message: str) -> None:
        with self.lock:
            if len(self.unexpected) < 50:
                self.unexpected.append(message)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))


def backoff(attempt: int, cap: float = 0.5) -> None:
    """Sleep before a retry: exponential from 20 ms, capped, with full jitter."""
    time.sleep(random.uniform(0, min(cap, 0.02 * 2**attempt)))


def until_stored(
    port: int,
    endpoint: Endpoint,
    key: str,
    reference: str,
    tally: Tally,
    *,
    deadline: float,
    retry_on: Callable[[Reply], bool],
) -> Reply:
    """Send one logical operation until its answer is stored (2xx, first or replayed).

    ``retry_on`` says which other answers a client retries (409 locked, 503, a lost
    connection, depending on the scenario); anything else is returned as it is.
    """
    body = endpoint.body(reference)
    headers = endpoint.headers(key)
    attempt = 0
    while True:
        reply = send(port, "POST", endpoint.path, body, headers)
        tally.add(reply)
        if reply.status is not None and 200 <= reply.status < 300:
            return reply
        if not retry_on(reply):
            return reply
        if time.monotonic() > deadline:
            raise TimeoutError(f"key {key}: still {reply.describe()} at the deadline")
        backoff(attempt)
        attempt += 1


def in_threads(count: int, target: Callable[[int], None], *, timeout: float) -> None:
    """Run ``target(i)`` in ``count`` threads; re-raise the first error; bounded in time."""
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sum(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    if alive:
        raise TimeoutError(f"{alive} of {count} client threads still running after {timeout} s")


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    end: list[float] = []
    yield lambda: (end[0] if end else time.monotonic()) - start
    end.append(time.monotonic())


# -------------------------------------------------------------------- results

RESULTS: list[dict[str, Any]] = []
COLUMNS = (
    ("scenario", "scenario"),
    ("requests", "requests"),
    ("expected", "rows expected"),
    ("found", "rows found"),
    ("duplicates", "duplicates"),
    ("losses", "losses"),
    ("server_errors", "5xx"),
    ("seconds", "wall s"),
    ("notes", "notes"),
)


def record(scenario: str, **figures: Any) -> dict[str, Any]:
    """Keep one scenario's figures for the summary table (and ``STRESS_RESULTS``)."""
    row = {"scenario": scenario, **figures}
    if isinstance(row.get("seconds"), float):
        row["seconds"] = round(row["seconds"], 1)
    RESULTS.append(row)
    path = os.environ.get("STRESS_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row, default=str) + "\n")
    return row


def table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [[str(row.get(key, "")) for key, _ in COLUMNS] for row in rows]
    header = [title for _, title in COLUMNS]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out.extend(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells)
    return out


def report(
    scenario: str,
    tally: Tally,
    rows: Counter[str],
    *,
    expected: int,
    seconds: float,
    notes: str,
) -> dict[str, Any]:
    """Record a scenario's figures from its tally and the business rows per operation."""
    return record(
        scenario,
        requests=tally.requests,
        expected=expected,
        found=sum(rows.values()),
        duplicates=sum(count - 1 for count in rows.values()),
        losses=expected - len(rows),
        server_errors=tally.server_errors,
        seconds=seconds,
        notes=notes,
    )


def check_replays(
    port: int, operations: list[tuple[str, Endpoint]], finals: dict[str, Reply], tally: Tally
) -> None:
    """Send every operation once more: each must replay what its client got, byte for byte."""
    for key, endpoint in operations:
        again = send(port, "POST", endpoint.path, endpoint.body(key), endpoint.headers(key))
        if again.status != 201 or not again.replayed or again.body != finals[key].body:
            tally.flag(f"{key}: replay {again.describe()} after {finals[key].describe()}")


def assert_all_completed(database: Database, keys: list[str]) -> None:
    states = database.key_states(keys)
    assert states["completed"] == len(keys), states
    assert states["with response"] == len(keys), states
