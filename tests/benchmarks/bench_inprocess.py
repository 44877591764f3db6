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
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from common import (
    FLOOR_MIDDLEWARE,
    OURS,
    RESULTS,
    add_url_option,
    database_version,
    fresh_database,
    machine_line,
    mariadb_server,
    postgres_server,
    run_json,
    setup_inprocess,
    test_client,
    utc_minute,
    write_json,
)

BODY = json.dumps({"amount": "12.50", "currency": "EUR", "reference": "bench"}).encode()


def variants() -> dict[str, Callable[[], int]]:
    from django.conf import settings

    with_ours = list(settings.MIDDLEWARE)
    assert OURS in with_ours
    without = [m for m in with_ours if m != OURS]
    floor = [*without, FLOOR_MIDDLEWARE]
    clients = {
        "baseline": test_client(without),
        "no-key": test_client(with_ours),
        "replay": test_client(with_ours),
        "first": test_client(with_ours),
        "floor": test_client(floor),
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
    setup_inprocess(database_url)
    import django

    started = time.monotonic()
    timings = measure(rounds, per_round)
    vendor, version = database_version()
    return {
        "date": utc_minute(),
        "machine": machine_line(),
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
            results[name] = run_json(command, what=f"bench_inprocess on {name}", env=env)
    print(json.dumps(results, indent=2))
    if not args.no_write:
        write_json(RESULTS / "inprocess.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
