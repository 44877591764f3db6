"""How many bytes the store takes per key, and how many keys per second it writes.

Not a test (pytest never collects ``tests/benchmarks``). Run it with::

    python tests/benchmarks/bench_size.py                       # throwaway PostgreSQL + SQLite
    TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres python tests/benchmarks/bench_size.py
    DATABASE_URL=sqlite:////tmp/x.sqlite3 python tests/benchmarks/bench_size.py   # SQLite only
    python tests/benchmarks/bench_size.py --keys 2000 --bodies 200 --seconds 3       # a first look

The PostgreSQL server comes from ``--url``, else ``TEST_POSTGRES_URL``, else a
PostgreSQL ``DATABASE_URL``; without any, a throwaway one is started with
``scripts/pg``. A database of its own is created there (and dropped after) for each
body size. SQLite always gets a fresh file in a temporary directory.

Size: the testproject (its settings and middleware, a signed-in user, so the scope is
``user:<pk>``), with one extra view that answers ``201`` with a JSON document of a
given size (an order with lines, as an API would return), is sent ``--keys`` POSTs
through Django's test client, each with a fresh UUID4 ``Idempotency-Key``. Then the
store's table (the key row holds its stored response) is measured, with its indexes:

- PostgreSQL: after ``VACUUM ANALYZE`` (the tables as the app wrote them: every key
  was inserted and then updated once, so the space of the first row versions is free
  but still in the files), then again after ``VACUUM FULL`` (packed). Sizes from
  ``pg_relation_size``, ``pg_table_size``, ``pg_indexes_size``,
  ``pg_total_relation_size``; live tuple bytes from ``pgstattuple`` when the extension
  can be created.
- SQLite: the ``dbstat`` virtual table (pages per table and index), after a WAL
  checkpoint, then again after ``VACUUM``.

Write rate (PostgreSQL): ``--writers`` processes each claim and complete fresh keys
with the store's own statements (``Store.claim`` in autocommit, then
``Store.complete`` in a transaction, as ``ATOMIC`` does), no view, no HTTP, for
``--seconds`` seconds after a 1 s warm-up, in a database of its own. Reported: keys/s, latency per key, CPU time of the
PostgreSQL backends and of the clients per key (from ``/proc``, when the server runs
on this machine), and WAL bytes per key. With ``--durable`` (the default when the
script starts its own server) it is measured a second time with ``fsync``,
``full_page_writes`` and ``synchronous_commit`` on, set with ``ALTER SYSTEM`` and reset
afterwards: use it on a throwaway server only.

Prints a summary and writes ``results/size.json`` next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import common
from common import (
    ROOT,
    create_database,
    drop_database,
    postgres_connect,
    postgres_server,
    run_json,
    utc_iso,
    write_json,
)

RESULTS = common.RESULTS / "size.json"
#: The store's tables, read from the models once Django is set up.
KEY_TABLE = ""
WARMUP_S = 1.0
DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
WORDS = [
    "standard",
    "express",
    "parcel",
    "invoice",
    "refund",
    "warehouse",
    "berlin",
    "lyon",
    "porto",
    "oslo",
    "cotton",
    "linen",
    "wool",
    "blue",
    "green",
    "grey",
    "large",
    "small",
    "medium",
    "pack",
    "box",
    "pallet",
    "return",
    "gift",
    "card",
    "voucher",
    "coffee",
    "tea",
    "mug",
    "plate",
    "lamp",
    "chair",
    "desk",
]

#: Set in a worker process: the size of the body the view answers with.
BODY_SIZE = 200
urlpatterns: list[Any] = []


# -- the view and its documents ---------------------------------------------------------


def document(index: int, size: int) -> bytes:
    """A JSON order of exactly ``size`` bytes (when ``size`` >= 180), the same for an index.

    Text from a small vocabulary and repeated member names, so that it compresses as
    much as a real API response does, not more.
    """
    rnd = random.Random(index)
    doc: dict[str, Any] = {
        "id": f"ord_{index:010d}",
        "status": "accepted",
        "amount": f"{rnd.randint(100, 999_999) / 100:.2f}",
        "currency": "EUR",
        "customer": f"cus_{rnd.getrandbits(48):012x}",
        "created": "2026-11-29T22:40:00Z",
        "lines": [],
    }

    def encoded() -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    length = len(encoded())
    while length < size - 120:
        line = {
            "sku": f"SKU-{rnd.randint(0, 99_999):05d}",
            "name": " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 4))),
            "quantity": rnd.randint(1, 9),
            "unit_amount": f"{rnd.randint(100, 99_999) / 100:.2f}",
        }
        length += len(json.dumps(line, separators=(",", ":"))) + (1 if doc["lines"] else 0)
        doc["lines"].append(line)
    doc["note"] = ""
    room = size - len(encoded())
    note = ""
    while len(note) < room:
        note += rnd.choice(WORDS) + " "
    doc["note"] = note[: max(room, 0)]
    return encoded()


def order_view(request: Any) -> Any:
    from django.http import HttpResponse

    index = json.loads(request.body)["index"]
    return HttpResponse(document(index, BODY_SIZE), content_type="application/json", status=201)


def _urlpatterns() -> list[Any]:
    from django.urls import include, path
    from django.views.decorators.csrf import csrf_exempt

    return [
        path("bench-size/orders/", csrf_exempt(order_view)),
        path("", include("testproject.urls")),
    ]


# -- Django in a worker process --------------------------------------------------------


def setup_django(database_url: str, *, migrate: bool) -> None:
    common.setup_django(database_url, migrate=migrate)
    from django.conf import settings

    from idempotency.models import IdempotencyKey

    global KEY_TABLE
    KEY_TABLE = IdempotencyKey._meta.db_table
    urlpatterns[:] = _urlpatterns()
    sys.modules.setdefault("bench_size", sys.modules[__name__])
    settings.ROOT_URLCONF = "bench_size" if __name__ == "__main__" else __name__


def store_keys(count: int) -> dict[str, Any]:
    """``count`` first requests through the app; checks each, and a replay at the end."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.create_user("bench-size", password=uuid.uuid4().hex)
    client = Client()
    client.force_login(user)
    started = time.perf_counter()
    key = ""
    for index in range(count):
        key = str(uuid.uuid4())
        response = client.post(
            "/bench-size/orders/",
            json.dumps({"index": index}),
            content_type="application/json",
            headers={"Idempotency-Key": key},
        )
        if response.status_code != 201 or response.has_header("Idempotent-Replayed"):
            raise SystemExit(f"bench_size: request {index} answered {response.status_code}")
        if index and index % 5000 == 0:
            log(f"  {index:,} keys")
    seconds = time.perf_counter() - started
    replay = client.post(
        "/bench-size/orders/",
        json.dumps({"index": count - 1}),
        content_type="application/json",
        headers={"Idempotency-Key": key},
    )
    if replay.headers.get("Idempotent-Replayed") != "true":
        raise SystemExit("bench_size: the last key did not replay")
    return {"seconds": round(seconds, 1), "us_per_key": round(seconds / count * 1e6)}


