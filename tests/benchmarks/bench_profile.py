"""Where a protected request's time goes: each statement, and the Python around it.

Not a test (pytest never collects ``tests/benchmarks``). Run it alone::

    python tests/benchmarks/bench_profile.py [--databases sqlite,postgresql,mariadb]
        [--url postgres://...] [--mariadb-url mysql://...] [--rounds 20 --per-round 100]
        [--callgrind 40] [--no-write]

The in-process setup of ``bench_inprocess.py`` (Django's test client, the testproject),
on two endpoints: the plain ``POST /payments/`` under the middleware, and the DRF
``POST /api/orders/`` (token authentication) under the ``IdempotencyMixin``. Each has
a *baseline* (no idempotency: the same view without the middleware, the same viewset
without the mixin), a *first* request (a fresh key) and a *replay* (one key sent
again and again); the plain endpoint also has the *floor* of ``bench_inprocess.py``.

Four passes per database, each in a process of its own:

1. **wall time**: ``--rounds`` shuffled rounds of ``--per-round`` requests per
   variant, nothing attached; the median per request.
2. **statements**: every ``cursor.execute`` through ``connection.execute_wrapper``,
   plus the commits, rollbacks, autocommit switches and SQLite's ``BEGIN``, which do
   not go through it. For each, how often per request, its mean time inside
   Django's ``execute`` and, of that, the time inside the driver's own ``execute``
   (the server's round trip included).
3. **Python**: a cProfile of ``--profiled`` requests per variant. Each function's
   own time goes to a category by its module (Django's cursor wrapper, parameter
   adaptation, ``timezone.now``, JSON, hashing, signals, the claim object, the
   store, the engine, the middleware, the mixin, the view...); a function of no
   category (the standard library, C functions) counts for the category of its
   callers, in proportion to the time each caller spent in it. Profiled times are
   deflated by one factor per endpoint: the baseline's wall time minus its driver
   time, over its profiled Python time. Call counts per request (``timezone.now``,
   ``json.dumps``, ...) are exact.
4. with ``--callgrind N`` (needs ``valgrind``): ``N`` requests of each variant under
   ``valgrind --tool=callgrind``, in instructions per request: deterministic, and
   independent of the machine's load, but not of the server process's work.

Writes ``results/profile.json`` and ``docs/_static/profile.rst``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import glob
import json
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    DOCS_STATIC,
    FLOOR_MIDDLEWARE,
    OURS,
    RESULTS,
    ROOT,
    add_url_option,
    database_version,
    fresh_database,
    load_average,
    machine_line,
    mariadb_server,
    postgres_server,
    run_json,
    setup_inprocess,
    test_client,
    utc_minute,
    version,
    write_json,
)

DOC = DOCS_STATIC / "profile.rst"
PG_PORT = 55439
MARIADB_PORT = 33169

PLAIN_BODY = json.dumps({"amount": "12.50", "currency": "EUR", "reference": "bench"}).encode()
DRF_BODY = json.dumps({"item": "widget", "quantity": 1, "amount": "12.50"}).encode()
TOKEN = "0123456789abcdef0123456789abcdef01234567"

#: Variant name -> (endpoint, kind).
VARIANTS = {
    "plain-baseline": ("plain", "baseline"),
    "plain-first": ("plain", "first"),
    "plain-replay": ("plain", "replay"),
    "plain-floor": ("plain", "floor"),
    "drf-baseline": ("drf", "baseline"),
    "drf-first": ("drf", "first"),
    "drf-replay": ("drf", "replay"),
}

# ------------------------------------------------------------------ categories

DRIVER = "driver and server"
CURSOR = "Django's cursor wrapper and connection"
ADAPT = "parameter adaptation (adapt_*_value)"
TRANSACTION = "transaction.atomic"
DATETIME = "timezone.now"
JSON = "JSON (json module)"
HASH = "scope and fingerprint hashing"
SIGNALS = "signals and logging"
CLAIM = "claim object, current key"
STORE = "store: statements, rows"
ENGINE = "engine: decisions, settings, replay"
MIDDLEWARE = "middleware's own code"
MIXIN = "mixin's own code"
VIEW = "the view (testproject)"
DRF = "DRF: auth, parsing, serializer, rendering"
ORM = "Django ORM"
RESPONSE = "HttpResponse and its headers"
AUTH = "request.user: auth, session"
DJANGO = "Django request handling, middleware"
CLIENT = "test client"
OTHER = "other"
RESIDUAL = "unattributed (wall time minus the rows above)"

#: In the order of the tables.
CATEGORIES = [
    DRIVER,
    CURSOR,
    ADAPT,
    TRANSACTION,
    DATETIME,
    JSON,
    HASH,
    SIGNALS,
    CLAIM,
    STORE,
    ENGINE,
    MIDDLEWARE,
    MIXIN,
    VIEW,
    DRF,
    ORM,
    AUTH,
    RESPONSE,
    DJANGO,
    CLIENT,
    OTHER,
    RESIDUAL,
]

_HASH_FUNCTIONS = {"_hash", "default_scope", "credentials_scope"}
_SIGNAL_FUNCTIONS = {"_emit", "_log", "_emit_on_commit"}
_CLAIM_FUNCTIONS = {"__init__", "activate", "deactivate"}


def category(path: str, name: str) -> str | None:
    """The category of a function's own time, or None: its callers' category."""
    f = path.replace("\\", "/")
    if f == "~":  # a C function
        if "sqlite3." in name or "_mysql" in name or "psycopg" in name:
            return DRIVER
        return None
    if "/psycopg/" in f or "/psycopg_binary/" in f or "/psycopg_c/" in f or "/MySQLdb/" in f:
        return DRIVER
    if "/django/db/backends/" in f:
        return ADAPT if f.endswith("/operations.py") else CURSOR
    if f.endswith("/django/db/utils.py"):
        return CURSOR
    if f.endswith("/django/db/transaction.py"):
        return TRANSACTION
    if f.endswith("/django/utils/timezone.py"):
        return DATETIME
    if "/json/" in f and "/site-packages/" not in f:
        return JSON
    if "/django/dispatch/" in f and name in ("connect", "disconnect"):
        return CLIENT  # the test client (re)connects its receivers on every request
    if "/django/dispatch/" in f or f.endswith("/logging/__init__.py"):
        return SIGNALS
    if "/idempotency/" in f:
        module = f.rsplit("/", 1)[-1]
        if module == "fingerprints.py" or (module == "engine.py" and name in _HASH_FUNCTIONS):
            return HASH
        if module == "engine.py" and name in _SIGNAL_FUNCTIONS:
            return SIGNALS
        if module == "context.py" or (module == "engine.py" and name in _CLAIM_FUNCTIONS):
            return CLAIM
        if module == "store.py":
            return STORE
        if module == "middleware.py":
            return MIDDLEWARE
        if module == "rest_framework.py":
            return MIXIN
        return ENGINE
    if "/testproject/shop/" in f:
        return VIEW
    if "/rest_framework/" in f:
        return DRF
    if "/django/db/models/" in f:
        return ORM
    if f.endswith(("/django/utils/asyncio.py", "/django/utils/connection.py")):
        return CURSOR  # async_unsafe around the connection's methods; connections[alias]
    if "/django/contrib/auth/" in f or "/django/contrib/sessions/" in f:
        return AUTH
    if f.endswith(("/django/utils/functional.py", "/django/utils/datastructures.py")):
        return None  # lazy objects, settings, mappings: their caller's
    if "/tests/benchmarks/" in f:
        return CLIENT  # the benchmark's own loop: keys, headers
    if f.endswith("/django/http/response.py"):
        return RESPONSE
    if "/django/test/" in f:
        return CLIENT
    if "/django/" in f:
        return DJANGO
    return None


def attribute(stats: dict[Any, Any]) -> dict[str, float]:
    """Seconds of own time per category; uncategorised functions count for their callers."""
    memo: dict[Any, dict[str, float]] = {}

    def shares(func: Any, seen: frozenset[Any]) -> dict[str, float]:
        """How the calls of ``func`` divide among categories (fractions summing to 1)."""
        if func in memo:
            return memo[func]
        own = category(func[0], func[2])
        if own is not None:
            return {own: 1.0}
        entry = stats.get(func)
        callers = entry[4] if entry else {}
        weights: dict[str, float] = defaultdict(float)
        total = 0.0
        for caller, (_cc, nc, tt, ct) in callers.items():
            if caller in seen:
                continue
            weight = ct or tt or nc * 1e-9
            total += weight
            for name, part in shares(caller, seen | {func}).items():
                weights[name] += weight * part
        result = {name: w / total for name, w in weights.items()} if total else {OTHER: 1.0}
        memo[func] = result
        return result

    seconds: dict[str, float] = defaultdict(float)
    for func, (_cc, _nc, tt, _ct, callers) in stats.items():
        if "_lsprof" in func[2] or func[0].endswith("/cProfile.py"):
            continue
        own = category(func[0], func[2])
        if own is not None:
            seconds[own] += tt
            continue
        if not callers:
            seconds[OTHER] += tt
            continue
        for caller, (_c, _n, caller_tt, _t) in callers.items():
            for name, part in shares(caller, frozenset({func})).items():
                seconds[name] += caller_tt * part
    return dict(seconds)


#: Exact calls per request of these (path suffix, function name).
COUNTED = {
    "timezone.now": ("django/utils/timezone.py", "now"),
    "adapt_datetimefield_value": ("operations.py", "adapt_datetimefield_value"),
    "json.dumps": ("json/__init__.py", "dumps"),
    "json.loads": ("json/__init__.py", "loads"),
    "sha256": ("~", "<built-in method _hashlib.openssl_sha256>"),
    "Signal.send": ("django/dispatch/dispatcher.py", "send"),
    "Signal.send_robust": ("django/dispatch/dispatcher.py", "send_robust"),
    "transaction.on_commit": ("django/db/transaction.py", "on_commit"),
    "Atomic.__enter__": ("django/db/transaction.py", "__enter__"),
    "connection.cursor()": ("django/db/backends/base/base.py", "cursor"),
    "CursorWrapper.execute": ("django/db/backends/utils.py", "execute"),
    "Claim.__init__": ("idempotency/engine.py", "__init__"),
    "Store.__init__": ("idempotency/store.py", "__init__"),
}


def counts(stats: dict[Any, Any], requests: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for label, (suffix, name) in COUNTED.items():
        calls = sum(
            entry[1]
            for func, entry in stats.items()
            if func[2] == name and (func[0].replace("\\", "/").endswith(suffix))
        )
        found[label] = round(calls / requests, 2)
    return found


def top(stats: dict[Any, Any], requests: int, n: int = 40) -> list[list[Any]]:
    """The functions of most own time: [function, category, calls and µs per request]
    (profiled µs, inflated by the profiler's cost per call)."""
    rows = sorted(stats.items(), key=lambda item: -item[1][2])[:n]
    return [
        [
            f"{Path(func[0]).name}:{func[1]}({func[2]})",
            category(func[0], func[2]) or "-",
            round(entry[1] / requests, 2),
            round(entry[2] / requests * 1e6, 1),
        ]
        for func, entry in rows
    ]


# ------------------------------------------------------------------ statements


def statement_label(sql: str) -> str:
    text = " ".join(sql.split())
    upper = text.upper()
    if upper.startswith("WITH "):
        return "WITH UPDATE key … INSERT response (complete)"
    if upper.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")):
        return upper.rsplit(" ", 1)[0]
    verb = upper.split(" ", 1)[0]
    match = re.search(r"\b(?:INTO|UPDATE|FROM)\s+[\"`]?(\w+)", text, re.IGNORECASE)
    table = match.group(1) if match else ""
    table = table.replace("idempotency_idempotency", "idempotency_")
    return f"{verb} {table}".strip()


class _TimedDriverCursor:
    """The driver's cursor, timed: ``execute`` for the statement being run, and the
    fetches for the statement last run on it (SQLite finishes an ``INSERT …
    RETURNING``, its commit included, only when its row is fetched)."""

    def __init__(self, cursor: Any, recorder: StatementRecorder) -> None:
        self._cursor = cursor
        self._recorder = recorder
        self._label = ""

    def _timed(self, column: int, method: str, *args: Any) -> Any:
        if column == 2:
            self._label = self._recorder.current
        start = time.perf_counter()
        try:
            return getattr(self._cursor, method)(*args)
        finally:
            self._recorder.data[self._label][column] += time.perf_counter() - start

    def execute(self, *args: Any) -> Any:
        return self._timed(2, "execute", *args)

    def executemany(self, *args: Any) -> Any:
        return self._timed(2, "executemany", *args)

    def fetchone(self) -> Any:
        return self._timed(3, "fetchone")

    def fetchmany(self, *args: Any) -> Any:
        return self._timed(3, "fetchmany", *args)

    def fetchall(self) -> Any:
        return self._timed(3, "fetchall")

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class StatementRecorder:
    """Every statement of the default connection: how often; the time in Django's
    ``execute``; of that, the time in the driver's; the time in the driver's fetches.
    Also the transaction calls that do not go through ``execute()``."""

    PSEUDO = {
        "_commit": "COMMIT (connection.commit)",
        "_rollback": "ROLLBACK (connection.rollback)",
        "_set_autocommit": "set autocommit (on/off)",
    }

    def __init__(self) -> None:
        #: label -> [count, seconds in Django's execute, in the driver's, in fetches]
        self.data: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        self.current = ""

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        label = self.current = statement_label(sql)
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            row = self.data[label]
            row[0] += 1
            row[1] += time.perf_counter() - start

    def attach(self, connection: Any) -> Callable[[], None]:
        from django.db.backends.utils import CursorWrapper

        patched = []
        for name, label in self.PSEUDO.items():
            method = getattr(connection, name, None)
            if method is None:
                continue

            def timed(*args: Any, _method: Any = method, _label: str = label) -> Any:
                start = time.perf_counter()
                try:
                    return _method(*args)
                finally:
                    elapsed = time.perf_counter() - start
                    row = self.data[_label]
                    row[0] += 1
                    row[1] += elapsed
                    row[2] += elapsed

            setattr(connection, name, timed)
            patched.append(name)
        connection.make_cursor = lambda cursor: CursorWrapper(
            _TimedDriverCursor(cursor, self), connection
        )
        patched.append("make_cursor")
        block = connection.execute_wrapper(self)
        block.__enter__()

        def detach() -> None:
            block.__exit__(None, None, None)
            for name in patched:
                delattr(connection, name)

        return detach

    def summary(self, requests: int) -> list[dict[str, Any]]:
        return [
            {
                "statement": label,
                "per_request": round(n / requests, 3),
                "execute_us": round(total / n * 1e6, 1),
                "driver_us": round(driver / n * 1e6, 1),
                "fetch_us": round(fetch / n * 1e6, 1),
            }
            for label, (n, total, driver, fetch) in sorted(
                self.data.items(), key=lambda i: -(i[1][1] + i[1][3])
            )
            if n
        ]


# ------------------------------------------------------------------ the requests


def _urls() -> None:
    """This module as the URLconf: the testproject's, plus the orders viewset without
    the mixin (the DRF baseline)."""
    from django.urls import include, path
    from rest_framework import viewsets
    from shop import views

    class PlainOrderViewSet(viewsets.ModelViewSet):  # type: ignore[type-arg]
        serializer_class = views.OrderViewSet.serializer_class
        authentication_classes = views.OrderViewSet.authentication_classes
        permission_classes = views.OrderViewSet.permission_classes
        parser_classes = views.OrderViewSet.parser_classes
        get_queryset = views.OrderViewSet.get_queryset
        perform_create = views.OrderViewSet.perform_create

    create = PlainOrderViewSet.as_view({"post": "create"})
    module = sys.modules[__name__]
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("bench/orders/", create, name="bench-orders"),
        path("", include("testproject.urls")),
    ]


