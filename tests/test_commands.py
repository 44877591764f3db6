"""``manage.py purge_idempotency_keys``: what it deletes, what it keeps, how it batches."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.http import HttpRequest, JsonResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from idempotency.management.commands import purge_idempotency_keys as purge
from idempotency.models import IdempotencyKey, IdempotencyResponse

pytestmark = pytest.mark.urls(__name__)

COMPLETED = IdempotencyKey.State.COMPLETED
RUNNING = IdempotencyKey.State.RUNNING
RELEASED = IdempotencyKey.State.RELEASED
HOUR = timedelta(hours=1)


@csrf_exempt
def create_group(request: HttpRequest) -> JsonResponse:
    group = Group.objects.create(name=uuid.uuid4().hex)
    return JsonResponse({"id": group.pk}, status=201)


urlpatterns = [path("groups/", create_group)]


def _key(
    name: str,
    *,
    expires: timedelta,
    state: str = COMPLETED,
    lease: timedelta | None = None,
    response: bool | None = None,
    scope: str = "user:1",
) -> IdempotencyKey:
    """A key expiring ``expires`` from now; completed keys get a stored response."""
    now = timezone.now()
    key = IdempotencyKey.objects.create(
        scope=scope,
        key=name,
        fingerprint="f" * 64,
        method="POST",
        path="/groups/",
        state=state,
        lease_expires_at=None if lease is None else now + lease,
        completed_at=now if state == COMPLETED else None,
        expires_at=now + expires,
    )
    if response if response is not None else state == COMPLETED:
        key.response_status, key.response_body = 201, b"x"
        key.response_headers = [["Content-Type", "text/plain"]]
        key.save(update_fields=["response_status", "response_headers", "response_body"])
    return key


def _expired(count: int, prefix: str = "old") -> list[IdempotencyKey]:
    # Distinct expiry times, oldest first, like keys that expired over time.
    return [_key(f"{prefix}-{i}", expires=-HOUR + timedelta(seconds=i)) for i in range(count)]


def _purge(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command("purge_idempotency_keys", *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def _names() -> set[str]:
    return set(IdempotencyKey.objects.values_list("key", flat=True))


def _key_deletes(queries: Sequence[dict[str, Any]]) -> int:
    table = connection.ops.quote_name(IdempotencyKey._meta.db_table)
    return sum(f"DELETE FROM {table} " in q["sql"] for q in queries)


@pytest.fixture
def mixed() -> dict[str, IdempotencyKey]:
    """Four keys the purge must delete and four it must keep."""
    return {
        # Deleted:
        "expired": _key("expired", expires=-HOUR),
        "released": _key("released", expires=-timedelta(seconds=1), state=RELEASED),
        "abandoned": _key("abandoned", expires=-HOUR, state=RUNNING, lease=-HOUR),
        "no-lease": _key("no-lease", expires=-HOUR, state=RUNNING),
        # Kept:
        "live": _key("live", expires=HOUR),
        "running": _key("running", expires=HOUR, state=RUNNING, lease=timedelta(minutes=1)),
        # Past its expiry, but a request still holds its lease: never deleted.
        "leased": _key("leased", expires=-HOUR, state=RUNNING, lease=timedelta(minutes=1)),
        "leased-with-old-response": _key(
            "leased-with-old-response",
            expires=-HOUR,
            state=RUNNING,
            lease=timedelta(minutes=1),
            response=True,
        ),
    }


# -- what is deleted ------------------------------------------------------------------


@pytest.mark.django_db
def test_deletes_expired_keys_and_their_responses_and_keeps_the_rest(
    mixed: dict[str, IdempotencyKey],
) -> None:
    business = Group.objects.create(name="business row")

    assert _purge() == "Deleted 4 expired idempotency keys.\n"

    assert _names() == {"live", "running", "leased", "leased-with-old-response"}
    assert set(IdempotencyResponse.objects.values_list("idempotency_key_id", flat=True)) == {
        mixed["live"].pk,
        mixed["leased-with-old-response"].pk,
    }
    assert list(Group.objects.all()) == [business]
    assert _purge() == "Deleted 0 expired idempotency keys.\n"


@pytest.mark.django_db
def test_purgeable_boundaries() -> None:
    now = timezone.now()
    at_expiry = _key("at-expiry", expires=timedelta(0))
    at_lease_end = _key("at-lease-end", expires=timedelta(0), state=RUNNING)
    IdempotencyKey.objects.filter(pk=at_expiry.pk).update(expires_at=now)
    IdempotencyKey.objects.filter(pk=at_lease_end.pk).update(expires_at=now, lease_expires_at=now)
    just_after = now + timedelta(microseconds=1)
    _key("later", expires=timedelta(0))
    IdempotencyKey.objects.filter(key="later").update(expires_at=just_after)
    lease_after = _key("lease-after", expires=timedelta(0), state=RUNNING)
    IdempotencyKey.objects.filter(pk=lease_after.pk).update(
        expires_at=now, lease_expires_at=just_after
    )

    # expires_at <= now is expired; a lease that ends exactly now is no longer live.
    purgeable = purge.purgeable("default", now).values_list("key", flat=True)
    assert set(purgeable) == {"at-expiry", "at-lease-end"}


@pytest.mark.django_db
def test_one_key_is_singular() -> None:
    _expired(1)
    lines = _purge("-v", "2").splitlines()
    assert lines[0] == "Batch 1: deleted 1 key and 1 stored response (1 so far)."
    assert lines[1].startswith("1 batch, 1 stored response, ")
    assert lines[2:] == ["Deleted 1 expired idempotency key."]


@pytest.mark.django_db
def test_verbosity_0_prints_nothing(mixed: dict[str, IdempotencyKey]) -> None:
    assert _purge("-v", "0") == ""
    assert len(_names()) == 4
    assert _purge("--dry-run", "-v", "0") == ""


# -- batches --------------------------------------------------------------------------


@pytest.mark.django_db
def test_deletes_in_batches_of_batch_size() -> None:
    _expired(5)
    _key("live", expires=HOUR)

    with CaptureQueriesContext(connection) as queries:
        out = _purge("--batch-size", "2", "-v", "2")

    lines = out.splitlines()
    assert lines[:3] == [
        "Batch 1: deleted 2 keys and 2 stored responses (2 so far).",
        "Batch 2: deleted 2 keys and 2 stored responses (4 so far).",
        "Batch 3: deleted 1 key and 1 stored response (5 so far).",
    ]
    assert lines[3].startswith("3 batches, 5 stored responses, ")
    assert lines[3].endswith(" s.")
    assert lines[4:] == ["Deleted 5 expired idempotency keys."]
    assert _key_deletes(queries.captured_queries) == 3
    assert _names() == {"live"}


@pytest.mark.django_db
def test_batches_delete_oldest_expiry_first() -> None:
    keys = _expired(5)
    _purge("--batch-size", "2", "--max-batches", "1")
    assert _names() == {key.key for key in keys[2:]}


@pytest.mark.django_db
def test_keys_with_the_same_expiry_across_batches_are_all_deleted() -> None:
    keys = [_key(f"same-{i}", expires=-HOUR) for i in range(5)]
    IdempotencyKey.objects.update(expires_at=keys[0].expires_at)
    assert _purge("--batch-size", "2") == "Deleted 5 expired idempotency keys.\n"
    assert _names() == set()


@pytest.mark.django_db
def test_default_batch_size_is_1000() -> None:
    now = timezone.now()
    IdempotencyKey.objects.bulk_create(
        IdempotencyKey(
            scope="s",
            key=f"k{i}",
            fingerprint="f" * 64,
            method="POST",
            path="/",
            state=COMPLETED,
            expires_at=now - timedelta(seconds=i + 1),
        )
        for i in range(1500)
    )
    with CaptureQueriesContext(connection) as queries:
        out = _purge("-v", "2")

    assert out.splitlines()[:2] == [
        "Batch 1: deleted 1000 keys and 0 stored responses (1000 so far).",
        "Batch 2: deleted 500 keys and 0 stored responses (1500 so far).",
    ]
    assert out.endswith("Deleted 1500 expired idempotency keys.\n")
    # SQLite takes at most 999 parameters per statement: the ids go in chunks.
    chunks = 2 if connection.features.max_query_params == 999 else 1
    assert _key_deletes(queries.captured_queries) == 1 + chunks
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.django_db
def test_max_batches_stops_early_and_says_so() -> None:
    _expired(5)
    assert _purge("--batch-size", "2", "--max-batches", "2") == (
        "Deleted 4 expired idempotency keys.\nStopped after --max-batches=2; expired keys remain.\n"
    )
    assert _names() == {"old-4"}
    assert _purge("--batch-size", "2", "--max-batches", "2") == (
        "Deleted 1 expired idempotency key.\n"
    )


@pytest.mark.django_db
def test_max_batches_that_finish_the_job_say_nothing_more() -> None:
    _expired(4)
    assert _purge("--batch-size", "2", "--max-batches", "2") == (
        "Deleted 4 expired idempotency keys.\n"
    )
    assert _names() == set()


@pytest.mark.django_db
def test_sleep_pauses_between_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(purge.time, "sleep", pauses.append)
    _expired(5)

    assert _purge("--batch-size", "2", "--sleep", "0.25") == (
        "Deleted 5 expired idempotency keys.\n"
    )
    # Batches of 2, 2 and 1: two pauses; a short batch is the last one.
    assert pauses == [0.25, 0.25]
    assert _names() == set()


@pytest.mark.django_db
def test_no_pause_without_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(purge.time, "sleep", pauses.append)
    _expired(3)
    assert _purge("--batch-size", "1") == "Deleted 3 expired idempotency keys.\n"
    assert pauses == []


# -- dry run --------------------------------------------------------------------------


@pytest.mark.django_db
def test_dry_run_counts_and_deletes_nothing(mixed: dict[str, IdempotencyKey]) -> None:
    with CaptureQueriesContext(connection) as queries:
        assert _purge("--dry-run") == "Would delete 4 expired idempotency keys.\n"

    assert not any(q["sql"].startswith("DELETE") for q in queries.captured_queries)
    assert len(_names()) == 8
    assert IdempotencyResponse.objects.count() == 3


@pytest.mark.django_db
def test_dry_run_verbose_and_capped_by_max_batches() -> None:
    _expired(5)
    assert _purge("--dry-run", "--batch-size", "2", "-v", "2") == (
        "5 expired keys to delete; this run would take 3 batches of up to 2.\n"
        "Would delete 5 expired idempotency keys.\n"
    )
    assert _purge("--dry-run", "--batch-size", "2", "--max-batches", "2") == (
        "Would delete 4 expired idempotency keys.\n"
    )
    assert _purge("--dry-run", "--batch-size", "10", "--max-batches", "1", "-v", "2") == (
        "5 expired keys to delete; this run would take 1 batch of up to 10.\n"
        "Would delete 5 expired idempotency keys.\n"
    )
    assert len(_names()) == 5


@pytest.mark.django_db
def test_dry_run_with_nothing_expired() -> None:
    _key("live", expires=HOUR)
    assert _purge("--dry-run") == "Would delete 0 expired idempotency keys.\n"


# -- bad arguments --------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: must be 1 or more, got 0"),
        (["--batch-size", "-5"], "argument --batch-size: must be 1 or more, got -5"),
        (["--batch-size", "ten"], "argument --batch-size: must be a whole number, got 'ten'"),
        (["--batch-size", "1.5"], "argument --batch-size: must be a whole number, got '1.5'"),
        (["--max-batches", "0"], "argument --max-batches: must be 1 or more, got 0"),
        (["--sleep", "-1"], "argument --sleep: must be 0 or more seconds, got '-1'"),
        (["--sleep", "soon"], "argument --sleep: must be a number of seconds, got 'soon'"),
        (["--sleep", "nan"], "argument --sleep: must be 0 or more seconds, got 'nan'"),
        (["--sleep", "inf"], "argument --sleep: must be 0 or more seconds, got 'inf'"),
        (["--batchsize", "5"], "unrecognized arguments: --batchsize 5"),
    ],
)
def test_bad_arguments_raise_command_error(args: list[str], message: str) -> None:
    _expired(2)
    with pytest.raises(CommandError) as excinfo:
        _purge(*args)
    assert str(excinfo.value) == f"Error: {message}"
    assert len(_names()) == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "--batch-size must be 1 or more, got 0."),
        ({"batch_size": "x"}, "--batch-size must be a whole number, got 'x'."),
        ({"batch_size": True}, "--batch-size must be a number, got True."),
        ({"batch_size": None}, "--batch-size must be a number, got None."),
        ({"max_batches": -1}, "--max-batches must be 1 or more, got -1."),
        ({"sleep": -0.5}, "--sleep must be 0 or more seconds, got '-0.5'."),
    ],
)
def test_bad_options_from_call_command_raise_command_error(
    options: dict[str, Any], message: str
) -> None:
    _expired(2)
    with pytest.raises(CommandError) as excinfo:
        _purge(**options)
    assert str(excinfo.value) == message
    assert len(_names()) == 2


@pytest.mark.django_db
def test_good_options_from_call_command() -> None:
    _expired(3)
    assert _purge(batch_size=2, max_batches=1, sleep=0) == (
        "Deleted 2 expired idempotency keys.\nStopped after --max-batches=1; expired keys remain.\n"
    )
    assert _purge(batch_size="2", dry_run=True) == "Would delete 1 expired idempotency key.\n"


# -- keys taken over while the purge runs ---------------------------------------------


def _retry(name: str) -> Any:
    """A real request with the key, from the scope the key was stored under."""
    return Client().post(
        "/groups/", b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY=name
    )


@pytest.mark.django_db
def test_stale_ids_of_a_key_taken_over_since_are_not_deleted() -> None:
    now = timezone.now()
    old = _key("retried", expires=-HOUR, scope="anonymous")
    other = _key("other", expires=-HOUR + timedelta(seconds=1))
    ids = purge.select_batch("default", now, 10)[0]
    assert ids == [old.pk, other.pk]

    # A retry takes the expired key over and completes it with a new response.
    response = _retry("retried")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    group_id = response.json()["id"]

    assert purge.delete_batch("default", ids, now) == (1, 1)

    survivor = IdempotencyKey.objects.get()
    assert survivor.pk == old.pk
    assert survivor.state == COMPLETED
    assert survivor.expires_at > timezone.now()
    assert survivor.response.status == 201
    assert bytes(survivor.response.body) == response.content
    # The stored response is the retry's: a further retry replays it.
    replay = _retry("retried")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == {"id": group_id}
    assert Group.objects.count() == 1


@pytest.mark.django_db
def test_stale_ids_of_a_key_now_running_are_not_deleted() -> None:
    now = timezone.now()
    key = _key("running-now", expires=-HOUR)
    ids = purge.select_batch("default", now, 10)[0]
    # Taken over by a request that is still running: a live lease, a new expiry.
    IdempotencyKey.objects.filter(pk=key.pk).update(
        state=RUNNING,
        fence=key.fence + 1,
        lease_expires_at=timezone.now() + timedelta(minutes=1),
        expires_at=timezone.now() + HOUR,
        response_status=None,
        response_headers=None,
        response_body=None,
    )

    assert purge.delete_batch("default", ids, now) == (0, 0)
    assert IdempotencyKey.objects.get().state == RUNNING


@pytest.mark.django_db
def test_stale_ids_recheck_the_lease_even_when_still_expired() -> None:
    now = timezone.now()
    key = _key("lease-taken", expires=-HOUR)
    ids = purge.select_batch("default", now, 10)[0]
    # A lease taken without moving expires_at (TTL shorter than the lease).
    IdempotencyKey.objects.filter(pk=key.pk).update(
        state=RUNNING, lease_expires_at=now + timedelta(minutes=1)
    )

    assert purge.delete_batch("default", ids, now) == (0, 0)
    assert IdempotencyResponse.objects.filter(idempotency_key=key).count() == 1


@pytest.mark.django_db
def test_stale_ids_of_deleted_keys_are_harmless() -> None:
    now = timezone.now()
    keys = _expired(2)
    ids = purge.select_batch("default", now, 10)[0]
    keys[0].delete()
    assert purge.delete_batch("default", ids, now) == (1, 1)
    assert purge.delete_batch("default", [], now) == (0, 0)
    assert _names() == set()


@pytest.mark.django_db
def test_key_taken_over_between_select_and_delete_during_a_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _key("first", expires=-HOUR)
    _key("retried", expires=-HOUR + timedelta(seconds=1), scope="anonymous")
    _key("last", expires=-HOUR + timedelta(seconds=2))
    real_delete = purge.delete_batch
    seen: list[list[str]] = []

    def delete_after_a_retry(alias: str, ids: Sequence[int], now: datetime) -> tuple[int, int]:
        names = list(IdempotencyKey.objects.filter(pk__in=ids).values_list("key", flat=True))
        seen.append(names)
        if names == ["retried"]:
            assert _retry("retried").status_code == 201
        return real_delete(alias, ids, now)

    monkeypatch.setattr(purge, "delete_batch", delete_after_a_retry)

    out = _purge("--batch-size", "1", "-v", "2")

    assert seen == [["first"], ["retried"], ["last"]]
    assert out.splitlines()[:3] == [
        "Batch 1: deleted 1 key and 1 stored response (1 so far).",
        "Batch 2: deleted 0 keys and 0 stored responses (1 so far).",
        "Batch 3: deleted 1 key and 1 stored response (2 so far).",
    ]
    assert out.endswith("Deleted 2 expired idempotency keys.\n")
    survivor = IdempotencyKey.objects.get()
    assert (survivor.key, survivor.state, survivor.response.status) == ("retried", COMPLETED, 201)


# -- transactions and locks (real concurrent connections) ------------------------------


@pytest.fixture
def shared_database() -> None:
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip("threads need a database file or server; this run uses in-memory SQLite")


def _in_thread(target: Callable[[], Any]) -> Any:
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(target())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result[0]


@pytest.mark.django_db(transaction=True)
def test_each_batch_commits_on_its_own(
    shared_database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _expired(3)
    real_delete = purge.delete_batch
    seen_by_others: list[int] = []

    def delete_and_look(alias: str, ids: Sequence[int], now: datetime) -> tuple[int, int]:
        # What another connection sees before this batch: earlier batches are committed.
        seen_by_others.append(_in_thread(IdempotencyKey.objects.count))
        return real_delete(alias, ids, now)

    monkeypatch.setattr(purge, "delete_batch", delete_and_look)

    assert _purge("--batch-size", "1") == "Deleted 3 expired idempotency keys.\n"
    assert seen_by_others == [3, 2, 1]


@pytest.fixture
def lock_timeout() -> Iterator[None]:
    """Fail, rather than hang, should the purge ever wait for a locked row."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '5s'")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")


