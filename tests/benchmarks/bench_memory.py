"""Peak memory of storing and of replaying a 20 MiB response, on SQLite, PostgreSQL and MariaDB.

Not a test (pytest never collects ``tests/benchmarks``). ``tox -e bench`` runs it; or::

    python tests/benchmarks/bench_memory.py [--url postgres://...] [--mariadb-url mysql://...]
        [--mib 20] [--rounds 3]

Without ``--url`` (or ``TEST_POSTGRES_URL``) it starts a throwaway PostgreSQL, and
without ``--mariadb-url`` (or ``TEST_MARIADB_URL``) a throwaway MariaDB. A database
``bench_memory`` is created on each, and the MariaDB server's ``max_allowed_packet`` is
raised with ``SET GLOBAL`` if it cannot carry the body (a 20 MiB body does not fit
the default 16 MiB).

Each measurement runs in a fresh process, like a worker: it serves the same response
without a key five times, so that its peak RSS (``ru_maxrss``) already holds the
unprotected request's own cost, and then sends it once with a key. In the *store*
process the key is new, so the response is stored; in the *replay* process, started
afresh after it, the same key finds the stored response and replays it. What is
reported is how much that one keyed request raised the process's peak RSS, as a
multiple of the body's size: the median over ``--rounds``. Target: at most 2x the
body, for storing and for replaying.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import sys
import tempfile
from typing import Any

from common import (
    RESULTS,
    add_url_option,
    create_database,
    machine_line,
    mariadb_server,
    mysql_connect,
    override_idempotency,
    postgres_server,
    run_json,
    run_migrations,
    setup_django,
    utc_minute,
    version,
    write_json,
)

MIB = 1024 * 1024
TARGET = 2.0

#: Set in the worker process: the body the view answers with, made once at start-up.
BLOB = b""


def big(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse(BLOB, content_type="application/octet-stream", status=201)


def _urlpatterns() -> list[Any]:
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    return [path("big/", csrf_exempt(big))]


urlpatterns: list[Any] = []


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def worker(database_url: str, mib: int, mode: str, key: str) -> dict[str, Any]:
    global BLOB
    setup_django(database_url, migrate=False)
    from django.conf import settings
    from django.test import Client

    from idempotency.conf import DEFAULTS

    if "MAX_RESPONSE_SIZE" in DEFAULTS:
        override_idempotency(MAX_RESPONSE_SIZE=None)
    run_migrations()
    urlpatterns.extend(_urlpatterns())
    settings.ROOT_URLCONF = __name__ if __name__ != "__main__" else "bench_memory"
    sys.modules.setdefault("bench_memory", sys.modules[__name__])
    # The same bytes in the store process and the replay process.
    BLOB = random.Random(mib).randbytes(mib * MIB)
    client = Client()

    def post(key: str | None) -> Any:
        headers = {"Idempotency-Key": key} if key else {}
        return client.post("/big/", b"{}", content_type="application/json", headers=headers)

    for _ in range(5):  # the unprotected request's own peak
        assert post(None).status_code == 201
    before = _peak_bytes()
    response = post(key)
    after = _peak_bytes()
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    assert response.status_code == 201, response.status_code
    assert replayed == (mode == "replay"), (mode, dict(response.headers))
    assert response.content == BLOB
    return {
        "peak_rss_unprotected_mib": round(before / MIB, 1),
        "raised_mib": round((after - before) / MIB, 1),
        "raised_x_body": round((after - before) / len(BLOB), 2),
    }


def _mysql_database(url: str, mib: int) -> str:
    """Create ``bench_memory`` on the server of ``url``; make sure it takes the body."""
    database_url = create_database(url, "bench_memory")
    conn = mysql_connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT @@max_allowed_packet")
        (packet,) = cursor.fetchone()
        # Escaped, a body of random bytes grows by about 3 %; leave room for that.
        needed = 2 * mib * MIB
        if packet < needed:
            print(f"bench_memory: max_allowed_packet {packet} -> {needed}", file=sys.stderr)
            cursor.execute(f"SET GLOBAL max_allowed_packet = {needed}")
    finally:
        conn.close()
    return database_url


def _run(url: str, mib: int, mode: str, key: str) -> dict[str, Any]:
    return run_json(  # type: ignore[no-any-return]
        [
            sys.executable,
            __file__,
            "--worker",
            url,
            "--mode",
            mode,
            "--key",
            key,
            "--mib",
            str(mib),
        ],
        what=f"bench_memory: the {mode} worker",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_url_option(parser)
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("store", "replay"), help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.mib, args.mode, args.key)))
        return 0

    scratch = tempfile.mkdtemp(prefix="bench-memory.")
    results: dict[str, Any] = {}
    with postgres_server(args.url) as server, mariadb_server(args.mariadb_url) as maria:
        urls = {
            "sqlite": f"sqlite:///{scratch}/memory.sqlite3",
            "postgresql": create_database(server, "bench_memory"),
        }
        urls["mariadb"] = _mysql_database(maria, args.mib)
        for name, url in urls.items():
            rounds: dict[str, list[dict[str, Any]]] = {"store": [], "replay": []}
            for n in range(args.rounds):
                key = f"memory-key-{n}"
                for mode in ("store", "replay"):
                    rounds[mode].append(_run(url, args.mib, mode, key))
            results[name] = {
                "date": utc_minute(),
                "machine": machine_line(),
                "python": platform.python_version(),
                "django": version("Django"),
                "body_mib": args.mib,
                "rounds": args.rounds,
                "peak_rss_unprotected_mib": statistics.median(
                    r["peak_rss_unprotected_mib"] for r in rounds["store"]
                ),
                "store_raised_peak_mib": statistics.median(
                    r["raised_mib"] for r in rounds["store"]
                ),
                "store_raised_peak_by_x_body": statistics.median(
                    r["raised_x_body"] for r in rounds["store"]
                ),
                "replay_raised_peak_mib": statistics.median(
                    r["raised_mib"] for r in rounds["replay"]
                ),
                "replay_raised_peak_by_x_body": statistics.median(
                    r["raised_x_body"] for r in rounds["replay"]
                ),
                "each_round": rounds,
            }
    print(json.dumps(results, indent=2))
    if not args.no_write:
        write_json(RESULTS / "memory.json", results)
    worst = max(
        max(r["store_raised_peak_by_x_body"], r["replay_raised_peak_by_x_body"])
        for r in results.values()
    )
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
