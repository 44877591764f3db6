"""The IETF draft profile of docs/ietf.rst, applied to the testproject.

Each test runs with the page's exact ``IDEMPOTENCY`` dict (or, where the page's
table says so, with the defaults) and checks one row of the page's table.
"""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, override_settings
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from shop.models import Payment

from idempotency.models import IdempotencyKey
from tests import helpers
from tests.helpers import DRAFT, assert_problem

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

PAGE = Path(__file__).resolve().parent.parent / "docs" / "ietf.rst"

PROFILE = {
    "METHODS": ["POST", "PATCH"],
    "REQUIRED": True,
    "MISMATCH_STATUS": 422,
    "CONCURRENT_WAIT": 0,
    "TTL": 24 * 3600,
    "EXEMPT_PATHS": [r"^/admin/"],
}

PAYMENT = b'{"amount": "12.50", "currency": "EUR"}'
KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"


@csrf_exempt
def orders(request: HttpRequest) -> HttpResponse:
    """Any method; writes a row; with X-Duplicate, sends the same request while it runs."""
    payment = Payment.objects.create(amount="1.00", currency="EUR", reference=request.method)
    if request.GET.get("fail"):
        return JsonResponse({"error": "unavailable"}, status=int(request.GET["fail"]))
    if request.headers.get("X-Duplicate"):
        duplicate = Client().generic(
            request.method or "POST",
            request.get_full_path(),
            request.body,
            content_type=request.content_type,
            headers={"Idempotency-Key": request.headers["Idempotency-Key"]},
        )
        return JsonResponse(
            {
                "status": duplicate.status_code,
                "content_type": duplicate.headers["Content-Type"],
                "retry_after": duplicate.headers.get("Retry-After"),
                "body": json.loads(duplicate.content),
            }
        )
    return JsonResponse({"id": payment.pk}, status=201)


urlpatterns = [
    path("orders/", orders),
    path("", include("testproject.urls")),
]


@pytest.fixture
def profile() -> Any:
    with override_settings(IDEMPOTENCY=PROFILE):
        yield


def post(url: str, body: bytes = PAYMENT, key: str | None = KEY, **headers: str) -> Any:
    """The page's example request, unless told otherwise."""
    return helpers.post(url, body, key, **headers)


# -- the page ---------------------------------------------------------------------------


