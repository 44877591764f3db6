"""Benchmark ``purge_idempotency_keys`` at a million rows, while requests flow.

Not a test (pytest never collects ``tests/benchmarks``). Run it with::

    scripts/bench-purge                    # starts a throwaway PostgreSQL, runs tox -e bench-purge
    scripts/bench-purge --mariadb          # the same on a throwaway MariaDB
    TEST_POSTGRES_URL=postgres://user@host:5432/postgres tox run -e bench-purge
    python tests/benchmarks/bench_purge.py --url postgres://... [--expired N] [--live N]
    python tests/benchmarks/bench_purge.py --url mysql://root@127.0.0.1:3306/ [...]

Setup, in a database of its own on the server (dropped and created again):
1,000,000 expired keys with ~1 KiB stored responses and 100,000 live keys (99% completed
with a response, 1% running with a live lease and already past their expiry, which the
purge must keep), bulk-loaded with ``INSERT ... SELECT`` from ``generate_series``
(PostgreSQL) or a ``seq_1_to_N`` table of MariaDB's Sequence engine, then
``VACUUM ANALYZE`` and ``CHECKPOINT`` (MariaDB: ``ANALYZE TABLE``) and ``sync``.

Measured: the wall time and the peak RSS (``wait4``) of ``python testproject/manage.py
purge_idempotency_keys`` run as a subprocess, and the latency of ``POST /payments/``
with a fresh ``Idempotency-Key``, sent every 50 ms to the test project served by
gunicorn on 127.0.0.1 against the same database, from before the purge starts until it
ends. Afterwards it checks that exactly the expired keys are gone.

Prints a table, writes it to ``results/purge.json`` next to this file, and exits 1
when a target is missed (60 s, 150 MiB, 250 ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import (
    ROOT,
    TESTPROJECT,
    AppServer,
    create_database,
    drop_database,
    free_port,
    gunicorn,
    testproject_env,
    utc_iso,
    with_database,
    write_json,
)

MANAGE = TESTPROJECT / "manage.py"
RESULTS = common.RESULTS / "purge.json"

TARGETS = {"wall_s": 60.0, "peak_rss_mib": 150.0, "worst_latency_ms": 250.0}
INTERVAL = 0.05  # seconds between probe requests
BASELINE_REQUESTS = 100
DB_NAME = "idempotency_bench_purge"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("TEST_POSTGRES_URL") or os.environ.get("DATABASE_URL"),
        help="a PostgreSQL (postgres://) or MariaDB (mysql://) server, any database on it; "
        "default: $TEST_POSTGRES_URL, then $DATABASE_URL",
    )
    parser.add_argument("--db-name", default=DB_NAME, help=f"database to (re)create ({DB_NAME})")
    parser.add_argument("--expired", type=int, default=1_000_000, help="expired keys to load")
    parser.add_argument("--live", type=int, default=100_000, help="live keys to load")
    parser.add_argument("--body-size", type=int, default=1024, help="bytes per stored response")
    parser.add_argument(
        "--purge-args",
        default="",
        help="extra arguments for the command, e.g. '--batch-size 5000'",
    )
    parser.add_argument("--timeout", type=float, default=600, help="give up on the purge after")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file ({RESULTS.name})")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database after")
    args = parser.parse_args()
    if not args.url or not args.url.startswith(("postgres://", "postgresql://", "mysql://")):
        parser.error("give a PostgreSQL or MariaDB server with --url or TEST_POSTGRES_URL")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.db_name):
        parser.error("--db-name: lower-case letters, digits and underscores only")
    return args


def child_env(url: str) -> dict[str, str]:
    """The environment of the command and the server: production-like settings."""
    return testproject_env(url, ALLOWED_HOSTS="127.0.0.1,localhost", PYTHONUNBUFFERED="1")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- database -------------------------------------------------------------------------


def _key_insert(expressions: dict[str, str], source: str) -> tuple[str, list[Any]]:
    """``INSERT INTO <keys> (...) SELECT ... FROM <source>``, filling unknown columns.

    Columns the benchmark does not set (added to the model later) get their
    default, or NULL, so that the loader keeps working as the model grows.
    """
    from django.db import connection

    from idempotency.models import IdempotencyKey

    meta = IdempotencyKey._meta
    quote = connection.ops.quote_name
    columns, values, params = [], [], []
    for field in meta.concrete_fields:
        if field.primary_key:
            continue
        if field.name in expressions:
            columns.append(quote(field.column))
            values.append(expressions[field.name])
        elif field.has_default():
            columns.append(quote(field.column))
            values.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
        elif not field.null:
            raise SystemExit(f"bench_purge: no value for the new column {field.name!r}")
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM {source}"
    )
    return sql, params


#: The loader's SQL per vendor: the row number ``g`` of each batch, text, time.
_SQL = {
    "postgresql": {
        "source": "generate_series(1, {n}) AS g",
        "g": "g",
        "scope": "'user:' || mod(g, 5000)",
        "fingerprint": "md5(g::text) || md5((-g)::text)",
        "text": "'{prefix}' || g",
        # now() + offset + g * span / n
        "time": "now() + interval '{offset} hours' + g * (interval '{span} hours' / {n})",
        "lease": "now() + interval '1 day'",
        "headers": '\'[["Content-Type", "application/json"]]\'::jsonb',
        "body": (
            'convert_to(rpad(\'{{"id": \' || g || \', "pad": "\', {size} - 2, md5(g::text))'
            " || '\"}}', 'UTF8')"
        ),
    },
    "mysql": {
        "source": "seq_1_to_{n} AS g",
        "g": "g.seq",
        "scope": "CONCAT('user:', MOD(g.seq, 5000))",
        "fingerprint": "CONCAT(MD5(g.seq), MD5(-g.seq))",
        "text": "CONCAT('{prefix}', g.seq)",
        # Django stores UTC in MariaDB's DATETIME columns.
        "time": (
            "UTC_TIMESTAMP(6) + INTERVAL {offset} HOUR"
            " + INTERVAL (g.seq * {span} * 3600000000 DIV {n}) MICROSECOND"
        ),
        "lease": "UTC_TIMESTAMP(6) + INTERVAL 1 DAY",
        "headers": '\'[["Content-Type", "application/json"]]\'',
        "body": (
            'CONCAT(RPAD(CONCAT(\'{{"id": \', g.seq, \', "pad": "\'), {size} - 2, MD5(g.seq)), '
            "'\"}}')"
        ),
    },
}


def load(expired: int, live: int, body_size: int) -> dict[str, Any]:
    from django.db import connection

    from idempotency.models import IdempotencyKey

    sql = _SQL[connection.vendor]
    keys = connection.ops.quote_name(IdempotencyKey._meta.db_table)
    leased = live // 100

    def span(offset: int, hours: int, n: int) -> str:
        return sql["time"].format(offset=offset, span=hours, n=n)

    def text(prefix: str) -> str:
        return sql["text"].format(prefix=prefix)

    common = {
        "scope": sql["scope"],
        "fingerprint": sql["fingerprint"],
        "method": "'POST'",
        "path": "'/payments/'",
        "fence": "1",
    }
    # ~body_size bytes of JSON-ish text per completed key, below the TOAST threshold
    # for 1 KiB, as a typical small API response is stored (in the key's row).
    stored = {
        "response_status": "201",
        "response_headers": sql["headers"],
        "response_body": sql["body"].format(size=int(body_size)),
    }
    n_live = live - leased
    batches = [
        # Expired: in the order they expired, like rows inserted over a day; the
        # newest expired an hour ago.
        (
            expired,
            {
                **common,
                **stored,
                "key": text("bench-expired-"),
                "state": "'completed'",
                "created_at": span(-39, 14, expired),
                "completed_at": span(-39, 14, expired),
                "expires_at": span(-15, 14, expired),
            },
        ),
        (
            n_live,
            {
                **common,
                **stored,
                "key": text("bench-live-"),
                "state": "'completed'",
                "created_at": span(-10, 10, n_live),
                "completed_at": span(-10, 10, n_live),
                "expires_at": span(14, 10, n_live),
            },
        ),
        # Running with a live lease, though past their expiry: the purge keeps them.
        (
            leased,
            {
                **common,
                "key": text("bench-leased-"),
                "state": "'running'",
                "lease_expires_at": sql["lease"],
                "created_at": span(-2, 0, max(leased, 1)),
                "expires_at": span(-1, 0, max(leased, 1)),
            },
        ),
    ]
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for n, expressions in batches:
            if n <= 0:
                continue
            insert, params = _key_insert(expressions, sql["source"].format(n=n))
            cursor.execute(insert, params)
    load_s = time.perf_counter() - started
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"VACUUM ANALYZE {keys}")
            cursor.execute("CHECKPOINT")
            cursor.execute(
                f"SELECT pg_total_relation_size('{IdempotencyKey._meta.db_table}'), "
                f"(SELECT avg(octet_length(response_body)) FROM {keys})"
            )
        else:
            cursor.execute(f"ANALYZE TABLE {keys}")
            cursor.fetchall()
            cursor.execute(
                "SELECT SUM(data_length + index_length), "
                f"(SELECT AVG(OCTET_LENGTH(response_body)) FROM {keys}) "
                "FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_name = %s",
                [IdempotencyKey._meta.db_table],
            )
        key_bytes, body_avg = cursor.fetchone()
    # Flush the loader's writes out of the page cache now, so that the kernel does not
    # write them back during the measurement (when the server runs on this machine).
    os.sync()
    return {
        "load_s": round(load_s, 1),
        "keys_table_mib": round(float(key_bytes) / 2**20, 1),
        "avg_body_bytes": round(float(body_avg)),
    }


def counts() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT "
            + ", ".join(
                f"SUM(CASE WHEN k.key LIKE '{prefix}%' THEN 1 ELSE 0 END)"
                for prefix in ("bench-expired-", "bench-live-", "bench-leased-", "probe-")
            )
            + ", COUNT(k.response_status) "
            "FROM idempotency_idempotencykey k"
        )
        expired, live, leased, probes, responses = (int(n or 0) for n in cursor.fetchone())
    return {
        "expired": expired,
        "live": live,
        "leased": leased,
        "probes": probes,
        "responses": responses,
    }


def versions() -> dict[str, str]:
    import django
    from django.db import connection

    if connection.vendor == "mysql":
        import MySQLdb

        with connection.cursor() as cursor:
            names = (
                "innodb_flush_log_at_trx_commit",
                "innodb_doublewrite",
                "innodb_buffer_pool_size",
                "tx_isolation",
            )
            cursor.execute("SELECT VERSION(), " + ", ".join(f"@@{name}" for name in names))
            server, *values = cursor.fetchone()
        return {
            "python": platform.python_version(),
            "django": django.__version__,
            "mysqlclient": ".".join(str(part) for part in MySQLdb.version_info[:3]),
            "database": f"MariaDB {server.split('-')[0]}",
            "database_settings": ", ".join(
                f"{name}={value}" for name, value in zip(names, values, strict=True)
            ),
        }
    import psycopg

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server = cursor.fetchone()[0]
        settings = {}
        for name in ("shared_buffers", "fsync", "synchronous_commit", "full_page_writes"):
            cursor.execute(f"SHOW {name}")
            settings[name] = cursor.fetchone()[0]
    return {
        "python": platform.python_version(),
        "django": django.__version__,
        "psycopg": psycopg.__version__,
        "database": f"PostgreSQL {server.split()[0]}",
        "database_settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
    }


def machine() -> dict[str, Any]:
    found = common.machine()
    return {
        "cpu": found["cpu"],
        "cores": found["cores"],
        "memory_gib": found["memory_gib"],
        "os": found["platform"],
    }


# -- the server and the probe ---------------------------------------------------------


def start_server(env: dict[str, str], port: int) -> tuple[AppServer, str]:
    if shutil.which("gunicorn") or _has_module("gunicorn"):
        app = "testproject.wsgi:application"
        command = gunicorn(app, port, "--workers", "2", "--log-level", "warning")
        name = "gunicorn, 2 sync workers"
    else:
        command = [sys.executable, str(MANAGE), "runserver", "--noreload", f"127.0.0.1:{port}"]
        name = "manage.py runserver --noreload"
    server = AppServer(f"bench_purge: {name}", command, port=port, cwd=TESTPROJECT, env=env)
    server.start()
    try:
        server.wait_until(server.listening, timeout=30, interval=0.2)
    except BaseException:
        server.stop()
        raise
    return server, name


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def post_payment(port: int, index: int) -> tuple[float, int]:
    """One protected request; returns (latency in ms, status)."""
    body = json.dumps({"amount": "12.50", "currency": "EUR", "reference": f"probe {index}"})
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": f"probe-{uuid.uuid4()}",
    }
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/payments/", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return (time.perf_counter() - started) * 1000, status


def probe(port: int, stop: Callable[[], bool], limit: int, first: int = 0) -> list[list[float]]:
    """POST every INTERVAL seconds until ``stop()`` or ``limit`` requests; [[ms, status]]."""
    samples: list[list[float]] = []
    next_at = time.perf_counter()
    while not stop() and len(samples) < limit:
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        latency, status = post_payment(port, first + len(samples))
        samples.append([round(latency, 2), status])
        # A fixed rate, but no burst to catch up after a slow request.
        next_at = max(next_at + INTERVAL, time.perf_counter())
    return samples


def summary(samples: list[list[float]]) -> dict[str, Any]:
    latencies = sorted(s[0] for s in samples)
    if not latencies:
        return {"requests": 0}
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return {
        "requests": len(latencies),
        "errors": sum(1 for s in samples if s[1] != 201),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(p99, 1),
        "worst_ms": round(latencies[-1], 1),
    }


# -- the purge ------------------------------------------------------------------------


def run_purge(
    env: dict[str, str], port: int, extra: list[str], timeout: float
) -> tuple[dict[str, Any], list[list[float]]]:
    command = [sys.executable, str(MANAGE), "purge_idempotency_keys", "-v", "2", *extra]
    done = threading.Event()
    result: dict[str, Any] = {}

    started = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def wait() -> None:
        assert proc.stdout is not None
        output = proc.stdout.read()
        # wait4, not Popen.wait: the rusage of this child alone, not of all children.
        _, status, usage = os.wait4(proc.pid, 0)
        result["wall_s"] = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
        result["cpu_s"] = usage.ru_utime + usage.ru_stime
        result["output"] = output
        done.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    samples = probe(port, done.is_set, limit=int(timeout / INTERVAL), first=10_000)
    if not done.wait(timeout):
        proc.kill()
        waiter.join(30)
        raise SystemExit(f"bench_purge: the purge did not finish within {timeout} s")
    result["returncode"] = proc.returncode
    return result, samples


def main() -> int:
    args = parse_args()
    url = with_database(args.url, args.db_name)
    env = child_env(url)
    report: dict[str, Any] = {
        "date": utc_iso(),
        "machine": machine(),
        "setup": {
            "expired_keys": args.expired,
            "live_keys": args.live,
            "body_bytes": args.body_size,
            "purge_command": " ".join(
                ["python testproject/manage.py purge_idempotency_keys -v 2", args.purge_args]
            ).strip(),
            "probe": f"POST /payments/ with a fresh Idempotency-Key every {INTERVAL * 1000:.0f} ms",
        },
        "targets": TARGETS,
    }

    log(f"creating database {args.db_name}")
    create_database(args.url, args.db_name)
    server: AppServer | None = None
    try:
        subprocess.run(
            [sys.executable, str(MANAGE), "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
        )
        common.setup_django(url, migrate=False)
        from django.db import connections

        report["versions"] = versions()
        log(f"loading {args.expired:,} expired and {args.live:,} live keys")
        report["setup"].update(load(args.expired, args.live, args.body_size))
        before = counts()
        log(f"loaded in {report['setup']['load_s']} s: {before}")
        connections.close_all()

        port = free_port()
        server, server_name = start_server(env, port)
        report["setup"]["server"] = server_name
        warmup = probe(port, lambda: False, limit=20)
        if any(s[1] != 201 for s in warmup):
            raise SystemExit(f"bench_purge: the probe request failed: {warmup}")
        baseline = probe(port, lambda: False, limit=BASELINE_REQUESTS, first=100)
        report["baseline"] = summary(baseline)
        log(f"baseline: {report['baseline']}")

        log("purging")
        purge, samples = run_purge(env, port, args.purge_args.split(), args.timeout)
        print(purge["output"].rstrip()[-2000:], flush=True)
        if purge["returncode"] != 0:
            raise SystemExit(f"bench_purge: the command failed ({purge['returncode']})")
        during = summary(samples)
        report["purge"] = {
            "wall_s": round(purge["wall_s"], 1),
            "cpu_s": round(purge["cpu_s"], 1),
            "peak_rss_mib": round(purge["peak_rss_mib"], 1),
            "summary": purge["output"].strip().splitlines()[-1],
        }
        report["requests_during_purge"] = during
        report["latencies_ms"] = [s[0] for s in samples]

        after = counts()
        report["check"] = {"before": before, "after": after}
        deleted = re.search(r"Deleted (\d+) expired", purge["output"])
        problems = []
        if after["expired"] != 0:
            problems.append(f"{after['expired']} expired keys left")
        if (after["live"], after["leased"]) != (before["live"], before["leased"]):
            problems.append("live keys were deleted")
        served = sum(1 for sample in warmup + baseline + samples if sample[1] == 201)
        if after["probes"] != served:
            problems.append("probe keys missing")
        if not deleted or int(deleted.group(1)) != args.expired:
            problems.append("the command reported another count")
        report["check"]["problems"] = problems
    finally:
        if server is not None:
            server.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        if not args.keep_db:
            drop_database(args.url, args.db_name)

    measured = {
        "wall_s": report["purge"]["wall_s"],
        "peak_rss_mib": report["purge"]["peak_rss_mib"],
        "worst_latency_ms": during["worst_ms"],
    }
    report["met"] = {name: measured[name] <= TARGETS[name] for name in TARGETS}
    print_table(report, measured)
    write_json(args.output, report)
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"written to {shown}")
    if problems:
        print("CHECK FAILED: " + "; ".join(problems))
        return 1
    return 0 if all(report["met"].values()) else 1


def print_table(report: dict[str, Any], measured: dict[str, float]) -> None:
    v, s = report["versions"], report["setup"]
    during, base = report["requests_during_purge"], report["baseline"]
    rows = [
        ("wall time of the command", f"{measured['wall_s']:.1f} s", "60 s", "wall_s"),
        (
            "peak RSS of the command",
            f"{measured['peak_rss_mib']:.1f} MiB",
            "150 MiB",
            "peak_rss_mib",
        ),
        (
            "slowest request during the purge",
            f"{measured['worst_latency_ms']:.1f} ms",
            "250 ms",
            "worst_latency_ms",
        ),
    ]
    print()
    print(
        f"purge_idempotency_keys: {s['expired_keys']:,} expired keys ({s['avg_body_bytes']} B "
        f"responses) + {s['live_keys']:,} live keys"
    )
    print(
        f"{v['database']} ({v['database_settings']}), Django {v['django']}, "
        f"Python {v['python']}, {report['machine']['cpu']} x{report['machine']['cores']}"
    )
    print(f"{'metric':34} {'measured':>12} {'target':>9}  met")
    for label, value, target, key in rows:
        print(
            f"{label:34} {value:>12} {'<= ' + target:>9}  {'yes' if report['met'][key] else 'NO'}"
        )
    print(
        f"requests during the purge: {during['requests']} ({during['errors']} errors), "
        f"p50 {during['p50_ms']} ms, p99 {during['p99_ms']} ms; "
        f"before it: p50 {base['p50_ms']} ms, worst {base['worst_ms']} ms"
    )
    print(f"command CPU time {report['purge']['cpu_s']} s; {report['purge']['summary']}")


if __name__ == "__main__":
    sys.exit(main())