def variants() -> dict[str, Callable[[], int]]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    settings.ROOT_URLCONF = __name__
    _urls()
    user, _ = get_user_model().objects.get_or_create(username="bench-profile")
    Token.objects.get_or_create(user=user, defaults={"key": TOKEN})
    with_ours = list(settings.MIDDLEWARE)
    without = [m for m in with_ours if m != OURS]
    floor = [*without, FLOOR_MIDDLEWARE]
    replay_keys = {"plain": str(uuid.uuid4()), "drf": str(uuid.uuid4())}

    def send(middleware: list[str], url: str, body: bytes, auth: bool, key: Any) -> Any:
        post = test_client(middleware).post
        base = {"Authorization": f"Token {TOKEN}"} if auth else {}

        def call() -> int:
            headers = {**base, "Idempotency-Key": key()} if key else base
            response = post(url, body, content_type="application/json", headers=headers)
            return int(response.status_code)

        return call

    def fresh() -> str:
        return str(uuid.uuid4())

    plain = ("/payments/", PLAIN_BODY, False)
    drf = ("/api/orders/", DRF_BODY, True)
    return {
        "plain-baseline": send(without, *plain, None),
        "plain-first": send(with_ours, *plain, fresh),
        "plain-replay": send(with_ours, *plain, lambda: replay_keys["plain"]),
        "plain-floor": send(floor, *plain, None),
        "drf-baseline": send(without, "/bench/orders/", DRF_BODY, True, None),
        "drf-first": send(with_ours, *drf, fresh),
        "drf-replay": send(with_ours, *drf, lambda: replay_keys["drf"]),
    }


