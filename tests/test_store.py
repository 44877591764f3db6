"""The store against each vendor's limits: bodies of several MiB, MariaDB's
``max_allowed_packet``, InnoDB deadlocks."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import OperationalError, connection, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from idempotency import store as store_module
from idempotency.models import IdempotencyKey, IdempotencyResponse
from tests.conftest import PREPARED_BY_DEFAULT
from tests.helpers import new_key

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

MIB = 1024 * 1024
KEYS_TABLE = IdempotencyKey._meta.db_table


@csrf_exempt
def large(request: HttpRequest) -> HttpResponse:
    """Writes a row, answers ``X-Size`` random bytes (no compression can shrink them),
    or ``X-Size`` times the byte ``X-Fill``."""
    Group.objects.create(name=uuid.uuid4().hex)
    size = int(request.headers["X-Size"])
    fill = request.headers.get("X-Fill")
    body = fill.encode() * size if fill else os.urandom(size)
    return HttpResponse(body, status=201, content_type="application/octet-stream")


urlpatterns = [path("large/", large)]


def _post(key: str, size: int, fill: str | None = None) -> Any:
    headers = {"Idempotency-Key": key, "X-Size": str(size)}
    if fill is not None:
        headers["X-Fill"] = fill
    return Client().post("/large/", b"{}", content_type="application/json", headers=headers)


def _max_allowed_packet() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@max_allowed_packet")
        row = cursor.fetchone()
    return int(row[0])


def test_a_body_of_several_mib_is_stored_and_replayed() -> None:
    key = new_key()
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": 8 * MIB}):
        first = _post(key, 6 * MIB)
        replay = _post(key, 6 * MIB)

    assert first.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert bytes(IdempotencyResponse.objects.get().body) == first.content
    assert Group.objects.count() == 1


def test_the_default_limit_stores_4_mib_and_refuses_a_byte_more() -> None:
    at, over = new_key(), new_key()
    first = _post(at, 4 * MIB)
    replay = _post(at, 4 * MIB)
    refused = _post(over, 4 * MIB + 1)

    assert first.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert refused.status_code == 500
    assert refused.json()["code"] == "idempotency_response_too_large"
    assert bytes(IdempotencyResponse.objects.get().body) == first.content
    assert IdempotencyKey.objects.get(key=over).state == "released"
    assert Group.objects.count() == 1


@pytest.mark.mysql
def test_a_body_past_max_allowed_packet_is_refused_before_it_is_sent() -> None:
    # No limit of the app's own: the server's is the one that applies. The store
    # measures the statement first, instead of sending what the server refuses
    # (error 1153, after which it may close the connection).
    key = new_key()
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": None}):
        first = _post(key, _max_allowed_packet() + MIB)

    assert first.status_code == 500
    assert first.json()["code"] == "idempotency_response_too_large"
    # Not half stored: the key is free again, without a response, and the view's row
    # went with the rolled-back transaction.
    assert list(IdempotencyKey.objects.values_list("state", flat=True)) == ["released"]
    assert IdempotencyResponse.objects.count() == 0
    assert Group.objects.count() == 0
    # The connection still works, and a retry runs the view (a smaller answer fits).
    retry = _post(key, 1024)
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert Group.objects.count() == 1


@pytest.mark.mysql
def test_a_body_that_escaping_takes_past_max_allowed_packet_is_refused() -> None:
    # Quotes are sent as two bytes each: a body of 60 % of the packet's size in quotes
    # takes 120 % of it in the statement.
    key = new_key()
    size = _max_allowed_packet() * 6 // 10
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": None}):
        first = _post(key, size, fill="'")

    assert first.status_code == 500
    assert first.json()["code"] == "idempotency_response_too_large"
    assert IdempotencyResponse.objects.count() == 0
    assert Group.objects.count() == 0


@pytest.mark.mysql
def test_a_body_just_under_max_allowed_packet_is_stored_and_replayed() -> None:
    # Random bytes: about 3 % of them are escaped, so 90 % of the packet fits, though
    # twice the body would not. The store counts the escapes, and sends it.
    key = new_key()
    size = _max_allowed_packet() * 9 // 10
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": None}):
        first = _post(key, size)
        replay = _post(key, size)

    assert first.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert bytes(IdempotencyResponse.objects.get().body) == first.content
    assert Group.objects.count() == 1


@pytest.mark.mysql
def test_a_body_past_max_allowed_packet_without_atomic_is_sent_and_never_run_again() -> None:
    key = new_key()
    with override_settings(IDEMPOTENCY={"ATOMIC": False, "MAX_RESPONSE_SIZE": None}):
        first = _post(key, _max_allowed_packet() + MIB)
        retry = _post(key, 1024)

    # The view's write stands and cannot be undone: its answer goes out, and the key
    # keeps a stand-in, so that no retry runs the operation twice.
    assert first.status_code == 201
    assert list(IdempotencyKey.objects.values_list("state", flat=True)) == ["completed"]
    assert IdempotencyResponse.objects.get().status == 500
    assert retry.status_code == 500
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.json()["code"] == "idempotency_response_not_kept"
    assert Group.objects.count() == 1


def test_the_packet_size_is_read_once_per_connection() -> None:
    if connection.vendor != "mysql":
        pytest.skip("needs MariaDB or MySQL")
    connection.close()
    connection.ensure_connection()
    store = store_module.Store("default")
    with CaptureQueriesContext(connection) as queries:
        assert store.refusal(bytes(store_module.PACKET_CHECK_MIN), []) is None
        assert store.refusal(bytes(store_module.PACKET_CHECK_MIN), []) is None
    assert [q["sql"] for q in queries.captured_queries] == ["SELECT @@max_allowed_packet"]


def test_small_bodies_and_other_databases_cost_no_query() -> None:
    store = store_module.Store("default")
    with CaptureQueriesContext(connection) as queries:
        assert store.refusal(bytes(store_module.PACKET_CHECK_MIN - 1), []) is None
        if connection.vendor != "mysql":
            assert store.refusal(bytes(8 * MIB), []) is None
    assert queries.captured_queries == []


# ---------------------------------------------------------------- InnoDB deadlocks


def _deadlock() -> OperationalError:
    return OperationalError(store_module.ER_LOCK_DEADLOCK, "Deadlock found when trying to get lock")


@contextmanager
def deadlocks(statement: str, table: str, times: int) -> Iterator[list[str]]:
    """The first ``times`` statements starting ``statement`` on ``table`` lose a deadlock."""
    seen: list[str] = []

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any) -> Any:
        if sql.startswith(statement) and connection.ops.quote_name(table) in sql:
            seen.append(sql)
            if len(seen) <= times:
                raise _deadlock()
        return execute(sql, params, many, ctx)

    with connection.execute_wrapper(wrapper):
        yield seen


@pytest.mark.mysql
def test_a_claim_that_loses_a_deadlock_is_run_again() -> None:
    key = new_key()
    with deadlocks("INSERT", KEYS_TABLE, times=2) as seen:
        response = _post(key, 10)
    assert response.status_code == 201
    assert len(seen) == 3
    assert IdempotencyKey.objects.get().state == "completed"


@pytest.mark.mysql
def test_a_claim_that_keeps_losing_deadlocks_is_a_503() -> None:
    with deadlocks("INSERT", KEYS_TABLE, times=99) as seen:
        response = _post(new_key(), 10)
    assert response.status_code == 503
    assert response.json()["code"] == "idempotency_store_unavailable"
    assert len(seen) == store_module.DEADLOCK_ATTEMPTS
    assert Group.objects.count() == 0


@pytest.mark.mysql
def test_a_completion_in_the_views_transaction_is_not_run_again() -> None:
    # ATOMIC: the deadlock rolled back the view's writes with it; running the UPDATE
    # again would store a response whose writes are gone.
    key = new_key()
    with deadlocks("UPDATE", KEYS_TABLE, times=1) as seen:
        response = _post(key, 10)
    assert response.status_code == 503
    assert len(seen) == 2  # the completion, then the release
    assert Group.objects.count() == 0
    assert IdempotencyKey.objects.get().state == "released"


@pytest.mark.mysql
def test_a_completion_in_its_own_transaction_is_run_again() -> None:
    key = new_key()
    with (
        override_settings(IDEMPOTENCY={"ATOMIC": False}),
        # The completion: the one UPDATE of a first request without ATOMIC.
        deadlocks("UPDATE", KEYS_TABLE, times=1) as seen,
    ):
        response = _post(key, 10)
    assert response.status_code == 201
    assert len(seen) == 2
    assert bytes(IdempotencyResponse.objects.get().body) == response.content


@pytest.mark.mysql
def test_a_deadlock_inside_the_callers_transaction_marks_it_for_rollback() -> None:
    store = store_module.Store("default")
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        raise _deadlock()

    with transaction.atomic():
        with pytest.raises(OperationalError):
            store.retrying(connection, work)
        assert transaction.get_rollback()
    assert calls == [1]


@pytest.mark.mysql
def test_other_errors_are_not_run_again() -> None:
    store = store_module.Store("default")
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        raise OperationalError(1205, "Lock wait timeout exceeded")

    with pytest.raises(OperationalError):
        store.retrying(connection, work)
    assert calls == [1]


# ---------------------------------------------------------------- REPEATABLE READ snapshots


def _claim_args(key: str) -> dict[str, Any]:
    now = timezone.now()
    return {
        "scope": "anonymous",
        "key": key,
        "fingerprint": "f" * 64,
        "method": "POST",
        "path": "/large/",
        "now": now,
        "lease_until": now + timedelta(seconds=60),
        "expires_at": now + timedelta(days=1),
    }


def _start_in_another_connection(work: Callable[[], None]) -> Callable[[], None]:
    """Start ``work`` in a thread, on a connection of its own; the function returned
    waits for it and fails with what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()

    def finish() -> None:
        thread.join(timeout=30)
        assert errors == []

    return finish


