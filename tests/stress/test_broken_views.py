"""A view with a bug, under gunicorn: the key and the worker survive it.

A decorated view that writes and then returns ``None`` (or a django-ninja style
dict) used to leave its transaction open: its key stayed locked until its lease
ended, and every later request on that worker failed with "Cannot operate on a
closed database". Here one sync worker serves the broken request, then twenty
more requests, keyed and not, and each must get its ordinary answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.stress.harness import TOKEN, Database, Server, send

LATER = 20


def _body(reference: str) -> bytes:
    return json.dumps({"amount": "10.00", "currency": "EUR", "reference": reference}).encode()


def _check_one_worker(database: Database, work_dir: Path) -> None:
    with Server(database, work_dir, workers=1) as server:
        pid = json.loads(send(server.port, "GET", "/stress/worker/").body)["pid"]
        key = f"broken-{uuid.uuid4()}"
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        broken = send(server.port, "POST", "/stress/no-response/", _body(key), headers)
        retry = send(server.port, "POST", "/stress/no-response/", _body(key), headers)

        assert broken.status == 500, broken.describe()
        # Released at once: the retry runs the view again (500 again), never 409 locked.
        assert retry.status == 500, retry.describe()
        assert database.query(
            "SELECT k.state FROM idempotency_idempotencykey k WHERE k.key = %s", (key,)
        ) == [("released",)]
        assert database.query("SELECT COUNT(*) FROM shop_payment WHERE reference = %s", (key,)) == [
            (0,)
        ]  # the broken view's write was rolled back, both times

        answers = []
        for index in range(LATER):
            reference = f"after-{uuid.uuid4()}"
            headers = {"Content-Type": "application/json"}
            if index % 2 == 0:
                headers["Idempotency-Key"] = reference
            path = "/payments/" if index % 4 < 2 else "/api/orders/"
            body = _body(reference)
            if path == "/api/orders/":
                headers["Authorization"] = f"Token {TOKEN}"
                body = json.dumps({"item": reference, "quantity": 1, "amount": "9.99"}).encode()
            answers.append(send(server.port, "POST", path, body, headers))
        same_worker = json.loads(send(server.port, "GET", "/stress/worker/").body)["pid"]

    assert [a.status for a in answers] == [201] * LATER, [a.describe() for a in answers]
    assert same_worker == pid  # one worker served them all, and it never restarted


def test_a_view_without_a_response_leaves_the_worker_healthy_on_sqlite(
    sqlite_db: Database, work_dir: Path
) -> None:
    _check_one_worker(sqlite_db, work_dir)


@pytest.mark.parametrize("database_kind", ["postgresql", "mariadb"])
def test_a_view_without_a_response_leaves_the_worker_healthy_on_a_server(
    store: Callable[[str], Database], work_dir: Path, database_kind: str
) -> None:
    _check_one_worker(store(database_kind), work_dir)