def _hold_locked(key_id: int, then: Callable[[], None], *, commit: bool) -> threading.Thread:
    """In another connection, take the key over and keep the row locked until ``then`` ran."""
    locked = threading.Event()
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with transaction.atomic():
                IdempotencyKey.objects.filter(pk=key_id).update(
                    state=RUNNING,
                    fence=2,
                    lease_expires_at=timezone.now() + timedelta(minutes=1),
                    expires_at=timezone.now() + HOUR,
                )
                locked.set()
                assert done.wait(30)
                if not commit:
                    transaction.set_rollback(True)
        except BaseException as exc:
            errors.append(exc)
        finally:
            locked.set()
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert locked.wait(30)
        then()
    finally:
        done.set()
        thread.join(30)
    assert not errors
    return thread


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("commit", [True, False], ids=["taken-over", "rolled-back"])
def test_a_row_locked_by_a_request_is_skipped_not_waited_for(
    lock_timeout: None, commit: bool
) -> None:
    keys = _expired(3)
    busy = keys[1]
    outputs: list[str] = []

    _hold_locked(
        busy.pk, lambda: outputs.append(_purge("--batch-size", "2", "-v", "2")), commit=commit
    )

    assert outputs[0].splitlines()[:2] == [
        "Batch 1: deleted 1 key and 1 stored response (1 so far).",
        "Batch 2: deleted 1 key and 1 stored response (2 so far).",
    ]
    assert outputs[0].endswith("Deleted 2 expired idempotency keys.\n")
    survivor = IdempotencyKey.objects.get()
    assert survivor.pk == busy.pk
    if commit:
        assert survivor.state == RUNNING
        assert _purge() == "Deleted 0 expired idempotency keys.\n"
    else:
        # Still expired once the request gave up: the next run deletes it.
        assert survivor.state == COMPLETED
        assert _purge() == "Deleted 1 expired idempotency key.\n"
        assert _names() == set()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_whole_batch_locked_ends_the_run(lock_timeout: None) -> None:
    (busy,) = _expired(1)
    outputs: list[str] = []

    def run() -> None:
        # --max-batches: a regression that selects the busy row again fails, not hangs.
        outputs.append(_purge("--batch-size", "1", "--max-batches", "3", "-v", "2"))

    _hold_locked(busy.pk, run, commit=False)

    lines = outputs[0].splitlines()
    assert lines[0] == "Batch 1: deleted 0 keys and 0 stored responses (0 so far)."
    assert lines[1].startswith("1 batch, 0 stored responses, ")
    assert lines[2:] == ["Deleted 0 expired idempotency keys."]
    assert _names() == {busy.key}


