"""In-process cost of the app: Django's test client, no server, SQLite, PostgreSQL, MariaDB.

Not a test (pytest never collects ``tests/benchmarks``). Run it with ``tox -e bench``
(which also runs the HTTP benchmark), or alone::

    python tests/benchmarks/bench_inprocess.py [--url postgres://...]
        [--mariadb-url mysql://...] [--databases sqlite,postgresql,mariadb] [--rounds N]
        [--prepared-statements]

The endpoint is the testproject's ``POST /payments/`` (parse and validate a JSON body,
insert one row). Variants, timed in many short rounds, in a shuffled order each round,
so that machine noise hits them alike:

- ``baseline``: the view without this app's middleware;
- ``no-key``: with the middleware, no ``Idempotency-Key``;
- ``replay``: one key sent again and again;
- ``first``: a fresh key per request (``ATOMIC``, the default);
- ``floor``: the view plus the fewest statements SPEC section 6 needs, in raw SQL: a
  claim INSERT in autocommit into a table with a primary key, a unique (scope, key)
  index and an expiry index, then the view and one UPDATE storing its response's
  status, headers and body in a transaction, and its COMMIT.

Targets (ratios within one run): ``no-key`` keeps >= 98% of the baseline's throughput;
``replay`` reaches >= 100%; ``first`` costs at most ``floor`` + 15% of ``baseline``.
Each database is measured in a process of its own. Prints the figures and writes
``results/inprocess.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgserver import add_url_option, fresh_database, mariadb_server, postgres_server

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
BODY = json.dumps({"amount": "12.50", "currency": "EUR", "reference": "bench"}).encode()
OURS = "idempotency.middleware.IdempotencyMiddleware"
#: What the floor stores as the response's headers: a constant, not encoded per request.
HEADERS = json.dumps([["Content-Type", "application/json"]])
TTL = dt.timedelta(days=1)


def _setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "bench-inprocess-not-secret-0123456789abcdefghij")
    sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
    import django

    django.setup()
    from django.conf import settings

    settings.LOGGING_CONFIG = None
    if os.environ.get("BENCH_PREPARED_STATEMENTS"):
        settings.IDEMPOTENCY = {**settings.IDEMPOTENCY, "PREPARED_STATEMENTS": True}
        from idempotency.conf import idempotency_settings

        idempotency_settings.reload()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_floor")
        serial, stamp, blob = {
            "postgresql": ("BIGSERIAL", "TIMESTAMP WITH TIME ZONE", "BYTEA"),
            "mysql": ("BIGINT AUTO_INCREMENT", "DATETIME(6)", "LONGBLOB"),
        }.get(connection.vendor, ("INTEGER", "DATETIME", "BLOB"))
        key = connection.ops.quote_name("key")
        # What the floor's definition names: a primary key, a unique (scope, key) index
        # and an expiry index; the response's status, headers and body.
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
        expires = connection.ops.adapt_datetimefield_value(timezone.now() + TTL)
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
                    [response.status_code, HEADERS, response.content, row_id],
                )
        return response


def _client(middleware: list[str]) -> Any:
    """A test client whose handler has loaded ``middleware`` (loaded once, on first use)."""
    from django.test import Client, override_settings

    client = Client()
    with override_settings(MIDDLEWARE=middleware):
        client.handler.load_middleware()
    return client


def variants() -> dict[str, Callable[[], int]]:
    from django.conf import settings

    with_ours = list(settings.MIDDLEWARE)
    assert OURS in with_ours
    without = [m for m in with_ours if m != OURS]
    floor = [*without, f"{__name__}.FloorMiddleware"]
    clients = {
        "baseline": _client(without),
        "no-key": _client(with_ours),
        "replay": _client(with_ours),
        "first": _client(with_ours),
        "floor": _client(floor),
    }
    replay_key = str(uuid.uuid4())

    def send(name: str, key: Callable[[], str] | None) -> Callable[[], int]:
        post = clients[name].post

        def call() -> int:
            headers = {"Idempotency-Key": key()} if key else {}
            response = post("/payments/", BODY, content_type="application/json", headers=headers)
            return int(response.status_code)

        return call

    return {
        "baseline": send("baseline", None),
        "no-key": send("no-key", None),
        "replay": send("replay", lambda: replay_key),
        "first": send("first", lambda: str(uuid.uuid4())),
        "floor": send("floor", None),
    }


def measure(rounds: int, per_round: int) -> dict[str, list[float]]:
    calls = variants()
    for name, call in calls.items():  # warm up; and every variant must answer 201
        for _ in range(20):
            status = call()
            assert status == 201, f"{name} answered {status}"
    timings: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            call = calls[name]
            start = time.perf_counter()
            for _ in range(per_round):
                call()
            timings[name].append((time.perf_counter() - start) / per_round)
    return timings


def summarise(timings: dict[str, list[float]]) -> dict[str, Any]:
    median = {name: statistics.median(values) for name, values in timings.items()}
    base = median["baseline"]
    return {
        "per_request_us": {name: round(value * 1e6, 1) for name, value in median.items()},
        "throughput_vs_baseline": {name: round(base / value, 3) for name, value in median.items()},
        "first_cost_beyond_floor_vs_baseline": round((median["first"] - median["floor"]) / base, 3),
        "floor_over_baseline": round((median["floor"] - base) / base, 3),
    }


def run_worker(database_url: str, rounds: int, per_round: int) -> dict[str, Any]:
    _setup(database_url)
    import django
    from django.db import connection

    started = time.monotonic()
    timings = measure(rounds, per_round)
    vendor = connection.vendor
    if vendor == "sqlite":
        version = ".".join(map(str, connection.Database.sqlite_version_info))
    elif vendor == "mysql":
        vendor = "mariadb" if connection.mysql_is_mariadb else "mysql"
        version = ".".join(map(str, connection.mysql_version))
    else:
        major, minor = divmod(connection.pg_version, 10000)
        version = f"{major}.{minor}"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "django": django.get_version(),
        "database": f"{vendor} {version}",
        "rounds": rounds,
        "requests_per_round": per_round,
        "seconds": round(time.monotonic() - started, 1),
        **summarise(timings),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_url_option(parser)
    parser.add_argument("--databases", default="sqlite,postgresql,mariadb")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="do not write results/")
    parser.add_argument(
        "--prepared-statements",
        action="store_true",
        help="run with IDEMPOTENCY['PREPARED_STATEMENTS'] = True",
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.rounds, args.per_round)))
        return 0

    wanted = args.databases.split(",")
    results: dict[str, Any] = {}
    with (
        postgres_server(args.url if "postgresql" in wanted else "unused") as server,
        mariadb_server(args.mariadb_url if "mariadb" in wanted else "unused") as maria,
    ):
        for name in wanted:
            url = fresh_database(name, "bench_inprocess", server, maria)
            command = [sys.executable, __file__, "--worker", url]
            command += ["--rounds", str(args.rounds), "--per-round", str(args.per_round)]
            env = dict(os.environ)
            if args.prepared_statements:
                env["BENCH_PREPARED_STATEMENTS"] = "1"
            done = subprocess.run(
                command, capture_output=True, text=True, cwd=ROOT, check=False, env=env
            )
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "inprocess.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