def _in_another_connection(work: Callable[[], None]) -> None:
    _start_in_another_connection(work)()


@pytest.mark.mysql
@pytest.mark.parametrize("seen_running", [False, True], ids=["unseen", "seen-running"])
def test_a_claim_inside_an_old_snapshot_finds_the_latest_row(seen_running: bool) -> None:
    """REPEATABLE READ: the request's transaction began before another request
    completed the key (ATOMIC_REQUESTS, a request made from an atomic view)."""
    key = new_key()
    store = store_module.Store("default")
    other = store_module.Store("default")
    claimed: list[int] = []

    def claim_elsewhere() -> None:
        found = other.claim(**_claim_args(key))
        assert isinstance(found, int)
        claimed.append(found)

    def complete_elsewhere() -> None:
        now = timezone.now()
        assert other.complete(
            claimed[0],
            1,
            now=now,
            expires_at=now + timedelta(days=1),
            status=201,
            headers=[],
            body=b"done",
        )

    if seen_running:
        _in_another_connection(claim_elsewhere)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # The transaction's snapshot: taken by its first read, before the completion.
        assert IdempotencyKey.objects.filter(key=key).count() == int(seen_running)
        if not seen_running:
            _in_another_connection(claim_elsewhere)
        _in_another_connection(complete_elsewhere)
        found = store.claim(**_claim_args(key))

    assert isinstance(found, store_module.Existing)
    assert (found.state, found.status, found.body) == ("completed", 201, b"done")


