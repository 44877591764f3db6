"""Peak memory of storing and replaying a 5 MiB response, on SQLite and PostgreSQL.

Not a test (pytest never collects ``tests/benchmarks``). ``tox -e bench`` runs it; or::

    python tests/benchmarks/bench_memory.py [--url postgres://...] [--mib 5]

Without ``--url`` (or ``TEST_POSTGRES_URL``) it starts a throwaway PostgreSQL.

Each measurement runs in a fresh process, like a worker: it serves the same 5 MiB
response without a key until its peak RSS (``ru_maxrss``) settles, then sends it with
a key (the response is stored), then again (the response is replayed). What it reports
is how much each of those raised the process's peak RSS, as a multiple of the body's
size. Target: storing raises it by at most 3x the body.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pgserver import add_url_option, postgres_server

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024

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


def worker(database_url: str, mib: int) -> dict[str, Any]:
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

    call_command("migrate", verbosity=0, interactive=False)
    urlpatterns.extend(_urlpatterns())
    settings.ROOT_URLCONF = __name__ if __name__ != "__main__" else "bench_memory"
    sys.modules.setdefault("bench_memory", sys.modules[__name__])
    BLOB = os.urandom(mib * MIB)
    client = Client()

    def post(key: str | None) -> Any:
        headers = {"Idempotency-Key": key} if key else {}
        return client.post("/big/", b"{}", content_type="application/json", headers=headers)

    for _ in range(5):  # the unprotected request's own peak
        assert post(None).status_code == 201
    before = _peak_bytes()
    first = post("memory-key-1")
    assert first.status_code == 201 and "Idempotent-Replayed" not in first
    stored = _peak_bytes()
    del first
    replayed = post("memory-key-1")
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.content == BLOB
    after_replay = _peak_bytes()
    size = len(BLOB)
    return {
        "body_mib": mib,
        "peak_rss_unprotected_mib": round(before / MIB, 1),
        "store_raised_peak_by_x_body": round((stored - before) / size, 2),
        "replay_raised_peak_by_x_body": round((after_replay - stored) / size, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_url_option(parser)
    parser.add_argument("--mib", type=int, default=5)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.mib)))
        return 0

    scratch = tempfile.mkdtemp(prefix="bench-memory.")
    results = {}
    with postgres_server(args.url) as server:
        import psycopg

        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS bench_memory WITH (FORCE)")
            conn.execute("CREATE DATABASE bench_memory")
        urls = {
            "sqlite": f"sqlite:///{scratch}/memory.sqlite3",
            "postgresql": server.rsplit("/", 1)[0] + "/bench_memory",
        }
        for name, url in urls.items():
            done = subprocess.run(
                [sys.executable, __file__, "--worker", url, "--mib", str(args.mib)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "memory.json").write_text(json.dumps(results, indent=2) + "\n")
    worst = max(r["store_raised_peak_by_x_body"] for r in results.values())
    return 0 if worst <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