@pytest.mark.postgres
@pytest.mark.django_db
def test_one_statement_per_batch_that_skips_locked_rows() -> None:
    _expired(3)
    with CaptureQueriesContext(connection) as queries:
        _purge("--batch-size", "2")
    deletes = [q["sql"] for q in queries.captured_queries if "DELETE" in q["sql"]]
    assert len(deletes) == 2
    assert all("FOR UPDATE SKIP LOCKED" in sql for sql in deletes)


def _session_status(name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE %s", [name])
        return int(cursor.fetchone()[1])


@pytest.mark.mysql
@pytest.mark.django_db
def test_a_batch_on_mysql_reads_by_index_not_by_scanning_the_table() -> None:
    """A batch of 5 keys among 3,000 stored responses reads a handful of rows.

    A batch's statements must find their rows by primary key. When the responses had
    a table of their own, MariaDB before 11.1 ran ``DELETE ... WHERE key_id IN
    (SELECT ...)`` as a full scan of it, once per batch: at a million keys the purge
    ran for hours, not seconds. ``Handler_read_rnd_next`` counts the rows a scan reads.
    """
    now = timezone.now()
    IdempotencyKey.objects.bulk_create(
        IdempotencyKey(
            scope="user:1",
            key=f"live-{i}",
            fingerprint="f" * 64,
            method="POST",
            path="/groups/",
            state=COMPLETED,
            completed_at=now,
            expires_at=now + HOUR,
            response_status=201,
            response_headers=[],
            response_body=b"x",
        )
        for i in range(3000)
    )
    assert IdempotencyResponse.objects.count() == 3000
    old = _expired(5)
    before = _session_status("Handler_read_rnd_next")
    deleted = purge.delete_batch("default", [key.pk for key in old], timezone.now())
    scanned = _session_status("Handler_read_rnd_next") - before
    assert deleted == (5, 5)
    assert scanned < 100, f"{scanned} rows read by table scans"
    assert IdempotencyResponse.objects.count() == 3000
    assert not IdempotencyKey.objects.filter(pk__in=[key.pk for key in old]).exists()
