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
import importlib.metadata
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pgserver import add_url_option, mariadb_server, postgres_server

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
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
    os.environ.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="testproject.settings",
        DEBUG="0",
        SECRET_KEY="bench-memory-not-secret-0123456789abcdefghijklmnop",
    )
    sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    from idempotency.conf import DEFAULTS, idempotency_settings

    if "MAX_RESPONSE_SIZE" in DEFAULTS:
        settings.IDEMPOTENCY = {**getattr(settings, "IDEMPOTENCY", {}), "MAX_RESPONSE_SIZE": None}
        idempotency_settings.reload()
    call_command("migrate", verbosity=0, interactive=False)
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
    import MySQLdb

    parts = urlsplit(url)
    params: dict[str, Any] = {"host": parts.hostname or "127.0.0.1", "user": parts.username}
    if parts.port:
        params["port"] = parts.port
    if parts.password:
        params["password"] = parts.password
    conn = MySQLdb.connect(**params)
    try:
        cursor = conn.cursor()
        cursor.execute("DROP DATABASE IF EXISTS bench_memory")
        cursor.execute("CREATE DATABASE bench_memory CHARACTER SET utf8mb4")
        cursor.execute("SELECT @@max_allowed_packet")
        (packet,) = cursor.fetchone()
        # Escaped, a body of random bytes grows by about 3 %; leave room for that.
        needed = 2 * mib * MIB
        if packet < needed:
            print(f"bench_memory: max_allowed_packet {packet} -> {needed}", file=sys.stderr)
            cursor.execute(f"SET GLOBAL max_allowed_packet = {needed}")
    finally:
        conn.close()
    return f"{parts.scheme}://{parts.netloc}/bench_memory"


def _run(url: str, mib: int, mode: str, key: str) -> dict[str, Any]:
    done = subprocess.run(
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
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench_memory: the {mode} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


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
        import psycopg

        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS bench_memory WITH (FORCE)")
            conn.execute("CREATE DATABASE bench_memory")
        urls = {
            "sqlite": f"sqlite:///{scratch}/memory.sqlite3",
            "postgresql": server.rsplit("/", 1)[0] + "/bench_memory",
        }
        urls["mariadb"] = _mysql_database(maria, args.mib)
        for name, url in urls.items():
            rounds: dict[str, list[dict[str, Any]]] = {"store": [], "replay": []}
            for n in range(args.rounds):
                key = f"memory-key-{n}"
                for mode in ("store", "replay"):
                    rounds[mode].append(_run(url, args.mib, mode, key))
            results[name] = {
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                "python": platform.python_version(),
                "django": importlib.metadata.version("Django"),
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
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "memory.json").write_text(json.dumps(results, indent=2) + "\n")
    worst = max(
        max(r["store_raised_peak_by_x_body"], r["replay_raised_peak_by_x_body"])
        for r in results.values()
    )
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
