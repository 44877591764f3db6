"""``PREPARED_STATEMENTS``: the store's statements as named prepared statements on
PostgreSQL (psycopg 3), and never one without the setting.

``pg_prepared_statements`` lists what the test's own server connection has
prepared, so these tests look at the server, not at the app's own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from tests.conftest import PREPARED_BY_DEFAULT
from tests.helpers import new_key

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.urls(__name__),
    pytest.mark.django_db(transaction=True),
]


@csrf_exempt
def created(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True}, status=201)


urlpatterns = [path("created/", created)]


def _send(key: str, body: str = '{"a": 1}') -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = Client().post(
            "/created/", body, content_type="application/json", headers={"Idempotency-Key": key}
        )
    return response.status_code, [q["sql"].split()[0].upper() for q in queries.captured_queries]


def _prepared() -> list[str]:
    """The statements of the app's tables that this connection has prepared."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        statements = [str(row[0]) for row in cursor.fetchall()]
    return sorted(s for s in statements if "idempotency_" in s)


@pytest.fixture(autouse=True)
def _fresh_connection() -> Iterator[None]:
    # Prepared statements live as long as the server connection: start without any.
    connection.close()
    yield
    connection.close()


def _round() -> list[tuple[int, list[str]]]:
    key = new_key()
    return [_send(key), _send(key), _send(key, '{"a": 2}')]  # first, replay, mismatch


@pytest.mark.skipif(PREPARED_BY_DEFAULT, reason="this run turns PREPARED_STATEMENTS on")
def test_off_by_default_nothing_is_prepared(settings: Any) -> None:
    answers = _round() + _round()

    assert [status for status, _ in answers] == [201, 201, 409] * 2
    assert _prepared() == []


def test_on_the_store_prepares_its_statements_once_per_connection() -> None:
    with override_settings(IDEMPOTENCY={"PREPARED_STATEMENTS": True}):
        first_round = _round()
        after_one = _prepared()
        second_round = _round()
        after_two = _prepared()

    assert [status for status, _ in first_round + second_round] == [201, 201, 409] * 2
    # The claim (the call of idempotency_claim) and the completion (the UPDATE that
    # stores the response); prepared the first time, reused after.
    assert sorted(s.split()[0].upper() for s in after_one) == ["SELECT", "UPDATE"]
    assert any("idempotency_claim(" in s for s in after_one), after_one
    assert after_two == after_one


def test_on_or_off_the_statements_are_the_same() -> None:
    with override_settings(IDEMPOTENCY={"PREPARED_STATEMENTS": False}):
        plain = _round()
    with override_settings(IDEMPOTENCY={"PREPARED_STATEMENTS": True}):
        prepared = _round()

    # The claim function reads an existing key too: a replay or a mismatch is one
    # statement either way; preparing saves its parsing, not a round trip.
    expected = [["SELECT", "BEGIN", "UPDATE", "COMMIT"], ["SELECT"], ["SELECT"]]
    assert [statements for _, statements in plain] == expected
    assert [statements for _, statements in prepared] == expected


def test_on_a_takeover_and_a_release_are_prepared_too() -> None:
    from django.utils import timezone

    from idempotency.models import IdempotencyKey

    key = new_key()
    with override_settings(IDEMPOTENCY={"PREPARED_STATEMENTS": True}):
        assert _send(key)[0] == 201
        # Expire it, so that the next request takes it over.
        IdempotencyKey.objects.filter(key=key).update(expires_at=timezone.now())
        status, statements = _send(key)
        prepared = _prepared()

    assert status == 201
    assert "UPDATE" in statements
    assert any(s.split()[0].upper() == "UPDATE" for s in prepared), prepared
