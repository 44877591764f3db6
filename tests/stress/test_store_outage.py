"""Store outage: PostgreSQL stops dead mid-run (``pg_ctl stop -m immediate``), then returns.

``STRESS_OUTAGE_OPS`` payments, ``STRESS_OUTAGE_CLIENTS`` clients, each sending its
own key until it gets a stored answer. After a third of them are done the server
crashes; ``STRESS_OUTAGE_SECONDS`` later it starts again (crash recovery).

During the outage every protected request must answer 503
``idempotency_store_unavailable`` with ``Retry-After``: the app fails closed and
never runs a view without its key. Requests caught mid-flight roll back. Afterwards
the retries succeed, and every payment exists exactly once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.stress.harness import (
    PAYMENTS,
    STORES,
    Database,
    Reply,
    Server,
    Tally,
    assert_all_completed,
    check_replays,
    in_threads,
    knob,
    report,
    stopwatch,
    until_stored,
)

OPS = knob("STRESS_OUTAGE_OPS", 300)
CLIENTS = knob("STRESS_OUTAGE_CLIENTS", 8)
OUTAGE_SECONDS = knob("STRESS_OUTAGE_SECONDS", 3)
TIME_LIMIT = knob("STRESS_TIME_LIMIT", 600)
LEASE = 2  # seconds: keys held by requests cut off by the crash free up this soon


class PhaseTally(Tally):
    """A tally that also counts each answer by the phase it arrived in."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "before"
        self.by_phase: dict[str, Counter[str]] = {}

    def add(self, reply: Reply) -> None:
        super().add(reply)
        label = str(reply.status) if reply.status else "no answer"
        if reply.code:
            label += f" {reply.code}"
        with self.lock:
            self.by_phase.setdefault(self.phase, Counter())[label] += 1
        if reply.status is not None and reply.status >= 500:
            good = (
                reply.status == 503
                and reply.code == "idempotency_store_unavailable"
                and reply.headers.get("retry-after") == "1"
            )
            if not good:
                self.flag(f"{self.phase}: {reply.describe()}")


def _retry(reply: Reply) -> bool:
    return reply.code in ("idempotency_key_locked", "idempotency_store_unavailable")


@pytest.mark.parametrize("database_kind", STORES)
def test_store_outage_fails_closed_and_loses_nothing(
    store: Callable[[str], Database], work_dir: Path, database_kind: str
) -> None:
    database = store(database_kind)
    server_of_store = database.cluster
    assert server_of_store is not None
    run = uuid.uuid4().hex[:10]
    keys = [f"{run}-{i:05d}" for i in range(OPS)]
    pending = list(reversed(keys))
    lock = threading.Lock()
    finals: dict[str, Reply] = {}
    tally = PhaseTally()
    idempotency = {"LOCK_TIMEOUT": LEASE}

    with Server(database, work_dir, kind="gunicorn", idempotency=idempotency) as server:
        deadline = time.monotonic() + TIME_LIMIT

        def client(_index: int) -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    key = pending.pop()
                reply = until_stored(
                    server.port, PAYMENTS, key, key, tally, deadline=deadline, retry_on=_retry
                )
                finals[key] = reply
                if reply.status != 201:
                    tally.flag(f"{key}: {reply.describe()}")

        def outage() -> None:
            while len(finals) < OPS // 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            server_of_store.crash()
            tally.phase = "outage"
            time.sleep(OUTAGE_SECONDS)
            tally.phase = "restarting"
            server_of_store.start()
            tally.phase = "after"

        crash = threading.Thread(target=outage, daemon=True)
        with stopwatch() as elapsed:
            crash.start()
            try:
                in_threads(CLIENTS, client, timeout=TIME_LIMIT + 60)
            finally:
                crash.join(timeout=120)
        assert not crash.is_alive()
        check_replays(server.port, [(key, PAYMENTS) for key in keys], finals, tally)
        log = server.log_tail()

    rows = database.count_by(PAYMENTS.table, PAYMENTS.column, run)
    during = tally.by_phase.get("outage", Counter())
    unavailable = tally.codes["idempotency_store_unavailable"]
    row = report(
        f"4. store outage, gunicorn/{database.label}",
        tally,
        rows,
        expected=OPS,
        seconds=elapsed(),
        notes=(
            f"{OUTAGE_SECONDS} s down; 503 store unavailable: {unavailable} "
            f"(all 5xx); during the outage: {dict(during)}"
        ),
    )
    assert tally.unexpected == [], log
    # The outage was real: protected requests were refused while it lasted.
    assert during["503 idempotency_store_unavailable"] > 0, tally.by_phase
    assert row["duplicates"] == 0
    assert row["losses"] == 0
    assert_all_completed(database, keys)