def _first_python_block(text: str) -> str:
    lines = text.splitlines()
    start = lines.index(".. code-block:: python") + 1
    block: list[str] = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("   "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def test_the_page_shows_this_profile() -> None:
    namespace: dict[str, Any] = {}
    exec(_first_python_block(PAGE.read_text()), namespace)
    assert namespace["IDEMPOTENCY"] == PROFILE


# -- what the profile changes ------------------------------------------------------------


def test_missing_key_is_400(profile: None) -> None:
    response = post("/payments/", key=None)

    body = assert_problem(response, 400, "idempotency_key_missing")
    assert body["type"] == f"{DRAFT}#section-2.1"
    assert Payment.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


def test_same_key_other_payload_is_422(profile: None) -> None:
    first = post("/payments/")
    other = post("/payments/", b'{"amount": "99.00", "currency": "EUR"}')

    assert first.status_code == 201
    body = assert_problem(other, 422, "idempotency_key_mismatch")
    assert body["type"] == f"{DRAFT}#section-2.2"
    assert Payment.objects.count() == 1


def test_same_key_while_the_first_runs_is_409(profile: None) -> None:
    response = post("/orders/", X_Duplicate="1")

    assert response.status_code == 200
    duplicate = response.json()
    assert duplicate["status"] == 409
    assert duplicate["content_type"] == "application/problem+json"
    assert duplicate["retry_after"] == "1"
    assert duplicate["body"]["code"] == "idempotency_key_locked"
    assert duplicate["body"]["type"] == f"{DRAFT}#section-2.6"
    assert Payment.objects.count() == 1


def test_patch_is_protected_and_put_and_delete_are_not(profile: None) -> None:
    client = Client()
    patch = client.patch("/orders/", b"{}", content_type="application/json")
    put = client.put("/orders/", b"{}", content_type="application/json")
    delete = client.delete("/orders/")
    put_with_key = [
        client.put(
            "/orders/", b"{}", content_type="application/json", headers={"Idempotency-Key": "k"}
        )
        for _ in range(2)
    ]

    assert_problem(patch, 400, "idempotency_key_missing")
    assert (put.status_code, delete.status_code) == (201, 201)
    assert [r.status_code for r in put_with_key] == [201, 201]
    assert "Idempotent-Replayed" not in put_with_key[1].headers  # the header is ignored
    assert list(Payment.objects.order_by("pk").values_list("reference", flat=True)) == [
        "PUT",
        "DELETE",
        "PUT",
        "PUT",
    ]
    assert IdempotencyKey.objects.count() == 0


def test_the_admin_is_exempt(profile: None) -> None:
    response = Client().post("/admin/login/", {"username": "nobody", "password": "x"})

    assert response.status_code == 200  # the login form again, not a problem
    assert response["Content-Type"].startswith("text/html")


# -- what the profile keeps --------------------------------------------------------------


def test_quoted_and_bare_key_are_one_key(profile: None) -> None:
    first = post("/payments/", key=f'"{KEY}"')
    again = post("/payments/", key=KEY)

    assert first.status_code == 201
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert IdempotencyKey.objects.get().key == KEY
    assert Payment.objects.count() == 1


@pytest.mark.parametrize("value", ['"k";p=1', '"a", "b"', "a,b", '""', '"k'])
def test_malformed_key_is_400(profile: None, value: str) -> None:
    assert_problem(post("/payments/", key=value), 400, "idempotency_key_invalid")
    assert Payment.objects.count() == 0


def test_bare_key_with_a_semicolon_is_taken_as_is(profile: None) -> None:
    assert post("/payments/", key="k;p=1").status_code == 201
    assert IdempotencyKey.objects.get().key == "k;p=1"


def test_fingerprint_is_the_body_bytes(profile: None) -> None:
    first = post("/payments/", b'{"amount": "12.50", "currency": "EUR"}')
    spaced = post("/payments/", b'{"amount":"12.50","currency":"EUR"}')

    assert first.status_code == 201
    assert_problem(spaced, 422, "idempotency_key_mismatch")


def test_key_expires_24_hours_after_the_first_request(profile: None) -> None:
    assert post("/payments/").status_code == 201
    row = IdempotencyKey.objects.get()
    assert row.completed_at is not None
    assert row.expires_at - row.created_at == timedelta(hours=24)


@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_a_failure_is_not_stored_and_the_retry_runs(profile: None, status: int) -> None:
    failed = post(f"/orders/?fail={status}", b"{}")
    retry = post(f"/orders/?fail={status}", b"{}")

    assert (failed.status_code, retry.status_code) == (status, status)
    assert "Idempotent-Replayed" not in retry.headers
    assert Payment.objects.count() == 0  # each attempt's write was rolled back
    assert IdempotencyKey.objects.get().state == IdempotencyKey.State.RELEASED


def test_a_4xx_is_stored_and_replayed(profile: None) -> None:
    first = post("/orders/?fail=404", b"{}")
    again = post("/orders/?fail=404", b"{}")

    assert first.status_code == 404
    assert again.status_code == 404
    assert again.headers["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1


def test_scope_keeps_two_users_apart(profile: None, django_user_model: Any) -> None:
    alice = Client()
    alice.force_login(django_user_model.objects.create_user("alice"))
    bob = Client()
    bob.force_login(django_user_model.objects.create_user("bob"))

    responses = [
        c.post(
            "/payments/", PAYMENT, content_type="application/json", headers={"Idempotency-Key": KEY}
        )
        for c in (alice, bob)
    ]

    assert [r.status_code for r in responses] == [201, 201]
    assert responses[0].content != responses[1].content
    assert Payment.objects.count() == 2


# -- the defaults, for the table's other column ------------------------------------------


def test_defaults_mismatch_is_409_and_missing_key_runs() -> None:
    unprotected = post("/payments/", key=None)
    first = post("/payments/")
    other = post("/payments/", b'{"amount": "99.00", "currency": "EUR"}')

    assert unprotected.status_code == 201
    assert first.status_code == 201
    assert_problem(other, 409, "idempotency_key_mismatch")


def test_defaults_protect_put() -> None:
    put = [
        Client().put(
            "/orders/", b"{}", content_type="application/json", headers={"Idempotency-Key": "k"}
        )
        for _ in range(2)
    ]

    assert [r.status_code for r in put] == [201, 201]
    assert put[1].headers["Idempotent-Replayed"] == "true"
    assert json.loads(put[1].content) == json.loads(put[0].content)
    assert Payment.objects.count() == 1