def stored_sample() -> dict[str, Any]:
    from idempotency.models import IdempotencyKey

    key = IdempotencyKey.objects.order_by("-id").first()
    return {
        "scope": key.scope,
        "key": key.key,
        "fingerprint_chars": len(key.fingerprint),
        "path": key.path,
        "state": key.state,
        "headers": key.response_headers,
        "body_bytes": len(bytes(key.response_body)),
    }


def counts() -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), count(response_status) FROM {KEY_TABLE}")
        keys, responses = cursor.fetchone()
    return int(keys), int(responses)


# -- PostgreSQL sizes -------------------------------------------------------------------


def pg_table(cursor: Any, table: str, pgstattuple: bool) -> dict[str, Any]:
    cursor.execute(
        "SELECT pg_relation_size(c.oid), "
        "COALESCE(pg_relation_size(c.reltoastrelid), 0), "
        "COALESCE(pg_indexes_size(c.reltoastrelid), 0), "
        "pg_table_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid) "
        "FROM pg_class c WHERE c.oid = %s::regclass",
        [table],
    )
    heap, toast, toast_index, table_size, indexes, total = cursor.fetchone()
    cursor.execute(
        "SELECT i.relname, pg_relation_size(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s::regclass "
        "ORDER BY i.relname",
        [table],
    )
    result: dict[str, Any] = {
        "heap": heap,
        "toast": toast + toast_index,
        "fsm_vm": table_size - heap - toast - toast_index,
        "table_incl_toast": table_size,
        "indexes": indexes,
        "total": total,
        "index_sizes": dict(cursor.fetchall()),
    }
    if pgstattuple:
        cursor.execute(
            "SELECT tuple_count, tuple_len, dead_tuple_len, free_space, free_percent "
            "FROM pgstattuple(%s::regclass)",
            [table],
        )
        rows, tuple_len, dead, free, free_percent = cursor.fetchone()
        result["pgstattuple"] = {
            "live_tuple_bytes_per_row": round(tuple_len / rows, 1) if rows else None,
            "dead_tuple_bytes": dead,
            "free_bytes": free,
            "free_percent": free_percent,
        }
    return result