def _warm(calls: dict[str, Callable[[], int]], wanted: list[str], n: int = 50) -> None:
    for name in wanted:
        for _ in range(n):
            status = calls[name]()
            assert status == 201, f"{name} answered {status}"


def _hot_probe(url: str, requests: int) -> dict[str, Any]:
    """The claim INSERT and the completion UPDATE on a copy of the key table (same
    columns, same indexes), with and without the UPDATE rewriting ``expires_at``, and
    with a lower fillfactor: how many updates are HOT, and what an UPDATE costs."""
    import psycopg
    from django.db import connections
    from django.utils import timezone

    from idempotency import store
    from idempotency.models import IdempotencyKey

    quote = connections["default"].ops.quote_name

    def c(name: str) -> str:
        return store.column(IdempotencyKey, name, quote)

    insert = store._build_sql("postgresql", quote).insert.replace(
        quote(IdempotencyKey._meta.db_table), "hot_probe"
    )
    configs = {
        "expires_at rewritten, fillfactor 100": (True, 100),
        "expires_at kept, fillfactor 100": (False, 100),
        "expires_at kept, fillfactor 90": (False, 90),
        "expires_at rewritten, fillfactor 90": (True, 90),
    }
    found: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as raw:
        for name, (rewrite, fillfactor) in configs.items():
            raw.execute("DROP TABLE IF EXISTS hot_probe")
            raw.execute(
                f"CREATE TABLE hot_probe (LIKE {quote(IdempotencyKey._meta.db_table)} "
                f"INCLUDING ALL) WITH (fillfactor = {fillfactor})"
            )
            update = (
                f"UPDATE hot_probe SET {c('state')} = 'completed', {c('lease_expires_at')} = "
                f"NULL, {c('completed_at')} = %s"
                + (f", {c('expires_at')} = %s" if rewrite else "")
                + f" WHERE {c('id')} = %s AND {c('fence')} = %s AND {c('state')} = 'running'"
            )
            cursor = psycopg.ClientCursor(raw)
            times = []
            for _ in range(requests):
                now = timezone.now()
                later = now + dt.timedelta(hours=24)
                cursor.execute(
                    insert,
                    ["user:bench", str(uuid.uuid4()), "f" * 64, "POST", "/", later, now, later],
                )
                row_id = cursor.fetchone()[0]
                start = time.perf_counter()
                # As the engine does: the expiry counted again from the completion.
                done = timezone.now()
                renewed = done + dt.timedelta(hours=24)
                cursor.execute(update, [done, renewed, row_id, 1] if rewrite else [done, row_id, 1])
                times.append(time.perf_counter() - start)
            raw.execute("SELECT pg_stat_force_next_flush()")
            raw.execute("SELECT 1")
            raw.execute("SELECT pg_stat_clear_snapshot()")
            updated, hot = raw.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relname = 'hot_probe'"
            ).fetchone()
            found[name] = {
                "updated": updated,
                "hot_updated": hot,
                "update_us": round(statistics.median(times) * 1e6, 1),
            }
            cursor.close()
        raw.execute("DROP TABLE hot_probe")
    return found


