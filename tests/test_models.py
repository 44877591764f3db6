from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError, NotSupportedError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from idempotency.models import IdempotencyKey, IdempotencyResponse


@pytest.mark.django_db
def test_migrations_are_complete() -> None:
    out = StringIO()
    call_command("makemigrations", "idempotency", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def _key(**kwargs: object) -> IdempotencyKey:
    values: dict[str, object] = {
        "scope": "user:1",
        "key": "k",
        "fingerprint": "f" * 64,
        "method": "POST",
        "path": "/x/",
        "state": IdempotencyKey.State.COMPLETED,
        "expires_at": timezone.now(),
    }
    values.update(kwargs)
    return IdempotencyKey.objects.create(**values)


@pytest.mark.django_db
def test_scope_and_key_are_unique_together() -> None:
    _key()
    _key(scope="user:2")
    with pytest.raises(IntegrityError), transaction.atomic():
        _key()
    assert IdempotencyKey.objects.count() == 2


@pytest.mark.django_db
def test_response_goes_with_its_key() -> None:
    key = _key()
    IdempotencyKey.objects.filter(pk=key.pk).update(
        response_status=201, response_headers=[], response_body=b"{}"
    )
    assert str(key) == "k (user:1)"
    assert str(key.response) == f"201 for {key.pk}"
    key.delete()
    assert IdempotencyResponse.objects.count() == 0


# Differ only in letter case, in trailing spaces, or in accents: two operations each,
# also on a MariaDB/MySQL server whose default collation (the test database is created
# with it) is case- and accent-insensitive and pads spaces.
NEAR_TWINS = [("Key", "key"), ("k ", "k"), ("k", "k  "), ("é", "e"), ("ß", "ss")]


@pytest.mark.django_db
@pytest.mark.parametrize(("first", "second"), NEAR_TWINS)
def test_keys_compare_byte_for_byte(first: str, second: str) -> None:
    _key(key=first)
    _key(key=second)
    assert sorted(IdempotencyKey.objects.values_list("key", flat=True)) == sorted([first, second])
    assert IdempotencyKey.objects.get(key=first).key == first
    assert IdempotencyKey.objects.get(key=second).key == second


@pytest.mark.django_db
@pytest.mark.parametrize(("first", "second"), NEAR_TWINS)
def test_scopes_compare_byte_for_byte(first: str, second: str) -> None:
    _key(scope=first)
    _key(scope=second)
    assert IdempotencyKey.objects.filter(key="k").count() == 2
    assert IdempotencyKey.objects.get(scope=first).scope == first


@pytest.mark.django_db
def test_the_response_model_is_a_read_only_view_of_the_key_row() -> None:
    key = _key()
    assert IdempotencyResponse.objects.count() == 0  # no response, no row in the view
    IdempotencyKey.objects.filter(pk=key.pk).update(
        response_status=200, response_headers=[["X-A", "1"]], response_body=b"ok"
    )
    response = IdempotencyResponse.objects.get()
    assert (response.idempotency_key_id, response.status) == (key.pk, 200)
    assert (response.headers, bytes(response.body)) == ([["X-A", "1"]], b"ok")
    with pytest.raises(NotSupportedError, match="read-only"):
        response.save()
    with pytest.raises(NotSupportedError, match="read-only"):
        response.delete()
    assert IdempotencyResponse.objects.count() == 1


BEFORE = [("idempotency", "0004_outgoing_operations")]
AFTER = [("idempotency", "0005_response_in_key_row")]


def _migrate(targets: list[tuple[str, str]]) -> object:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_stored_responses_into_their_keys_and_back() -> None:
    apps = _migrate(BEFORE)
    try:
        old_key = apps.get_model("idempotency", "IdempotencyKey")  # type: ignore[attr-defined]
        old_response = apps.get_model("idempotency", "IdempotencyResponse")  # type: ignore[attr-defined]
        now = timezone.now()
        common = {"fingerprint": "f" * 64, "method": "POST", "path": "/x/", "expires_at": now}
        done = old_key.objects.create(scope="s", key="done", state="completed", **common)
        running = old_key.objects.create(scope="s", key="running", state="running", **common)
        body = bytes(range(256))  # every byte value survives the copies
        old_response.objects.create(
            idempotency_key=done, status=201, headers=[["Location", "/x/1/"]], body=body
        )

        _migrate(AFTER)
        moved = IdempotencyKey.objects.get(pk=done.pk)
        assert (moved.response_status, moved.response_headers) == (201, [["Location", "/x/1/"]])
        assert bytes(moved.response_body) == body
        assert IdempotencyKey.objects.get(pk=running.pk).response_status is None
        assert list(IdempotencyResponse.objects.values_list("idempotency_key", "status")) == [
            (done.pk, 201)
        ]

        apps = _migrate(BEFORE)
        back = apps.get_model("idempotency", "IdempotencyResponse")  # type: ignore[attr-defined]
        rows = list(back.objects.values_list("idempotency_key", "status", "headers"))
        assert rows == [(done.pk, 201, [["Location", "/x/1/"]])]
        assert bytes(back.objects.get().body) == body
    finally:
        _migrate(executor_leaf())
        IdempotencyKey.objects.all().delete()


def executor_leaf() -> list[tuple[str, str]]:
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes("idempotency")


@pytest.mark.django_db(transaction=True)
def test_a_later_migration_can_alter_the_key_table_around_the_view() -> None:
    # What 0005's docstring asks of a later migration: drop the view, alter the
    # table (SQLite rebuilds it), create the view again; the responses stay readable.
    import importlib

    from django.db import models as django_models

    moved = importlib.import_module("idempotency.migrations.0005_response_in_key_row")
    key = _key()
    IdempotencyKey.objects.filter(pk=key.pk).update(response_status=201, response_body=b"x")
    old = IdempotencyKey._meta.get_field("path")
    new = django_models.TextField("path", null=True)
    new.set_attributes_from_name("path")
    new.model = IdempotencyKey
    try:
        with connection.schema_editor() as editor:
            moved.drop_view(None, editor)
            editor.alter_field(IdempotencyKey, old, new)
            moved.create_view(None, editor)
        assert IdempotencyResponse.objects.get().status == 201
    finally:
        with connection.schema_editor() as editor:
            moved.drop_view(None, editor)
            editor.alter_field(IdempotencyKey, new, old)
            moved.create_view(None, editor)
        IdempotencyKey.objects.all().delete()


def _claim_function_exists() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_proc WHERE proname = 'idempotency_claim'")
        return bool(cursor.fetchone()[0])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_claim_function_comes_and_goes_with_its_migration() -> None:
    from idempotency.store import Existing, Store

    assert _claim_function_exists()
    try:
        _migrate(AFTER)
        assert not _claim_function_exists()
    finally:
        _migrate(executor_leaf())
    assert _claim_function_exists()
    now = timezone.now()
    args = {
        "scope": "s",
        "key": "k",
        "fingerprint": "f" * 64,
        "method": "POST",
        "path": "/x/",
        "now": now,
        "lease_until": now,
        "expires_at": now,
    }
    try:
        claimed = Store("default").claim(**args)
        assert isinstance(claimed, int)
        found = Store("default").claim(**args)
        assert isinstance(found, Existing)
        assert (found.id, found.state, found.lease_live, found.expired) == (
            claimed,
            "running",
            False,
            True,
        )
    finally:
        IdempotencyKey.objects.all().delete()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_without_the_claim_function_a_protected_request_is_a_503_and_the_view_never_runs() -> None:
    # New code on a database not yet migrated to 0006: the claim cannot run, so the
    # request is refused as with any store failure, and nothing is written.
    from django.test import Client

    from tests.testapp.models import Payment

    client = Client()
    try:
        _migrate(AFTER)
        response = client.post(
            "/payments/",
            {"amount": "12.50", "currency": "EUR", "reference": "no-function"},
            content_type="application/json",
            headers={"Idempotency-Key": "before-0006"},
        )
        assert response.status_code == 503
        assert response.json()["code"] == "idempotency_store_unavailable"
        assert not Payment.objects.exists()
    finally:
        _migrate(executor_leaf())
    assert IdempotencyKey.objects.count() == 0