def pg_sizes(pgstattuple: bool) -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        return {
            KEY_TABLE: pg_table(cursor, KEY_TABLE, pgstattuple),
        }


def pg_columns() -> dict[str, Any]:
    """Average stored sizes of the response's columns (after compression, if any)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT avg(octet_length(response_body)), avg(pg_column_size(response_body)), "
            f"avg(pg_column_size(response_headers)), "
            f"count(*) FILTER (WHERE pg_column_size(response_body) < octet_length(response_body)) "
            f"FROM {KEY_TABLE}"
        )
        body, stored, headers, compressed = cursor.fetchone()
        cursor.execute(
            f"SELECT avg(pg_column_size(k.*)) FROM {KEY_TABLE} k",
        )
        key_row = cursor.fetchone()[0]
    return {
        "body_bytes": round(float(body), 1),
        "body_stored_bytes": round(float(stored), 1),
        "bodies_compressed": compressed,
        "headers_stored_bytes": round(float(headers), 1),
        "key_row_bytes": round(float(key_row), 1),
    }


def pg_update_stats() -> dict[str, Any]:
    """Inserts, updates and HOT updates of the key table, from a fresh connection."""
    from django.db import connection

    connection.close()  # a backend flushes its statistics when it exits
    time.sleep(1.5)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE relname = %s",
            [KEY_TABLE],
        )
        inserts, updates, hot = cursor.fetchone()
    return {"inserts": inserts, "updates": updates, "hot_updates": hot}


def pg_vacuum(full: bool) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in (KEY_TABLE,):
            cursor.execute(f"VACUUM {'FULL ' if full else ''}ANALYZE {table}")


def pg_extension() -> bool:
    from django.db import DatabaseError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    except DatabaseError as exc:
        log(f"  no pgstattuple ({str(exc).strip()}); live tuple sizes left out")
        return False
    return True


# -- SQLite sizes -----------------------------------------------------------------------


def sqlite_sizes() -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.execute("PRAGMA page_size")
        page_size = cursor.fetchone()[0]
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute("PRAGMA freelist_count")
        free = cursor.fetchone()[0]
        cursor.execute(
            "SELECT name, tbl_name, type FROM sqlite_master "
            "WHERE tbl_name = %s AND type IN ('table', 'index')",
            [KEY_TABLE],
        )
        objects = cursor.fetchall()
        tables: dict[str, Any] = {}
        for name, table, kind in objects:
            cursor.execute(
                "SELECT COALESCE(sum(pgsize), 0), COALESCE(sum(payload), 0), "
                "COALESCE(sum(unused), 0) FROM dbstat WHERE name = %s",
                [name],
            )
            size, payload, unused = cursor.fetchone()
            entry = tables.setdefault(table, {"table": 0, "indexes": 0, "index_sizes": {}})
            if kind == "table":
                entry["table"] = size
                entry["payload"] = payload
                entry["unused"] = unused
            else:
                entry["indexes"] += size
                entry["index_sizes"][name] = size
        for entry in tables.values():
            entry["total"] = entry["table"] + entry["indexes"]
    file_size = Path(connection.settings_dict["NAME"]).stat().st_size
    return {
        "page_size": page_size,
        "file_pages": pages,
        "free_pages": free,
        "file_bytes": file_size,
        **tables,
    }


def sqlite_vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM")


# -- one body size in one process ---------------------------------------------------------


def per_key(sizes: dict[str, Any], keys: int) -> dict[str, float]:
    key_total = sizes[KEY_TABLE]["total"]
    return {"keys_table": round(key_total / keys, 1), "total": round(key_total / keys, 1)}


def run_size(database_url: str, keys: int, body_size: int) -> dict[str, Any]:
    global BODY_SIZE
    BODY_SIZE = body_size
    setup_django(database_url, migrate=True)
    from django.db import connection

    log(f"{connection.vendor}, {body_size} B bodies: storing {keys:,} keys")
    load = store_keys(keys)
    stored = counts()
    if stored != (keys, keys):
        raise SystemExit(f"bench_size: expected {keys} keys and responses, found {stored}")
    result: dict[str, Any] = {
        "keys": keys,
        "tables": [KEY_TABLE],
        "load": load,
        "sample": stored_sample(),
    }
    if connection.vendor == "postgresql":
        result["key_table_writes"] = pg_update_stats()
        has_pgstattuple = pg_extension()
        pg_vacuum(full=False)
        written = pg_sizes(has_pgstattuple)
        result["columns"] = pg_columns()
        pg_vacuum(full=True)
        packed = pg_sizes(has_pgstattuple)
    else:
        written = sqlite_sizes()
        sqlite_vacuum()
        packed = sqlite_sizes()
    result["as_written"] = {"per_key_bytes": per_key(written, keys), "bytes": written}
    result["packed"] = {"per_key_bytes": per_key(packed, keys), "bytes": packed}
    result["versions"] = versions()
    return result


# -- write rate ---------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a local process, or None if it is not visible."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_writer(
    database_url: str, index: int, start_at: float, seconds: float, body: int
) -> dict[str, Any]:
    """Claim and complete fresh keys from ``start_at`` for ``seconds``; no view, no HTTP."""
    setup_django(database_url, migrate=False)
    from datetime import timedelta

    from django.db import connection, transaction
    from django.utils import timezone

    from idempotency.store import Store

    store = Store("default")
    payload = document(index, body)
    headers = [["Content-Type", "application/json"], ["X-Frame-Options", "DENY"]]
    fingerprint = "f" * 64
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]

    def one_key() -> None:
        now = timezone.now()
        key_id = store.claim(
            scope=f"bench-writer:{index}",
            key=str(uuid.uuid4()),
            fingerprint=fingerprint,
            method="POST",
            path="/bench-size/orders/",
            now=now,
            lease_until=now + timedelta(seconds=60),
            expires_at=now + timedelta(days=1),
        )
        assert isinstance(key_id, int), key_id
        with transaction.atomic():
            done = timezone.now()
            stored = store.complete(
                key_id,
                1,
                now=done,
                expires_at=done + timedelta(days=1),
                status=201,
                headers=headers,
                body=payload,
            )
        assert stored

    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    warmup = 0
    warm_until = time.perf_counter() + WARMUP_S
    while time.perf_counter() < warm_until:
        one_key()
        warmup += 1
    latencies: list[float] = []
    cpu_server = proc_cpu_seconds(backend)
    cpu_client = resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.perf_counter() + seconds
    while True:
        begin = time.perf_counter()
        if begin >= deadline:
            break
        one_key()
        latencies.append(time.perf_counter() - begin)
    end_server = proc_cpu_seconds(backend)
    end_client = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "keys": len(latencies),
        "warmup_keys": warmup,
        "latencies": latencies,
        "server_cpu_s": None
        if cpu_server is None or end_server is None
        else end_server - cpu_server,
        "client_cpu_s": (end_client.ru_utime + end_client.ru_stime)
        - (cpu_client.ru_utime + cpu_client.ru_stime),
    }


def server_settings(cursor: Any) -> dict[str, str]:
    values = {}
    for name in (*DURABLE, "wal_level", "shared_buffers"):
        cursor.execute(f"SHOW {name}")
        values[name] = cursor.fetchone()[0]
    return values


def set_durable(server_url: str, durable: bool) -> None:
    with postgres_connect(server_url) as conn:
        for name, value in DURABLE.items():
            if durable:
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            else:
                conn.execute(f"ALTER SYSTEM RESET {name}")
        conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)


def measure_writes(database_url: str, writers: int, seconds: float, body: int) -> dict[str, Any]:
    with postgres_connect(database_url) as conn:
        conn.execute("CHECKPOINT")
        settings = server_settings(conn.cursor())
        lsn_before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    start_at = time.time() + 4 + writers  # Django starts in each process first
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--writer",
                database_url,
                "--writer-index",
                str(i),
                "--writer-start",
                repr(start_at),
                "--seconds",
                str(seconds),
                "--writer-body",
                str(body),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(writers)
    ]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise SystemExit(f"bench_size: a writer failed ({proc.returncode})")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    with postgres_connect(database_url) as conn:
        wal = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", [lsn_before]
        ).fetchone()[0]
    keys = sum(o["keys"] for o in outputs)
    written = keys + sum(o["warmup_keys"] for o in outputs)
    latencies = sorted(x for o in outputs for x in o["latencies"])
    server_cpu = [o["server_cpu_s"] for o in outputs]
    return {
        "writers": writers,
        "seconds": seconds,
        "server_settings": settings,
        "keys": keys,
        "keys_per_s": round(keys / seconds),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "server_cpu_us_per_key": None
        if None in server_cpu
        else round(sum(server_cpu) / keys * 1e6),
        "client_cpu_us_per_key": round(sum(o["client_cpu_s"] for o in outputs) / keys * 1e6),
        "wal_bytes_per_key": round(float(wal) / written),
    }


# -- the parent ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    import django
    from django.db import connection

    found = {"python": platform.python_version(), "django": django.get_version()}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            import psycopg

            cursor.execute("SHOW server_version")
            found["postgresql"] = cursor.fetchone()[0].split()[0]
            found["psycopg"] = psycopg.__version__
        else:
            cursor.execute("SELECT sqlite_version()")
            found["sqlite"] = cursor.fetchone()[0]
    return found


def machine() -> dict[str, Any]:
    found = common.machine()
    return {"cpu": found["cpu"], "cores": found["cores"], "platform": found["platform"]}


def worker(url: str, *args: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", url, *args]
    return run_json(  # type: ignore[no-any-return]
        command, what=f"bench_size: the worker for {url}", capture_stderr=False
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("TEST_POSTGRES_URL"),
        help="PostgreSQL server; default TEST_POSTGRES_URL, else a PostgreSQL DATABASE_URL, "
        "else a throwaway server started with scripts/pg",
    )
    parser.add_argument(
        "--databases",
        help="postgresql,sqlite (default: both; SQLite only "
        "when DATABASE_URL is SQLite and no PostgreSQL is given)",
    )
    parser.add_argument("--keys", type=int, default=20_000, help="keys per body size (20000)")
    parser.add_argument("--bodies", default="200,2048", help="body sizes in bytes (200,2048)")
    parser.add_argument(
        "--writers",
        default="1,4",
        help="writer processes of each write-rate run (1,4; empty: none)",
    )
    parser.add_argument(
        "--seconds", type=float, default=10, help="seconds of each write-rate run (10)"
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="also measure the write rate "
        "with fsync, full_page_writes and synchronous_commit on (ALTER SYSTEM)",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="JSON file (results/size.json)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--migrate", help=argparse.SUPPRESS)
    parser.add_argument("--body", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--writer", help=argparse.SUPPRESS)
    parser.add_argument("--writer-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--writer-start", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--writer-body", type=int, default=200, help=argparse.SUPPRESS)
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL", "")
    if not args.url and database_url.startswith(("postgres://", "postgresql://")):
        args.url = database_url
    if not args.databases:
        sqlite_only = database_url.startswith("sqlite") and not args.url
        args.databases = "sqlite" if sqlite_only else "postgresql,sqlite"
    return args


def main() -> int:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_size(args.worker, args.keys, args.body)))
        return 0
    if args.migrate:
        setup_django(args.migrate, migrate=True)
        return 0
    if args.writer:
        result = run_writer(
            args.writer, args.writer_index, args.writer_start, args.seconds, args.writer_body
        )
        print(json.dumps(result))
        return 0

    wanted = args.databases.split(",")
    bodies = [int(b) for b in args.bodies.split(",")]
    started = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "size",
        "date": utc_iso(),
        "machine": machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "parameters": {
            "keys": args.keys,
            "bodies": bodies,
            "requests": "POST /bench-size/orders/ through Django's test client, testproject "
            "settings and middleware, a signed-in user, a fresh UUID4 Idempotency-Key each",
            "writers": args.writers,
            "write_seconds": args.seconds,
            "write_rate": "Store.claim (autocommit) + Store.complete in transaction.atomic() "
            "per key, fresh keys, one process and connection per writer",
        },
        "sizes": {},
    }
    own_server = args.url is None and "postgresql" in wanted
    durable = args.durable or own_server
    with postgres_server(args.url if "postgresql" in wanted else "unused") as server:
        for database in wanted:
            report["sizes"][database] = {}
            for body in bodies:
                if database == "postgresql":
                    name = f"bench_size_{body}"
                    url = create_database(server, name)
                else:
                    url = f"sqlite:///{tempfile.mkdtemp(prefix='bench-size.')}/size.sqlite3"
                try:
                    found = worker(url, "--keys", str(args.keys), "--body", str(body))
                finally:
                    if database == "postgresql":
                        drop_database(server, name)
                report["sizes"][database][str(body)] = found
                log(
                    f"{database}, {body} B: {found['as_written']['per_key_bytes']} B/key "
                    f"as written, {found['packed']['per_key_bytes']} B/key packed"
                )
        if "postgresql" in wanted and args.writers:
            report["write_rate"] = write_rates(server, args, durable)
    report["seconds"] = round(time.monotonic() - started)
    write_json(args.output, report)
    print_summary(report)
    print(f"written to {args.output}")
    return 0


def write_rates(server: str, args: argparse.Namespace, durable: bool) -> list[dict[str, Any]]:
    name = "bench_size_writes"
    body = int(args.bodies.split(",")[0])
    runs = []
    url = create_database(server, name)
    try:
        subprocess.run([sys.executable, __file__, "--migrate", url], cwd=ROOT, check=True)
        modes = [False, True] if durable else [False]
        for mode in modes:
            if mode:
                set_durable(server, True)
            try:
                for writers in (int(w) for w in args.writers.split(",")):
                    log(
                        f"write rate: {writers} writer(s), {args.seconds} s"
                        f"{', durable' if mode else ''}"
                    )
                    run = measure_writes(url, writers, args.seconds, body)
                    run["body_bytes"] = body
                    runs.append(run)
                    log(f"  {run['keys_per_s']} keys/s, p50 {run['latency_ms_p50']} ms")
            finally:
                if mode:
                    set_durable(server, False)
    finally:
        drop_database(server, name)
    return runs


def print_summary(report: dict[str, Any]) -> None:
    print()
    print(f"{'database':11} {'body B':>7} {'total B/key':>12} {'packed total':>13}")
    for database, bodies in report["sizes"].items():
        for body, found in bodies.items():
            written, packed = found["as_written"]["per_key_bytes"], found["packed"]["per_key_bytes"]
            print(f"{database:11} {body:>7} {written['total']:>12} {packed['total']:>13}")
    for run in report.get("write_rate", []):
        s = run["server_settings"]
        print(
            f"write rate, {run['writers']} writer(s), fsync={s['fsync']} "
            f"synchronous_commit={s['synchronous_commit']}: {run['keys_per_s']} keys/s, "
            f"p50 {run['latency_ms_p50']} ms, server CPU {run['server_cpu_us_per_key']} us/key, "
            f"WAL {run['wal_bytes_per_key']} B/key"
        )


if __name__ == "__main__":
    sys.exit(main())