def postgres_facts(url: str, requests: int) -> dict[str, Any]:
    """PostgreSQL only: how many of the key table's updates were HOT, its indexes; and
    the store's own statements with Django's client-side binding, with server-side
    binding, and prepared (psycopg 3, ``prepare=True``), on a connection of their own."""
    import psycopg
    from django.db import connections
    from django.utils import timezone

    from idempotency import store

    conn = connections["default"]
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT 1")
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE relname = 'idempotency_idempotencykey'"
        )
        inserted, updated, hot = cursor.fetchone()
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'idempotency_idempotencykey'"
        )
        indexes = [row[0] for row in cursor.fetchall()]
    sql = store._build_sql("postgresql", conn.ops.quote_name)
    replay_key = str(uuid.uuid4())

    def params(key: str) -> list[Any]:
        now = timezone.now()
        later = now + dt.timedelta(hours=1)
        return ["user:bench", key, "f" * 64, "POST", "/prepared/", later, now, later]

    modes = {
        "client-side binding (Django's default)": (psycopg.ClientCursor, False),
        "server-side binding": (psycopg.Cursor, False),
        "server-side binding, prepared": (psycopg.Cursor, True),
    }
    timings: dict[str, dict[str, list[float]]] = {m: {"claim": [], "replay": []} for m in modes}
    # The claim as the store runs it: one call of idempotency_claim, for a new key and
    # for one that is there.
    assert sql.claim_call is not None
    with psycopg.connect(url, autocommit=True) as raw:
        raw.execute(sql.claim_call, params(replay_key))
        for _ in range(max(requests // 100, 1)):
            for mode, (cursor_class, prepare) in modes.items():
                cursor = cursor_class(raw)
                for _ in range(100):
                    start = time.perf_counter()
                    cursor.execute(sql.claim_call, params(str(uuid.uuid4())), prepare=prepare)
                    cursor.fetchone()
                    middle = time.perf_counter()
                    cursor.execute(sql.claim_call, params(replay_key), prepare=prepare)
                    cursor.fetchone()
                    end = time.perf_counter()
                    timings[mode]["claim"].append(middle - start)
                    timings[mode]["replay"].append(end - middle)
                cursor.close()
    hot_probe = _hot_probe(url, requests)
    return {
        "hot_probe": hot_probe,
        "key_table": {"inserted": inserted, "updated": updated, "hot_updated": hot},
        "key_indexes": indexes,
        "statements_us": {
            mode: {k: round(statistics.median(v) * 1e6, 1) for k, v in kinds.items()}
            for mode, kinds in timings.items()
        },
    }


def run_worker(url: str, args: argparse.Namespace) -> dict[str, Any]:
    setup_inprocess(url)
    import django
    from django.db import connections

    calls = variants()
    wanted = [name for name in VARIANTS if name in args.variants.split(",")]
    _warm(calls, wanted)
    started = time.monotonic()
    load_before = load_average()

    # 1. wall time
    timings: dict[str, list[float]] = {name: [] for name in wanted}
    order = list(wanted)
    for _ in range(args.rounds):
        random.shuffle(order)
        for name in order:
            call = calls[name]
            start = time.perf_counter()
            for _ in range(args.per_round):
                call()
            timings[name].append((time.perf_counter() - start) / args.per_round)
    wall = {name: statistics.median(values) for name, values in timings.items()}

    # 2. statements
    statements: dict[str, list[dict[str, Any]]] = {}
    for name in wanted:
        recorder = StatementRecorder()
        detach = recorder.attach(connections["default"])
        try:
            for _ in range(args.profiled):
                calls[name]()
        finally:
            detach()
        statements[name] = recorder.summary(args.profiled)

    # 3. Python
    python: dict[str, dict[str, Any]] = {}
    for name in wanted:
        profile = cProfile.Profile()
        call = calls[name]
        profile.enable()
        for _ in range(args.profiled):
            call()
        profile.disable()
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        python[name] = {
            "seconds": attribute(stats),
            "calls_per_request": counts(stats, args.profiled),
            "top": top(stats, args.profiled),
        }
    vendor, server_version = database_version()
    extra = {"postgresql": postgres_facts(url, args.profiled)} if vendor == "postgresql" else {}
    return {
        **extra,
        "date": utc_minute(),
        "database": f"{vendor} {server_version}",
        "django": django.get_version(),
        "load_before": round(load_before, 2),
        "load_after": round(load_average(), 2),
        "seconds": round(time.monotonic() - started, 1),
        "rounds": args.rounds,
        "per_round": args.per_round,
        "profiled": args.profiled,
        "wall_us": {name: round(value * 1e6, 1) for name, value in wall.items()},
        "wall_spread_us": {
            name: [round(min(v) * 1e6, 1), round(max(v) * 1e6, 1)] for name, v in timings.items()
        },
        "statements": statements,
        "python": python,
    }


def run_callgrind_worker(url: str, args: argparse.Namespace) -> None:
    """Under callgrind: warm up, then mark each variant's stretch of requests with a
    ``getppid()`` call, which ``--dump-before=getppid`` turns into a dump."""
    setup_inprocess(url)
    calls = variants()
    wanted = [name for name in VARIANTS if name in args.variants.split(",")]
    _warm(calls, wanted, 5)
    order = []
    os.getppid()  # dump: start-up and warm-up
    for name in wanted:
        for _ in range(args.callgrind):
            calls[name]()
        os.getppid()  # dump: this variant
        order.append(name)
    print(json.dumps(order))


def callgrind(url: str, args: argparse.Namespace) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="bench-profile-callgrind."))
    try:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=getppid",
            f"--callgrind-out-file={out}/callgrind.out.%p",
            sys.executable,
            __file__,
            "--callgrind-worker",
            url,
            "--callgrind",
            str(args.callgrind),
            "--variants",
            args.variants,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, check=False, timeout=3600
        )
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            raise RuntimeError("callgrind run failed")
        order = json.loads(done.stdout.strip().splitlines()[-1])
        dumps = sorted(
            glob.glob(f"{out}/callgrind.out.*.*"), key=lambda p: int(p.rsplit(".", 1)[1])
        )
        totals = []
        for dump in dumps:
            text = Path(dump).read_text(errors="replace")
            match = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
            totals.append(int(match.group(1)) if match else 0)
        # Dump 1 is start-up and warm-up; dumps 2.. are the variants, in order.
        per_variant = totals[1 : 1 + len(order)]
        return {
            name: round(total / args.callgrind)
            for name, total in zip(order, per_variant, strict=True)
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------ the report


def _driver_us(result: dict[str, Any], name: str) -> float:
    return float(
        sum(s["per_request"] * (s["driver_us"] + s["fetch_us"]) for s in result["statements"][name])
    )


def _python_us(result: dict[str, Any], name: str) -> dict[str, float]:
    """Profiled µs per request of each category but the driver's."""
    requests = result["profiled"]
    seconds = result["python"][name]["seconds"]
    return {k: v / requests * 1e6 for k, v in seconds.items() if k != DRIVER}


def deflation(result: dict[str, Any], endpoint: str) -> float:
    """What turns profiled Python µs into real ones: the baseline's wall time minus its
    driver time, over its profiled Python time. One factor per endpoint, so that the
    profiler's cost per call comes out alike for every variant."""
    base = f"{endpoint}-baseline"
    real = result["wall_us"][base] - _driver_us(result, base)
    return real / sum(_python_us(result, base).values())


def breakdown(result: dict[str, Any], name: str) -> dict[str, float]:
    """µs per request per category: the driver's as measured (pass 2), the Python
    categories' profiled µs (pass 3) deflated; what is left of the wall time (pass 1)
    is unattributed: noise between the passes, and the deflation's error."""
    factor = deflation(result, name.split("-", 1)[0])
    us = {k: v * factor for k, v in _python_us(result, name).items()}
    us[DRIVER] = _driver_us(result, name)
    us[RESIDUAL] = result["wall_us"][name] - sum(us.values())
    return us


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"Python": platform.python_version()}
    for package in ("Django", "djangorestframework", "psycopg", "mysqlclient"):
        found[package] = version(package, "not installed")
    return found


