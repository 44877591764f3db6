"""Concurrent duplicates and lease takeover, with real threads on a real database.

Each thread has its own database connection, so these are real concurrent
transactions. The multi-process version (gunicorn, killed workers) is in the
stress suite.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from django.contrib.auth.models import Group
from django.db import connection, connections
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from idempotency.models import IdempotencyKey
from tests.helpers import new_key

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

KEYS = 12
CLIENTS = 8


@pytest.fixture(autouse=True)
def _needs_a_shared_database() -> None:
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip("threads need a database file or server; this run uses in-memory SQLite")


@csrf_exempt
def create_group(request: HttpRequest) -> JsonResponse:
    # Wide enough a window that the duplicates really overlap.
    time.sleep(float(request.headers.get("X-Sleep", "0.05")))
    group = Group.objects.create(name=uuid.uuid4().hex)
    return JsonResponse({"id": group.pk, "name": group.name}, status=201)


urlpatterns = [path("groups/", create_group)]


def _in_threads(count: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def _hammer(keys: list[str]) -> tuple[Counter[str], dict[str, set[bytes]]]:
    """CLIENTS threads send every key at once; a 409 locked is retried until replayed."""
    outcomes: Counter[str] = Counter()
    bodies: dict[str, set[bytes]] = {key: set() for key in keys}
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client(index: int) -> None:
        http = Client()
        for key in keys:
            barrier.wait(timeout=60)
            for _attempt in range(200):
                response = http.post(
                    "/groups/",
                    b'{"n": 1}',
                    content_type="application/json",
                    headers={"Idempotency-Key": key},
                )
                with lock:
                    if response.status_code == 409:
                        assert response.json()["code"] == "idempotency_key_locked"
                        assert response.headers["Retry-After"] == "1"
                        outcomes["locked"] += 1
                        continue
                    assert response.status_code == 201, response.content
                    replayed = response.headers.get("Idempotent-Replayed") == "true"
                    outcomes["replay" if replayed else "ran"] += 1
                    bodies[key].add(response.content)
                break
            else:
                raise AssertionError(f"{key} never completed")
            if response.status_code == 409:
                time.sleep(0.01)

    _in_threads(CLIENTS, client)
    return outcomes, bodies


def test_concurrent_duplicates_run_the_view_once() -> None:
    keys = [new_key() for _ in range(KEYS)]
    outcomes, bodies = _hammer(keys)
    assert Group.objects.count() == KEYS
    assert outcomes["ran"] == KEYS
    assert outcomes["replay"] == KEYS * (CLIENTS - 1)
    # Every client of a key saw the very same bytes.
    assert all(len(seen) == 1 for seen in bodies.values())
    assert set(IdempotencyKey.objects.values_list("state", flat=True)) == {"completed"}


def test_concurrent_wait_turns_conflicts_into_replays() -> None:
    keys = [new_key() for _ in range(KEYS)]
    with override_settings(IDEMPOTENCY={"CONCURRENT_WAIT": 10}):
        outcomes, bodies = _hammer(keys)
    assert outcomes["locked"] == 0
    assert outcomes["ran"] == KEYS
    assert outcomes["replay"] == KEYS * (CLIENTS - 1)
    assert Group.objects.count() == KEYS
    assert all(len(seen) == 1 for seen in bodies.values())


def test_expired_lease_is_taken_over_and_only_one_commits() -> None:
    """A runs longer than LOCK_TIMEOUT; B takes the key over; both finish; one commits."""
    key = new_key()
    results: dict[str, tuple[int, bytes, str | None]] = {}

    def send(name: str, sleep: float, delay: float) -> None:
        time.sleep(delay)
        response = Client().post(
            "/groups/",
            b"{}",
            content_type="application/json",
            headers={"Idempotency-Key": key, "X-Sleep": str(sleep)},
        )
        results[name] = (
            response.status_code,
            response.content,
            response.headers.get("Idempotent-Replayed"),
        )

    with override_settings(IDEMPOTENCY={"LOCK_TIMEOUT": 0.5}):
        _in_threads(2, lambda i: send("A", 1.5, 0) if i == 0 else send("B", 0.1, 0.8))

    row = IdempotencyKey.objects.select_related("response").get(key=key)
    assert row.state == "completed"
    assert Group.objects.count() == 1
    group = Group.objects.get()
    # Whoever committed, the stored response names the one row that exists, and the
    # other request answered with that same response (a replay) or a 409.
    assert bytes(row.response.body) == f'{{"id": {group.pk}, "name": "{group.name}"}}'.encode()
    answers = sorted(results.values(), key=lambda r: r[2] or "")
    if connection.vendor in ("postgresql", "mysql"):
        # Row locks: B took the lease over while A still ran; A's completion was fenced out.
        assert row.fence == 2
        assert results["B"][:2] == (201, bytes(row.response.body))
        assert results["B"][2] is None
        assert results["A"][0] in (201, 409)
        if results["A"][0] == 201:
            assert results["A"][1:] == (bytes(row.response.body), "true")
    else:
        # SQLite: A's write transaction holds the database lock, so B's takeover waits
        # for A's commit and then finds the key completed.
        assert row.fence == 1
        assert [a[0] for a in answers] == [201, 201]
        assert {a[1] for a in answers} == {bytes(row.response.body)}