@pytest.mark.postgres
def test_a_claim_that_waits_for_another_claim_finds_its_row_once_it_commits() -> None:
    """The conflicting row commits after the claim's INSERT began, so it is not in that
    statement's snapshot: the claim function's read, a statement of its own, sees it."""
    key = new_key()
    inserted = threading.Event()

    def claim_and_commit_late() -> None:
        with transaction.atomic():
            assert isinstance(store_module.Store("default").claim(**_claim_args(key)), int)
            inserted.set()
            # Commit only once the other claim waits on this row's lock.
            with connection.cursor() as cursor:
                for _ in range(200):
                    # Within a transaction the activity view is read once, and kept.
                    cursor.execute("SELECT pg_stat_clear_snapshot()")
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                        "'Lock' AND query LIKE '%%idempotency_claim%%'"
                    )
                    if cursor.fetchone()[0]:
                        break
                    threading.Event().wait(0.05)
                else:
                    raise AssertionError("the other claim never waited")

    finish = _start_in_another_connection(claim_and_commit_late)
    assert inserted.wait(timeout=30)
    found = store_module.Store("default").claim(**_claim_args(key))
    finish()

    assert isinstance(found, store_module.Existing)
    assert (found.state, found.fence, found.status) == ("running", 1, None)


# ---------------------------------------------------------------- reading bodies back


@pytest.mark.postgres
def test_on_postgresql_a_stored_body_is_read_back_in_binary() -> None:
    # As text, a bytea arrives hex-escaped (twice its size) and is unescaped twice
    # more before it is a bytes: a 20 MiB replay held about five times the body.
    from psycopg import pq

    connection.ensure_connection()
    raw = connection.connection
    saved = raw.prepare_threshold
    raw.prepare_threshold = 0  # would prepare every server-bound statement at once
    body = bytes(range(256)) * 4
    try:
        with (
            CaptureQueriesContext(connection) as queries,
            store_module._reading_cursor(connection) as cursor,
        ):
            cursor.execute("SELECT %s::bytea", [body])
            result_format = cursor.cursor.pgresult.fformat(0)
            (value,) = cursor.fetchone()
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_prepared_statements")
            (prepared,) = cursor.fetchone()
    finally:
        raw.prepare_threshold = saved
    assert result_format == pq.Format.BINARY
    assert value == body
    assert len(queries.captured_queries) == 1  # a Django cursor: counted like any other
    assert queries.captured_queries[0]["sql"].startswith("SELECT ")
    # A named prepared statement only with PREPARED_STATEMENTS.
    assert prepared == (1 if PREPARED_BY_DEFAULT else 0)