def render(results: dict[str, Any], machine: dict[str, Any]) -> str:
    lines = [
        ".. Written by tests/benchmarks/bench_profile.py; do not edit.",
        "",
        f"Measured {machine['date']} on {machine['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        + "; "
        + ", ".join(r["database"] for r in results.values())
        + f". Load average {machine['load']} on {machine['cores']} cores.",
        "",
    ]
    for result in results.values():
        lines += [
            f".. rubric:: {result['database']}",
            "",
            f"Wall time: median of {result['rounds']} shuffled rounds of "
            f"{result['per_round']} requests; statements and Python over "
            f"{result['profiled']} requests per variant (load {result['load_before']} → "
            f"{result['load_after']}).",
            "",
        ]
        for endpoint in ("plain", "drf"):
            base_name = f"{endpoint}-baseline"
            if base_name not in result["wall_us"]:
                continue
            kinds = [k for k in ("first", "replay") if f"{endpoint}-{k}" in result["wall_us"]]
            base = breakdown(result, base_name)
            base_wall = result["wall_us"][base_name]
            rows = {k: breakdown(result, f"{endpoint}-{k}") for k in kinds}
            title = "plain view, middleware" if endpoint == "plain" else "DRF viewset, mixin"
            factor = deflation(result, endpoint)
            lines += [
                f".. list-table:: {result['database']}, {title}: µs per request "
                f"(Δ: minus the baseline, and as a fraction of the baseline's wall time; "
                f"profiled Python deflated by {factor:.2f})",
                "   :header-rows: 1",
                "   :stub-columns: 1",
                "",
                "   * - category",
                "     - baseline",
            ]
            for kind in kinds:
                lines += [f"     - {kind}", f"     - Δ {kind}"]
            for cat in CATEGORIES:
                values = [base.get(cat, 0.0)] + [rows[k].get(cat, 0.0) for k in kinds]
                if max(abs(v) for v in values) < 0.5:
                    continue
                lines += [f"   * - {cat}", f"     - {base.get(cat, 0.0):.0f}"]
                for kind in kinds:
                    value = rows[kind].get(cat, 0.0)
                    delta = value - base.get(cat, 0.0)
                    lines += [
                        f"     - {value:.0f}",
                        f"     - {delta:+.0f} ({delta / base_wall:+.3f})",
                    ]
            lines += ["   * - **wall time**", f"     - **{base_wall:.0f}**"]
            for kind in kinds:
                wall = result["wall_us"][f"{endpoint}-{kind}"]
                delta = wall - base_wall
                lines += [
                    f"     - **{wall:.0f}**",
                    f"     - **{delta:+.0f} ({delta / base_wall:+.3f})**",
                ]
            if endpoint == "plain" and "plain-floor" in result["wall_us"] and "first" in kinds:
                floor = result["wall_us"]["plain-floor"]
                first = result["wall_us"]["plain-first"]
                lines += [
                    "   * - floor; first beyond it",
                    f"     - {floor:.0f}",
                    "     -",
                    f"     - {first - floor:+.0f} ({(first - floor) / base_wall:+.3f})",
                ]
                lines += ["     -", "     -"] * (len(kinds) - 1)
            if "callgrind" in result:
                cg = result["callgrind"]
                if base_name in cg:
                    lines += [
                        "   * - instructions (callgrind, M)",
                        f"     - {cg[base_name] / 1e6:.2f}",
                    ]
                    for kind in kinds:
                        value = cg.get(f"{endpoint}-{kind}", 0)
                        delta = value - cg[base_name]
                        lines += [
                            f"     - {value / 1e6:.2f}",
                            f"     - {delta / 1e6:+.2f} ({delta / cg[base_name]:+.3f})",
                        ]
            lines.append("")
        # statements
        lines += [
            f".. list-table:: {result['database']}: statements per request, mean µs in "
            "Django's execute (of which in the driver's execute), and in the driver's fetches",
            "   :header-rows: 1",
            "",
            "   * - variant",
            "     - statement",
            "     - per request",
            "     - µs in execute (driver)",
            "     - µs in fetch",
        ]
        for name, rows_ in result["statements"].items():
            if name.endswith("baseline") or name.endswith("floor"):
                continue
            for row in rows_:
                lines += [
                    f"   * - {name}",
                    f"     - ``{row['statement']}``",
                    f"     - {row['per_request']:g}",
                    f"     - {row['execute_us']:.0f} ({row['driver_us']:.0f})",
                    f"     - {row['fetch_us']:.0f}",
                ]
        lines.append("")
        lines += [
            f".. list-table:: {result['database']}: calls per request (exact)",
            "   :header-rows: 1",
            "",
            "   * - function",
        ]
        shown = [n for n in result["python"] if not n.endswith("floor")]
        lines += [f"     - {n}" for n in shown]
        for label in COUNTED:
            lines.append(f"   * - ``{label}``")
            lines += [f"     - {result['python'][n]['calls_per_request'][label]:g}" for n in shown]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_url_option(parser)
    parser.add_argument("--databases", default="sqlite,postgresql,mariadb")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--profiled", type=int, default=2000)
    parser.add_argument("--callgrind", type=int, default=0, help="requests per variant")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind-worker", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="do not write results/, docs/")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, args)))
        return 0
    if args.callgrind_worker:
        run_callgrind_worker(args.callgrind_worker, args)
        return 0

    wanted = args.databases.split(",")
    results: dict[str, Any] = {}
    loads = [load_average()]
    with (
        postgres_server(args.url if "postgresql" in wanted else "unused", PG_PORT) as server,
        mariadb_server(
            args.mariadb_url if "mariadb" in wanted else "unused", MARIADB_PORT
        ) as maria,
    ):
        for name in wanted:
            url = fresh_database(name, "bench_profile", server, maria)
            command = [sys.executable, __file__, "--worker", url, "--variants", args.variants]
            command += ["--rounds", str(args.rounds), "--per-round", str(args.per_round)]
            command += ["--profiled", str(args.profiled)]
            results[name] = run_json(command, what=f"bench_profile on {name}", timeout=3600)
            if args.callgrind:
                results[name]["callgrind"] = callgrind(url, args)
            loads.append(load_average())
            print(f"{name}: done in {results[name]['seconds']} s", file=sys.stderr)
    machine = {
        "date": utc_minute(),
        "machine": machine_line(cores=False),
        "cores": os.cpu_count(),
        "load": f"{min(loads):.1f} to {max(loads):.1f}",
        "versions": _versions(),
    }
    report = {"machine": machine, "results": results}
    print(json.dumps(report, indent=2))
    if not args.no_write:
        write_json(RESULTS / "profile.json", report)
        DOC.write_text(render(results, machine) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
