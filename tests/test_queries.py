"""Query budgets of the hot path. Counts are deterministic, so they are asserted exactly.

Measured with real transactions (``transactional_db``): inside a test-case
transaction, BEGIN/COMMIT would become savepoints and hide what production does.
"""

import pytest
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from tests.helpers import new_key

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]


@csrf_exempt
def no_db(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True}, status=201)


urlpatterns = [path("no-db/", no_db)]

POSTGRES = connection.vendor == "postgresql"
#: PostgreSQL: the claim is one call of the function ``idempotency_claim``, a SELECT,
#: which inserts the key or reads the row that was there. SQLite, MariaDB and MySQL: a
#: read first (the INSERT costs SQLite its single write lock, InnoDB a duplicate-key
#: error and a lock), then a plain INSERT.
CLAIM = ["SELECT"] if POSTGRES else ["SELECT", "INSERT"]
#: The statements of a replay, and of a mismatch: one, on every database.
REPLAY = ["SELECT"]


def _send(
    method: str = "POST", key: str | None = None, body: str = '{"a": 1}', status: int = 201
) -> list[str]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    with CaptureQueriesContext(connection) as queries:
        response = Client().generic(
            method, "/no-db/", body, content_type="application/json", headers=headers
        )
    assert response.status_code == status
    return [q["sql"].split()[0].upper() for q in queries.captured_queries]


def test_no_key_costs_no_query() -> None:
    assert _send() == []


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_with_a_key_cost_no_query(method: str) -> None:
    assert _send(method, key=new_key()) == []


def test_first_request_claims_once_and_completes_once() -> None:
    # The claim, then the fenced UPDATE that stores the response in the key's row, in
    # the view's transaction. On PostgreSQL, the statements of the physical floor: one
    # claim, one UPDATE.
    assert _send(key=new_key()) == [*CLAIM, "BEGIN", "UPDATE", "COMMIT"]


def test_first_request_without_atomic() -> None:
    # One statement stores the response: no transaction of its own.
    with override_settings(IDEMPOTENCY={"ATOMIC": False}):
        assert _send(key=new_key()) == [*CLAIM, "UPDATE"]


def test_mismatch_costs_what_a_replay_costs() -> None:
    key = new_key()
    _send(key=key)
    assert _send(key=key, body='{"a": 2}', status=409) == REPLAY


def test_replay_reads_and_writes_nothing() -> None:
    from idempotency.models import IdempotencyKey, IdempotencyResponse

    key = new_key()
    _send(key=key)
    stored = list(IdempotencyKey.objects.values()), list(IdempotencyResponse.objects.values())
    for _ in range(3):
        # PostgreSQL: the claim function's INSERT conflicts and writes nothing, and it
        # returns the row. SQLite, MariaDB: one read.
        assert _send(key=key) == REPLAY
    assert (list(IdempotencyKey.objects.values()), list(IdempotencyResponse.objects.values())) == (
        stored
    )


def test_invalid_key_costs_no_query() -> None:
    assert _send(key="a,b", status=400) == []


def test_takeover_of_an_expired_response_is_one_statement() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from idempotency.models import IdempotencyKey

    key = new_key()
    _send(key=key)
    IdempotencyKey.objects.filter(key=key).update(expires_at=timezone.now() - timedelta(1))

    statements = _send(key=key)

    # One UPDATE claims the key and clears its old response, in the same row: nothing
    # can commit one without the other. The view then runs and stores the new one.
    assert "DELETE" not in statements
    before_view = statements[: statements.index("BEGIN")]
    assert before_view.count("UPDATE") == 1, statements
    assert IdempotencyKey.objects.get(key=key).response_status == 201


def test_an_unsupported_vendor_runs_no_sql_and_answers_503(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(connection, "vendor", "oracle")
    assert _send(key=new_key(), status=503) == []
    assert "no SQL for the 'oracle' database vendor" in caplog.text
    assert _send(key=None, status=201) == []
