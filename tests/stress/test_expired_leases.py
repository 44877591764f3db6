"""Expired leases: a view that outlives ``LOCK_TIMEOUT``, and a retry that takes over.

Per key: request A starts a view that sleeps ``DELAY`` seconds; its lease is
``LEASE`` seconds. Request B, the same key and body, arrives after A's lease has
ended, takes the key over and runs the view too. Both finish. Exactly one of
them may commit its payment and its answer; the other rolls back and answers
with a replay or a 409, never with a second payment.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.stress.harness import (
    STORES,
    Database,
    Reply,
    Server,
    Tally,
    in_threads,
    knob,
    report,
    send,
    stopwatch,
)

KEYS = knob("STRESS_LEASE_KEYS", 12)
RUNNERS = 2  # two pairs at a time keep the four workers busy
LEASE = 1.0  # seconds
DELAY = 3.0  # the view's run time, well beyond the lease
GAP = 1.8  # B follows A after this long: after A's lease, well before A's end
PATH = "/stress/slow-payments/"


@pytest.mark.parametrize("database_kind", STORES)
def test_expired_lease_lets_exactly_one_request_commit(
    store: Callable[[str], Database], work_dir: Path, database_kind: str
) -> None:
    database = store(database_kind)
    run = uuid.uuid4().hex[:10]
    keys = [f"{run}-{i:03d}" for i in range(KEYS)]
    pending = list(keys)
    lock = threading.Lock()
    pairs: dict[str, tuple[Reply, Reply]] = {}
    tally = Tally()
    idempotency = {"LOCK_TIMEOUT": LEASE, "ATOMIC": True}

    def post(server: Server, key: str) -> Reply:
        body = json.dumps({"reference": key, "delay": DELAY}).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        reply = send(server.port, "POST", PATH, body, headers)
        tally.add(reply)
        return reply

    with Server(database, work_dir, kind="gunicorn", idempotency=idempotency) as server:

        def runner(_index: int) -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    key = pending.pop()
                first: list[Reply] = []
                a = threading.Thread(target=lambda k=key, out=first: out.append(post(server, k)))
                a.start()
                time.sleep(GAP)
                b = post(server, key)
                a.join(timeout=60)
                pairs[key] = (first[0], b)

        with stopwatch() as elapsed:
            in_threads(RUNNERS, runner, timeout=KEYS * (GAP + DELAY + 10))

        retries = {key: post(server, key) for key in keys}
        log = server.log_tail()

    rows = database.count_by("shop_payment", "reference", run)
    fences = dict(
        database.query(
            "SELECT k.key, k.fence FROM idempotency_idempotencykey k WHERE k.key LIKE %s",
            (run + "%",),
        )
    )
    winners = {"A": 0, "B": 0}
    for key, (a, b) in pairs.items():
        committed = [r for r in (a, b) if r.status == 201 and not r.replayed]
        if len(committed) != 1:
            tally.flag(
                f"{key}: {len(committed)} committed answers: {a.describe()} / {b.describe()}"
            )
            continue
        winner = committed[0]
        loser = b if winner is a else a
        winners["A" if winner is a else "B"] += 1
        lost_ok = (loser.status == 409 and loser.code == "idempotency_key_locked") or (
            loser.status == 201 and loser.replayed and loser.body == winner.body
        )
        if not lost_ok:
            tally.flag(f"{key}: the other request answered {loser.describe()}")
        retry = retries[key]
        if not (retry.status == 201 and retry.replayed and retry.body == winner.body):
            tally.flag(f"{key}: retry answered {retry.describe()}, not {winner.describe()}")

    row = report(
        f"3. expired leases, gunicorn/{database.label}",
        tally,
        rows,
        expected=KEYS,
        seconds=elapsed(),
        notes=(
            f"view {DELAY} s, lease {LEASE} s; taken over: "
            f"{sum(1 for f in fences.values() if f > 1)}; winner A/B: {winners['A']}/{winners['B']}"
        ),
    )
    assert tally.unexpected == [], log
    assert tally.server_errors == 0, (tally.statuses, log)
    assert row["found"] == KEYS
    assert row["duplicates"] == 0
    assert row["losses"] == 0
    # B really arrived after A's lease: it took the key over (fence 2), and won.
    assert sorted(fences) == sorted(keys)
    assert all(fence == 2 for fence in fences.values()), fences
    assert winners["B"] == KEYS, winners
