"""Concurrent duplicates: many clients send the same key and body at the same moment.

Each key is sent by ``STRESS_CLIENTS`` clients at once (a barrier releases them
together), ``STRESS_GROUP`` keys at a time. A client that gets 409 locked retries
with backoff until it gets the stored answer. The view must run once per key:
exactly one business row per key, one first answer, and byte-identical replays.

- PostgreSQL, and MariaDB under READ COMMITTED and under REPEATABLE READ, under
  gunicorn (4 sync workers): the DRF orders endpoint and the payments view behind
  the middleware; then again with ``CONCURRENT_WAIT``, where duplicates wait for
  the first answer instead of getting 409.
- The same under uvicorn (ASGI), with an async view.
- SQLite, the embedded default, under gunicorn: several processes write one file.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.stress.harness import (
    ASYNC_PAYMENTS,
    ORDERS,
    PAYMENTS,
    Database,
    Endpoint,
    Reply,
    Server,
    Tally,
    assert_all_completed,
    backoff,
    in_threads,
    knob,
    report,
    send,
    stopwatch,
)

KEYS = knob("STRESS_KEYS", 200)
CLIENTS = knob("STRESS_CLIENTS", 16)
GROUP = knob("STRESS_GROUP", 4)
SQLITE_KEYS = knob("STRESS_SQLITE_KEYS", 50)
SQLITE_THREADS = knob("STRESS_SQLITE_THREADS", 8)
TIME_LIMIT = knob("STRESS_TIME_LIMIT", 600)  # seconds, per run

WAIT = {"CONCURRENT_WAIT": 15}


def hammer(
    server: Server,
    endpoint: Endpoint,
    database: Database,
    *,
    scenario: str,
    keys: int,
    clients: int,
    group: int,
) -> tuple[dict[str, Any], Tally]:
    """Send every key from ``clients`` clients at once; check and record the outcome."""
    run = uuid.uuid4().hex[:10]
    names = [f"{run}-{i:05d}" for i in range(keys)]
    answers: dict[str, list[Reply]] = {name: [] for name in names}
    tally = Tally()
    threads = group * clients
    rounds = -(-keys // group)
    barrier = threading.Barrier(threads)
    deadline = time.monotonic() + TIME_LIMIT

    def client(index: int) -> None:
        slot = index // clients
        for round_ in range(rounds):
            barrier.wait(timeout=TIME_LIMIT)
            position = round_ * group + slot
            if position >= keys:
                continue
            key = names[position]
            body, headers = endpoint.body(key), endpoint.headers(key)
            attempt = 0
            while True:
                reply = send(server.port, "POST", endpoint.path, body, headers)
                tally.add(reply)
                if reply.status != 409 or reply.code != "idempotency_key_locked":
                    break
                if "retry-after" not in reply.headers:
                    tally.flag(f"{key}: 409 locked without Retry-After")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{key} still locked at the deadline")
                backoff(attempt)
                attempt += 1
            answers[key].append(reply)

    with stopwatch() as elapsed:
        in_threads(threads, client, timeout=TIME_LIMIT + 60)

    first_answers = 0
    for key, replies in answers.items():
        assert len(replies) == clients, key
        originals = [reply for reply in replies if not reply.replayed]
        first_answers += len(originals)
        if len(originals) != 1:
            tally.flag(f"{key}: {len(originals)} answers were not replays")
        reference = originals[0] if originals else replies[0]
        for reply in replies:
            if reply.status != 201:
                tally.flag(f"{key}: {reply.describe()}")
            elif reply.body != reference.body or reply.status != reference.status:
                tally.flag(f"{key}: replay differs: {reply.body!r} != {reference.body!r}")
            elif b"database is locked" in reply.body:
                tally.flag(f"{key}: {reply.describe()}")

    rows = database.count_by(endpoint.table, endpoint.column, run)
    row = report(
        scenario,
        tally,
        rows,
        expected=keys,
        seconds=elapsed(),
        notes=(
            f"{keys} keys x {clients} clients; 409 locked: "
            f"{tally.codes['idempotency_key_locked']}; first answers: {first_answers}"
        ),
    )
    assert tally.unexpected == [], server.log_tail()
    assert tally.server_errors == 0, (tally.statuses, server.log_tail())
    assert tally.statuses["no answer"] == 0, tally.statuses
    assert set(tally.codes) <= {"idempotency_key_locked"}, tally.codes
    assert row["found"] == keys
    assert row["duplicates"] == 0
    assert row["losses"] == 0
    assert first_answers == keys
    assert_all_completed(database, names)
    return row, tally


ENDPOINTS = [pytest.param(ORDERS, id="drf-orders"), pytest.param(PAYMENTS, id="payments")]
SERVED = [
    # Scenario 1: WSGI, on PostgreSQL and on MariaDB (READ COMMITTED, REPEATABLE READ).
    *(
        pytest.param("gunicorn", endpoint, kind, id=f"gunicorn-{kind}-{name}")
        for kind in ("postgresql", "mariadb", "mariadb-rr")
        for endpoint, name in ((ORDERS, "drf-orders"), (PAYMENTS, "payments"))
    ),
    # Scenario 6: ASGI, with an async view.
    pytest.param("uvicorn", ORDERS, "postgresql", id="uvicorn-postgresql-drf-orders"),
    pytest.param("uvicorn", ASYNC_PAYMENTS, "postgresql", id="uvicorn-postgresql-async-payments"),
]
WAITS = [pytest.param({}, id="409"), pytest.param(WAIT, id="concurrent-wait")]


@pytest.mark.parametrize("idempotency", WAITS)
@pytest.mark.parametrize(("kind", "endpoint", "database_kind"), SERVED)
def test_concurrent_duplicates_run_the_view_once(
    store: Callable[[str], Database],
    work_dir: Path,
    kind: str,
    endpoint: Endpoint,
    database_kind: str,
    idempotency: dict[str, Any],
) -> None:
    database = store(database_kind)
    number = 1 if kind == "gunicorn" else 6
    wait = ", CONCURRENT_WAIT" if idempotency else ""
    with Server(database, work_dir, kind=kind, idempotency=idempotency) as server:
        _row, tally = hammer(
            server,
            endpoint,
            database,
            scenario=f"{number}. duplicates, {kind}/{database.label}, {endpoint.name}{wait}",
            keys=KEYS,
            clients=CLIENTS,
            group=GROUP,
        )
    if idempotency:
        # Waiting duplicates get the stored answer, never a 409.
        assert tally.statuses["409"] == 0, tally.statuses
    else:
        assert tally.statuses["409"] > 0, "no duplicate ever overlapped the first request"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_sqlite_under_concurrent_writers(
    sqlite_db: Database, work_dir: Path, endpoint: Endpoint
) -> None:
    """Four worker processes and SQLITE_THREADS clients on one SQLite file."""
    with Server(sqlite_db, work_dir, kind="gunicorn") as server:
        hammer(
            server,
            endpoint,
            sqlite_db,
            scenario=f"7. duplicates, gunicorn/SQLite, {endpoint.name}",
            keys=SQLITE_KEYS,
            clients=SQLITE_THREADS,
            group=1,
        )


def test_send_reports_a_refused_connection() -> None:
    """The client the scenarios count with tells a lost connection from an answer."""
    from tests.stress.harness import free_port

    reply = send(free_port(), "POST", "/payments/", b"{}", timeout=2)
    assert reply.status is None
    assert reply.error and "Connection" in reply.error
