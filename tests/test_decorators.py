"""``@idempotent`` and ``@idempotency_exempt`` on function views, sync and async.

Every behaviour runs without the middleware (the decorator alone) and with it
(the ``MIDDLEWARE`` of the test settings), where the request must be claimed exactly
once. Async views go through ``AsyncClient`` (the ASGI handler and the async
middleware chain). The rules every adapter shares (first run and replay, mismatch,
missing and malformed keys, what is never stored) are in ``tests/test_behaviour.py``;
this module tests the decorators' own options and forms.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.db import connection, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.test import Client
from django.test.client import MULTIPART_CONTENT
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from idempotency import engine
from idempotency.decorators import idempotency_exempt, idempotent
from idempotency.fingerprints import canonical_json
from idempotency.models import IdempotencyKey, IdempotencyResponse
from tests.helpers import (
    BODY,
    DRAFT,
    JSON,
    apost,
    assert_problem,
    assert_replay_of,
    key_row,
    post,
)
from tests.testapp.models import Payment

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

# -- views ------------------------------------------------------------------------------


def _amount(request: HttpRequest) -> str:
    if request.content_type != JSON or not request.body:
        return "1.00"
    return str(json.loads(request.body).get("amount", "1.00"))


def _pay(request: HttpRequest, reference: str, status: int = 201) -> JsonResponse:
    payment = Payment.objects.create(amount=_amount(request), currency="EUR", reference=reference)
    response = JsonResponse(
        {"id": payment.pk, "amount": str(payment.amount), "reference": reference}, status=status
    )
    response["X-Payment-Id"] = str(payment.pk)
    response.set_cookie("seen", "yes")
    return response


def _fail(request: HttpRequest) -> HttpResponse | None:
    """Fail after the write if ``?fail=`` asks for it."""
    how = request.GET.get("fail")
    if how == "raise":
        raise RuntimeError("boom")
    if how == "500":
        return JsonResponse({"error": "server"}, status=500)
    if how == "422":
        return JsonResponse({"error": "unprocessable"}, status=422)
    return None


@idempotent
def bare(request: HttpRequest) -> HttpResponse:
    response = _pay(request, "bare")
    return _fail(request) or response


@idempotent()
def called(request: HttpRequest) -> HttpResponse:
    return _pay(request, "called")


#: Keys whose first attempt already failed (flaky views fail once per key).
FAILED_ONCE: set[str] = set()


def _fail_first_attempt(request: HttpRequest) -> None:
    key = request.headers["Idempotency-Key"]
    if key not in FAILED_ONCE:
        FAILED_ONCE.add(key)
        raise RuntimeError("first attempt fails")


@idempotent
def flaky(request: HttpRequest) -> HttpResponse:
    response = _pay(request, "flaky")
    _fail_first_attempt(request)
    return response


@idempotent(required=True)
def required(request: HttpRequest) -> HttpResponse:
    return _pay(request, "required")


@idempotent(ttl=timedelta(minutes=5), lock_timeout=7)
def leased(request: HttpRequest) -> HttpResponse:
    row = IdempotencyKey.objects.get(key=request.headers["Idempotency-Key"])
    assert row.lease_expires_at is not None
    response = _pay(request, "leased")
    response["X-Lease"] = str((row.lease_expires_at - row.created_at).total_seconds())
    response["X-State"] = row.state
    return response


@idempotent(ttl=90)
def short_ttl(request: HttpRequest) -> HttpResponse:
    return _pay(request, "short-ttl")


@idempotent(atomic=False)
def not_atomic(request: HttpRequest) -> HttpResponse:
    response = _pay(request, "not-atomic")
    return _fail(request) or response


@idempotent(fingerprint_func=canonical_json())
def canonical(request: HttpRequest) -> HttpResponse:
    return _pay(request, "canonical")


@idempotent(fingerprint_func=canonical_json(fields=["amount"]))
def amount_only(request: HttpRequest) -> HttpResponse:
    return _pay(request, "amount-only")


def tenant(request: HttpRequest) -> str:
    return "tenant:" + request.headers.get("X-Tenant", "none")


@idempotent(scope_func=tenant)
def per_tenant(request: HttpRequest) -> HttpResponse:
    return _pay(request, "tenant:" + request.headers.get("X-Tenant", "none"))


def event_id(request: HttpRequest) -> Any:
    # Raises on a body that is not JSON (ValueError) or not an object (AttributeError).
    return json.loads(request.body).get("id")


@csrf_exempt
@idempotent(required=True, key_func=event_id)
def webhook(request: HttpRequest) -> HttpResponse:
    data = json.loads(request.body)
    payment = Payment.objects.create(amount="1.00", currency="EUR", reference=str(data["id"]))
    return JsonResponse({"received": data["id"], "payment": payment.pk})


@idempotent(key_func=lambda request: request.headers.get("X-Delivery-Id"))
def delivery(request: HttpRequest) -> HttpResponse:
    return _pay(request, "delivery")


@idempotent(
    required=True,
    ttl=120,
    atomic=False,
    key_func=lambda request: request.headers.get("X-Delivery-Id"),
    fingerprint_func=canonical_json(),
    scope_func=tenant,
    lock_timeout=5,
    concurrent_wait=0.01,
)
def all_options(request: HttpRequest) -> HttpResponse:
    row = IdempotencyKey.objects.get(key=request.headers["X-Delivery-Id"], scope=tenant(request))
    assert row.lease_expires_at is not None
    response = _pay(request, "all-options")
    response["X-Lease"] = str((row.lease_expires_at - row.created_at).total_seconds())
    return _fail(request) or response


@idempotent
@idempotent(ttl=60)
def twice(request: HttpRequest) -> HttpResponse:
    return _pay(request, "twice")


@idempotency_exempt
def exempt(request: HttpRequest) -> HttpResponse:
    return _pay(request, "exempt")


def csrf_token(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"token": get_token(request)})


def unprotected(request: HttpRequest) -> HttpResponse:
    return _pay(request, "unprotected")


def _inner(
    request: HttpRequest, body: bytes
) -> dict[str, Any]:  # a duplicate sent while this request still runs
    response = Client().post(
        request.path,
        body,
        content_type=request.META["CONTENT_TYPE"],
        headers={"Idempotency-Key": request.headers["Idempotency-Key"]},
    )
    return {
        "status": response.status_code,
        "body": json.loads(response.content),
        "content_type": response.headers["Content-Type"],
        "retry_after": response.headers.get("Retry-After"),
    }


@idempotent
def nested(request: HttpRequest) -> HttpResponse:
    response = _pay(request, "nested")
    if request.headers.get("X-Outer"):
        same = _inner(request, request.body)
        other = _inner(request, b'{"amount": "99.00"}')
        response = JsonResponse({"same": same, "other": other}, status=201)
    return response


@idempotent(concurrent_wait=0.05)
def nested_wait(request: HttpRequest) -> HttpResponse:
    response = _pay(request, "nested-wait")
    if request.headers.get("X-Outer"):
        response = JsonResponse({"same": _inner(request, request.body)}, status=201)
    return response


GATE = threading.Event()
ENTERED = threading.Event()


@idempotent(atomic=False, concurrent_wait=30)
def gated(request: HttpRequest) -> HttpResponse:
    ENTERED.set()
    assert GATE.wait(timeout=30)
    return _pay(request, "gated")


# -- async views ------------------------------------------------------------------------


async def _apay(request: HttpRequest, reference: str) -> JsonResponse:
    payment = await Payment.objects.acreate(
        amount=_amount(request), currency="EUR", reference=reference
    )
    response = JsonResponse(
        {"id": payment.pk, "amount": str(payment.amount), "reference": reference}, status=201
    )
    response["X-Payment-Id"] = str(payment.pk)
    response.set_cookie("seen", "yes")
    return response


@idempotent
async def async_bare(request: HttpRequest) -> HttpResponse:
    response = await _apay(request, "async-bare")
    return _fail(request) or response


@idempotent
async def async_flaky(request: HttpRequest) -> HttpResponse:
    response = await _apay(request, "async-flaky")
    _fail_first_attempt(request)
    return response


@idempotent(required=True, atomic=False)
async def async_not_atomic(request: HttpRequest) -> HttpResponse:
    response = await _apay(request, "async-not-atomic")
    return _fail(request) or response


@csrf_exempt
@idempotent(required=True, key_func=event_id)
async def async_webhook(request: HttpRequest) -> HttpResponse:
    data = json.loads(request.body)
    payment = await Payment.objects.acreate(
        amount="1.00", currency="EUR", reference=str(data["id"])
    )
    return JsonResponse({"received": data["id"], "payment": payment.pk})


@idempotency_exempt
async def async_exempt(request: HttpRequest) -> HttpResponse:
    return await _apay(request, "async-exempt")


urlpatterns = [
    path("bare/", bare),
    path("called/", called),
    path("flaky/", flaky),
    path("required/", required),
    path("csrf/", csrf_token),
    path("leased/", leased),
    path("short-ttl/", short_ttl),
    path("not-atomic/", not_atomic),
    path("canonical/", canonical),
    path("amount-only/", amount_only),
    path("tenant/", per_tenant),
    path("webhook/", webhook),
    path("delivery/", delivery),
    path("twice/", twice),
    path("all-options/", all_options),
    path("exempt/", exempt),
    path("unprotected/", unprotected),
    path("nested/", nested),
    path("nested-wait/", nested_wait),
    path("gated/", gated),
    path("async/bare/", async_bare),
    path("async/flaky/", async_flaky),
    path("async/not-atomic/", async_not_atomic),
    path("async/webhook/", async_webhook),
    path("async/exempt/", async_exempt),
]


# -- helpers ----------------------------------------------------------------------------


def stored_headers(key: str) -> dict[str, str]:
    return {name.lower(): value for name, value in key_row(key).response.headers}


# -- the basics, with and without the middleware ----------------------------------------


def test_first_request_runs_and_is_stored(middleware: bool) -> None:
    # With parentheses (the bare decorator is under tests/test_behaviour.py).
    url = "/called/"
    response = post(url, key="k-1")

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    payment = Payment.objects.get()
    assert json.loads(response.content)["id"] == payment.pk
    assert IdempotencyKey.objects.count() == 1
    row = key_row("k-1")
    assert row.state == IdempotencyKey.State.COMPLETED
    assert row.scope == "anonymous"
    assert (row.method, row.path, row.fence) == ("POST", url, 1)
    assert row.lease_expires_at is None
    assert row.expires_at - row.created_at == timedelta(hours=24)
    assert row.response.status == 201
    assert bytes(row.response.body) == response.content
    headers = stored_headers("k-1")
    assert headers["content-type"] == JSON
    assert headers["x-payment-id"] == str(payment.pk)
    assert "set-cookie" not in headers
    assert "date" not in headers


def test_retry_replays_without_running_the_view(middleware: bool) -> None:
    url = "/called/"  # with parentheses, as above
    first = post(url, key="k-1")
    replay = post(url, key="k-1")
    again = post(url, key="k-1")

    assert first.status_code == 201
    assert_replay_of(first, replay, cookie="seen")
    assert_replay_of(first, again, cookie="seen")
    assert Payment.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    assert IdempotencyResponse.objects.count() == 1


def test_sf_string_key_is_the_same_key_as_the_bare_token(middleware: bool) -> None:
    first = post("/bare/", key="order-1")
    replay = post("/bare/", key='"order-1"')

    assert_replay_of(first, replay, cookie="seen")
    assert Payment.objects.count() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["order-1"]


def test_longest_key_is_accepted(middleware: bool) -> None:
    key = "k" * 255
    assert post("/bare/", key=key).status_code == 201
    assert post("/bare/", key=key).headers["Idempotent-Replayed"] == "true"
    assert key_row(key).key == key


def test_required_view_without_key(middleware: bool) -> None:
    response = post("/required/")

    assert_problem(response, 400, "idempotency_key_missing")
    assert json.loads(response.content)["detail"] == (
        "This request needs an Idempotency-Key header."
    )
    assert Payment.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


def test_required_view_with_key(middleware: bool) -> None:
    first = post("/required/", key="k-1")
    replay = post("/required/", key="k-1")

    assert first.status_code == 201
    assert_replay_of(first, replay, cookie="seen")
    assert Payment.objects.count() == 1


@pytest.mark.parametrize("method", ["get", "head", "options"])
def test_safe_methods_ignore_the_header(middleware: bool, method: str) -> None:
    client = Client()
    for _ in range(2):
        response = getattr(client, method)("/required/", headers={"Idempotency-Key": "k-1"})
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response.headers
    assert Payment.objects.count() == 2
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_unsafe_methods_are_protected(middleware: bool, method: str) -> None:
    client = Client()
    send = getattr(client, method)
    first = send("/bare/", BODY, content_type=JSON, headers={"Idempotency-Key": "k-1"})
    replay = send("/bare/", BODY, content_type=JSON, headers={"Idempotency-Key": "k-1"})

    assert first.status_code == 201
    assert_replay_of(first, replay, cookie="seen")
    assert key_row("k-1").method == method.upper()
    assert Payment.objects.count() == 1


# -- claimed exactly once with the middleware -------------------------------------------


def test_with_middleware_the_request_is_claimed_once() -> None:
    response = post("/bare/", key="k-1")

    assert response.status_code == 201  # a second claim would have answered 409 locked
    assert Payment.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    assert IdempotencyResponse.objects.count() == 1
    assert key_row("k-1").fence == 1


def test_decorated_twice_is_claimed_once_by_the_outer_decorator(middleware: bool) -> None:
    first = post("/twice/", key="k-1")
    replay = post("/twice/", key="k-1")

    assert first.status_code == 201
    assert_replay_of(first, replay, cookie="seen")
    assert Payment.objects.count() == 1
    row = key_row("k-1")
    assert row.fence == 1
    assert row.expires_at - row.created_at == timedelta(hours=24)  # the outer one's TTL


def test_middleware_protects_an_undecorated_view_and_skips_the_exempt_one() -> None:
    # The control: the middleware does protect plain views...
    assert post("/unprotected/", key="k-1").status_code == 201
    assert post("/unprotected/", key="k-1").headers["Idempotent-Replayed"] == "true"
    assert Payment.objects.filter(reference="unprotected").count() == 1

    # ...but not an exempt one.
    first = post("/exempt/", key="k-2")
    second = post("/exempt/", key="k-2")

    assert (first.status_code, second.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in second.headers
    assert first.content != second.content
    assert Payment.objects.filter(reference="exempt").count() == 2
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["k-1"]


def test_exempt_view_ignores_even_a_malformed_key() -> None:
    assert post("/exempt/", key="a,b").status_code == 201
    assert IdempotencyKey.objects.count() == 0


def test_exempt_keeps_the_view_callable_and_marked() -> None:
    assert exempt.idempotency_exempt is True  # type: ignore[attr-defined]
    assert exempt.__name__ == "exempt"
    assert async_exempt.idempotency_exempt is True  # type: ignore[attr-defined]
    assert iscoroutinefunction(async_exempt)
    assert bare.idempotency_managed is True  # type: ignore[attr-defined]
    assert bare.__name__ == "bare"
    assert iscoroutinefunction(async_bare)
    assert not iscoroutinefunction(bare)


def test_with_middleware_invalid_key_answered_once() -> None:
    response = post("/required/", key="")

    assert_problem(response, 400, "idempotency_key_invalid")
    assert IdempotencyKey.objects.count() == 0


# -- options ----------------------------------------------------------------------------


def test_ttl_and_lock_timeout_options(middleware: bool) -> None:
    response = post("/leased/", key="k-1")

    assert response.status_code == 201
    assert response.headers["X-State"] == "running"
    assert response.headers["X-Lease"] == "7.0"
    row = key_row("k-1")
    assert row.state == IdempotencyKey.State.COMPLETED
    assert row.expires_at - row.created_at == timedelta(minutes=5)
    assert row.response.status == 201


def test_ttl_in_seconds(middleware: bool) -> None:
    assert post("/short-ttl/", key="k-1").status_code == 201
    row = key_row("k-1")
    assert row.expires_at - row.created_at == timedelta(seconds=90)


def test_expired_key_counts_as_new(middleware: bool) -> None:
    first = post("/short-ttl/", key="k-1")
    IdempotencyKey.objects.filter(key="k-1").update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    again = post("/short-ttl/", key="k-1")

    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again.headers
    assert again.content != first.content
    assert Payment.objects.count() == 2
    row = key_row("k-1")
    assert (row.state, row.fence) == ("completed", 2)
    assert bytes(row.response.body) == again.content
    assert IdempotencyResponse.objects.count() == 1


def test_live_lease_is_locked_and_expired_lease_is_taken_over(middleware: bool) -> None:
    assert post("/bare/", key="k-1").status_code == 201
    # As if a worker had claimed the key and was still running (or had crashed).
    IdempotencyKey.objects.update(response_status=None, response_headers=None, response_body=None)
    IdempotencyKey.objects.filter(key="k-1").update(
        state="running", completed_at=None, lease_expires_at=timezone.now() + timedelta(hours=1)
    )

    locked = post("/bare/", key="k-1")

    assert_problem(locked, 409, "idempotency_key_locked")
    assert locked.headers["Retry-After"] == "1"
    assert Payment.objects.count() == 1

    IdempotencyKey.objects.filter(key="k-1").update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    retry = post("/bare/", key="k-1")

    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry.headers
    assert Payment.objects.count() == 2
    row = key_row("k-1")
    assert (row.state, row.fence) == ("completed", 2)


def test_duplicate_while_running_is_locked_and_different_body_is_mismatch(
    middleware: bool,
) -> None:
    response = post("/nested/", key="k-1", X_Outer="1")

    assert response.status_code == 201
    result = json.loads(response.content)
    assert result["same"]["status"] == 409
    assert result["same"]["body"]["code"] == "idempotency_key_locked"
    assert result["same"]["body"]["type"] == f"{DRAFT}#section-2.6"
    assert result["same"]["content_type"] == "application/problem+json"
    assert result["same"]["retry_after"] == "1"
    assert result["other"]["status"] == 409
    assert result["other"]["body"]["code"] == "idempotency_key_mismatch"
    assert result["other"]["retry_after"] is None
    assert Payment.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    assert key_row("k-1").state == IdempotencyKey.State.COMPLETED


def test_concurrent_wait_gives_up_with_locked(middleware: bool) -> None:
    # The first request cannot finish while its duplicate waits in the same thread.
    response = post("/nested-wait/", key="k-1", X_Outer="1")

    assert response.status_code == 201
    inner = json.loads(response.content)["same"]
    assert inner["status"] == 409
    assert inner["body"]["code"] == "idempotency_key_locked"
    assert Payment.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_wait_replays_the_first_response(
    middleware: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip("threads need a database file or server; this run uses in-memory SQLite")
    GATE.clear()
    ENTERED.clear()
    waiting = threading.Event()
    real_sleep = engine.time.sleep

    class Clock:
        monotonic = staticmethod(engine.time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            waiting.set()  # the duplicate is polling for the first request to finish
            real_sleep(seconds)

    monkeypatch.setattr(engine, "time", Clock)
    results: dict[str, HttpResponse] = {}

    def send(name: str) -> None:
        try:
            results[name] = post("/gated/", key="k-1")
        finally:
            connections.close_all()

    first = threading.Thread(target=send, args=("first",))
    first.start()
    try:
        assert ENTERED.wait(timeout=30)
        second = threading.Thread(target=send, args=("second",))
        second.start()
        assert waiting.wait(timeout=30)
    finally:
        GATE.set()
    first.join(timeout=60)
    second.join(timeout=60)

    assert results["first"].status_code == 201
    assert results["second"].status_code == 201
    assert results["second"].headers["Idempotent-Replayed"] == "true"
    assert results["second"].content == results["first"].content
    assert Payment.objects.count() == 1
    assert key_row("k-1").state == IdempotencyKey.State.COMPLETED


def test_scope_func_separates_tenants(middleware: bool) -> None:
    a = post("/tenant/", key="k-1", X_Tenant="a")
    b = post("/tenant/", key="k-1", X_Tenant="b")
    a_again = post("/tenant/", key="k-1", X_Tenant="a")

    assert (a.status_code, b.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in b.headers
    assert a.content != b.content
    assert_replay_of(a, a_again, cookie="seen")
    assert sorted(IdempotencyKey.objects.values_list("scope", flat=True)) == [
        "tenant:a",
        "tenant:b",
    ]
    assert sorted(Payment.objects.values_list("reference", flat=True)) == [
        "tenant:a",
        "tenant:b",
    ]


def test_canonical_json_fingerprint_ignores_key_order_and_spaces(middleware: bool) -> None:
    first = post("/canonical/", b'{"amount": "5.00", "note": "x"}', key="k-1")
    replay = post("/canonical/", b'{ "note":"x","amount":"5.00" }', key="k-1")
    other = post("/canonical/", b'{"amount": "6.00", "note": "x"}', key="k-1")

    assert first.status_code == 201
    assert_replay_of(first, replay, cookie="seen")
    assert_problem(other, 409, "idempotency_key_mismatch")
    assert Payment.objects.count() == 1


def test_default_fingerprint_compares_bytes(middleware: bool) -> None:
    assert post("/bare/", b'{"amount": "5.00", "note": "x"}', key="k-1").status_code == 201
    other = post("/bare/", b'{"note": "x", "amount": "5.00"}', key="k-1")

    assert_problem(other, 409, "idempotency_key_mismatch")


def test_canonical_json_with_fields_ignores_other_fields(middleware: bool) -> None:
    first = post("/amount-only/", b'{"amount": "5.00", "sent_at": 1}', key="k-1")
    replay = post("/amount-only/", b'{"amount": "5.00", "sent_at": 2}', key="k-1")
    other = post("/amount-only/", b'{"amount": "7.00", "sent_at": 1}', key="k-1")

    assert_replay_of(first, replay, cookie="seen")
    assert_problem(other, 409, "idempotency_key_mismatch")
    assert Payment.objects.count() == 1


def test_key_func_from_a_delivery_header(middleware: bool) -> None:
    first = post("/delivery/", X_Delivery_Id="d-1")
    # The Idempotency-Key header is not where this view looks.
    replay = post("/delivery/", key="something-else", X_Delivery_Id="d-1")
    unprotected_ = post("/delivery/", key="d-1")

    assert_replay_of(first, replay, cookie="seen")
    assert unprotected_.status_code == 201
    assert "Idempotent-Replayed" not in unprotected_.headers
    assert Payment.objects.count() == 2
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["d-1"]


def test_all_options_at_once(middleware: bool) -> None:
    missing = post("/all-options/", key="header-is-not-read", X_Tenant="a")
    first = post("/all-options/", b'{"amount": "4.00", "n": 1}', X_Delivery_Id="d-1", X_Tenant="a")
    replay = post("/all-options/", b'{"n": 1, "amount": "4.00"}', X_Delivery_Id="d-1", X_Tenant="a")
    other_tenant = post("/all-options/", b"{}", X_Delivery_Id="d-1", X_Tenant="b")
    with pytest.raises(RuntimeError):
        post("/all-options/?fail=raise", X_Delivery_Id="d-2", X_Tenant="a")

    assert_problem(missing, 400, "idempotency_key_missing")
    assert first.status_code == 201
    assert first.headers["X-Lease"] == "5.0"
    assert_replay_of(first, replay, cookie="seen")
    assert other_tenant.status_code == 201
    assert "Idempotent-Replayed" not in other_tenant.headers
    row = key_row("d-1", scope="tenant:a")
    assert row.expires_at - row.created_at == timedelta(seconds=120)
    assert key_row("d-1", scope="tenant:b").state == IdempotencyKey.State.COMPLETED
    # atomic=False: the write of the view that raised stays.
    assert key_row("d-2").state == IdempotencyKey.State.RELEASED
    assert Payment.objects.count() == 3


# -- failures: atomic and not --------------------------------------------------------


def test_exception_rolls_back_and_releases(middleware: bool) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        post("/bare/?fail=raise", key="k-1")

    assert Payment.objects.count() == 0
    row = key_row("k-1")
    assert row.state == IdempotencyKey.State.RELEASED
    assert row.lease_expires_at is None
    assert IdempotencyResponse.objects.count() == 0

    retry = post("/bare/?fail=raise", key="k-1", client=Client(raise_request_exception=False))
    assert retry.status_code == 500
    assert Payment.objects.count() == 0

    ok = post("/bare/", key="k-2")
    assert ok.status_code == 201
    assert Payment.objects.count() == 1


def test_retry_after_exception_runs_again(middleware: bool) -> None:
    with pytest.raises(RuntimeError, match="first attempt fails"):
        post("/flaky/", key="k-1")
    assert Payment.objects.count() == 0
    assert key_row("k-1").state == IdempotencyKey.State.RELEASED

    retry = post("/flaky/", key="k-1")
    replay = post("/flaky/", key="k-1")

    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry.headers
    assert_replay_of(retry, replay, cookie="seen")
    assert Payment.objects.count() == 1
    row = key_row("k-1")
    assert (row.state, row.fence, row.response.status) == ("completed", 2, 201)


def test_atomic_false_keeps_writes_of_a_failed_view(middleware: bool) -> None:
    with pytest.raises(RuntimeError):
        post("/not-atomic/?fail=raise", key="k-1")

    assert Payment.objects.count() == 1
    assert key_row("k-1").state == IdempotencyKey.State.RELEASED

    assert post("/not-atomic/?fail=500", key="k-2").status_code == 500
    assert Payment.objects.count() == 2
    assert key_row("k-2").state == IdempotencyKey.State.RELEASED


def test_atomic_false_still_replays(middleware: bool) -> None:
    first = post("/not-atomic/", key="k-1")
    replay = post("/not-atomic/", key="k-1")

    assert_replay_of(first, replay, cookie="seen")
    assert Payment.objects.count() == 1
    assert key_row("k-1").state == IdempotencyKey.State.COMPLETED


def test_storable_4xx_is_replayed_and_its_writes_kept(middleware: bool) -> None:
    first = post("/bare/?fail=422", key="k-1")
    replay = post("/bare/?fail=422", key="k-1")

    assert first.status_code == 422
    assert replay.status_code == 422
    assert replay.content == first.content == b'{"error": "unprocessable"}'
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1


# -- webhooks: the key comes from the body ----------------------------------------------


def test_webhook_delivered_twice_runs_once(middleware: bool) -> None:
    delivery = b'{"id": "evt_1", "type": "payment.succeeded"}'
    first = post("/webhook/", delivery)
    second = post("/webhook/", delivery)

    assert first.status_code == 200
    assert json.loads(first.content)["received"] == "evt_1"
    assert second.status_code == 200
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"
    assert list(Payment.objects.values_list("reference", flat=True)) == ["evt_1"]
    row = key_row("evt_1")
    assert (row.scope, row.state) == ("anonymous", "completed")


def test_webhook_new_event_id_is_a_new_row(middleware: bool) -> None:
    assert post("/webhook/", b'{"id": "evt_1"}').status_code == 200
    second = post("/webhook/", b'{"id": "evt_2"}')

    assert second.status_code == 200
    assert "Idempotent-Replayed" not in second.headers
    assert sorted(Payment.objects.values_list("reference", flat=True)) == ["evt_1", "evt_2"]
    assert IdempotencyKey.objects.count() == 2


def test_webhook_numeric_event_id(middleware: bool) -> None:
    assert post("/webhook/", b'{"id": 42}').status_code == 200
    assert post("/webhook/", b'{"id": 42}').headers["Idempotent-Replayed"] == "true"
    assert key_row("42").state == IdempotencyKey.State.COMPLETED
    assert Payment.objects.count() == 1


def test_webhook_same_id_different_payload_is_a_mismatch(middleware: bool) -> None:
    assert post("/webhook/", b'{"id": "evt_1", "n": 1}').status_code == 200

    assert_problem(post("/webhook/", b'{"id": "evt_1", "n": 2}'), 409, "idempotency_key_mismatch")
    assert Payment.objects.count() == 1


def test_webhook_ignores_the_header(middleware: bool) -> None:
    assert post("/webhook/", b'{"id": "evt_1"}', key="hdr").status_code == 200
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["evt_1"]


def test_webhook_without_id_is_missing(middleware: bool) -> None:
    response = post("/webhook/", b'{"type": "ping"}', key="header-key-is-not-used")

    assert_problem(response, 400, "idempotency_key_missing")
    assert Payment.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
def test_key_func_that_raises_is_invalid_not_500(middleware: bool, body: bytes) -> None:
    response = post("/webhook/", body, client=Client(raise_request_exception=False))

    assert_problem(response, 400, "idempotency_key_invalid")
    assert json.loads(response.content)["detail"] == "The key could not be read from the request."
    assert Payment.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.parametrize(
    "event", ["x" * 256, "evt\n1", "evt\x001", "\u00e9vt", "tab\tbed", "\u2028"]
)
def test_key_func_result_too_long_or_not_printable_is_invalid(middleware: bool, event: str) -> None:
    response = post("/webhook/", json.dumps({"id": event}).encode())

    assert_problem(response, 400, "idempotency_key_invalid")
    assert Payment.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


def test_key_func_empty_string_is_invalid(middleware: bool) -> None:
    assert_problem(post("/webhook/", b'{"id": ""}'), 400, "idempotency_key_invalid")
    assert IdempotencyKey.objects.count() == 0


# -- async views ------------------------------------------------------------------------


def test_async_sync_share_the_store(middleware: bool) -> None:
    first = apost("/async/bare/", key="k-1")
    replay = post("/async/bare/", key="k-1")  # WSGI client, same async view

    assert_replay_of(first, replay, cookie="seen")
    assert Payment.objects.count() == 1


def test_async_exception_rolls_back_and_releases(middleware: bool) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        apost("/async/bare/?fail=raise", key="k-1")

    assert Payment.objects.count() == 0
    assert key_row("k-1").state == IdempotencyKey.State.RELEASED
    assert IdempotencyResponse.objects.count() == 0


def test_async_retry_after_exception_runs_again(middleware: bool) -> None:
    with pytest.raises(RuntimeError, match="first attempt fails"):
        apost("/async/flaky/", key="k-1")
    assert Payment.objects.count() == 0
    assert key_row("k-1").state == IdempotencyKey.State.RELEASED

    retry = apost("/async/flaky/", key="k-1")
    replay = apost("/async/flaky/", key="k-1")

    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry.headers
    assert_replay_of(retry, replay, cookie="seen")
    assert Payment.objects.count() == 1
    row = key_row("k-1")
    assert (row.state, row.fence) == ("completed", 2)


def test_async_atomic_false_keeps_writes(middleware: bool) -> None:
    with pytest.raises(RuntimeError):
        apost("/async/not-atomic/?fail=raise", key="k-1")

    assert Payment.objects.count() == 1
    assert key_row("k-1").state == IdempotencyKey.State.RELEASED


def test_async_required(middleware: bool) -> None:
    assert_problem(apost("/async/not-atomic/"), 400, "idempotency_key_missing")
    assert Payment.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


def test_async_webhook(middleware: bool) -> None:
    first = apost("/async/webhook/", b'{"id": "evt_9"}')
    second = apost("/async/webhook/", b'{"id": "evt_9"}')
    other = apost("/async/webhook/", b'{"id": "evt_10"}')
    missing = apost("/async/webhook/", b"{}")
    broken = apost("/async/webhook/", b"{")
    too_long = apost("/async/webhook/", json.dumps({"id": "e" * 256}).encode())

    assert first.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert other.status_code == 200
    assert "Idempotent-Replayed" not in other.headers
    assert_problem(missing, 400, "idempotency_key_missing")
    assert_problem(broken, 400, "idempotency_key_invalid")
    assert_problem(too_long, 400, "idempotency_key_invalid")
    assert sorted(Payment.objects.values_list("reference", flat=True)) == ["evt_10", "evt_9"]
    assert IdempotencyKey.objects.count() == 2


def test_async_exempt_with_middleware() -> None:
    first = apost("/async/exempt/", key="k-1")
    second = apost("/async/exempt/", key="k-1")

    assert (first.status_code, second.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in second.headers
    assert Payment.objects.count() == 2
    assert IdempotencyKey.objects.count() == 0


def test_async_with_middleware_claimed_once() -> None:
    response = apost("/async/bare/", key="k-1")

    assert response.status_code == 201
    assert Payment.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    assert key_row("k-1").fence == 1


# -- bodies that a CSRF check or a form parser might read first ------------------------


def test_multipart_body_read_by_the_csrf_check_still_fingerprints(middleware: bool) -> None:
    client = Client(enforce_csrf_checks=True)
    token = json.loads(client.get("/csrf/").content)["token"]
    data = {"csrfmiddlewaretoken": token, "amount": "3.00", "note": "x"}

    def send(form: dict[str, str]) -> HttpResponse:
        return client.post(
            "/bare/", form, content_type=MULTIPART_CONTENT, headers={"Idempotency-Key": "k-1"}
        )

    first = send(data)
    replay = send(data)
    other = send({**data, "note": "y"})
    forged = client.post(
        "/bare/",
        {"amount": "3.00"},
        content_type=MULTIPART_CONTENT,
        headers={"Idempotency-Key": "k-2"},
    )

    assert first.status_code == 201
    assert_replay_of(first, replay, cookie="seen")
    assert_problem(other, 409, "idempotency_key_mismatch")
    assert forged.status_code == 403
    assert Payment.objects.count() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["k-1"]


@pytest.fixture(autouse=True)
def _reset_module_state() -> Iterator[None]:
    FAILED_ONCE.clear()
    yield
    GATE.set()
    FAILED_ONCE.clear()
