"""The admin of outgoing operations, through the real admin URLs (``tests/urls.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django.asserts import assertContains, assertNotContains

from idempotency.models import OutgoingAttempt, OutgoingOperation

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:idempotency_outgoingoperation_changelist")
ADD = reverse("admin:idempotency_outgoingoperation_add")


def make_operation(
    name: str, reference: str, state: str = "succeeded", *, attempts: int = 1
) -> OutgoingOperation:
    operation = OutgoingOperation.objects.create(
        name=name,
        reference=reference,
        key=f"key-{name}-{reference}",
        header="Idempotency-Key",
        method="POST",
        url="https://pay.example.test/v1/charges",
        request_headers=[["Content-Type", "application/json"]],
        request_body=b'{"amount":1250}',
        fingerprint="a" * 64,
        state=state,
        attempts=attempts,
        response_status=201 if state == "succeeded" else None,
        response_headers=[["content-type", "application/json"]],
        response_body=b'{"id":"ch_1","status":"paid"}',
    )
    now = timezone.now()
    for number in range(1, attempts + 1):
        last = number == attempts
        OutgoingAttempt.objects.create(
            operation=operation,
            number=number,
            started_at=now,
            finished_at=now,
            status=201 if last and state == "succeeded" else None,
            error="" if last else "TransportError: connection reset",
            verdict="succeeded" if last and state == "succeeded" else "retry",
        )
    return operation


def listed(client: Client, **params: Any) -> set[str]:
    response = client.get(CHANGELIST, params)
    assert response.status_code == 200
    return {op.reference for op in response.context["cl"].result_list}


def test_changelist_filters_by_state_and_name_and_searches(admin_client: Client) -> None:
    make_operation("charge", "pool-tx:1")
    make_operation("charge", "pool-tx:2", "unknown", attempts=3)
    make_operation("refund", "pool-tx:3", "pending", attempts=0)

    response = admin_client.get(CHANGELIST)
    assertContains(response, "pool-tx:2")
    assertContains(response, "https://pay.example.test/v1/charges")
    assert listed(admin_client) == {"pool-tx:1", "pool-tx:2", "pool-tx:3"}
    assert listed(admin_client, state="unknown") == {"pool-tx:2"}
    assert listed(admin_client, name="charge") == {"pool-tx:1", "pool-tx:2"}
    assert listed(admin_client, name="charge", state="pending") == set()
    assert listed(admin_client, q="pool-tx:3") == {"pool-tx:3"}
    assert listed(admin_client, q="key-charge-pool-tx:1") == {"pool-tx:1"}


def test_detail_page_shows_the_request_the_response_and_every_attempt(
    admin_client: Client,
) -> None:
    operation = make_operation("charge", "pool-tx:7", attempts=2)

    url = reverse("admin:idempotency_outgoingoperation_change", args=[operation.pk])
    response = admin_client.get(url)

    assert response.status_code == 200
    assertContains(response, "key-charge-pool-tx:7")
    assertContains(response, "&quot;amount&quot;: 1250")
    assertContains(response, "&quot;status&quot;: &quot;paid&quot;")
    assertContains(response, "TransportError: connection reset")
    assertContains(response, "attempt 2")
    inline = response.context["inline_admin_formsets"][0]
    assert [form.original.number for form in inline] == [1, 2]
    assertNotContains(response, 'name="_save"')
    assertContains(response, 'name="attempt_set-MAX_NUM_FORMS" value="0"')


def test_an_operation_without_a_response_says_so(admin_client: Client) -> None:
    operation = make_operation("charge", "pool-tx:8", "pending", attempts=0)

    url = reverse("admin:idempotency_outgoingoperation_change", args=[operation.pk])
    assertContains(admin_client.get(url), "No response recorded yet.")


def test_it_is_read_only(admin_client: Client) -> None:
    operation = make_operation("charge", "pool-tx:9")
    change = reverse("admin:idempotency_outgoingoperation_change", args=[operation.pk])
    delete = reverse("admin:idempotency_outgoingoperation_delete", args=[operation.pk])

    assert admin_client.get(ADD).status_code == 403
    assert admin_client.post(change, {"state": "failed"}).status_code == 403
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    operation.refresh_from_db()
    assert operation.state == "succeeded"
    assert OutgoingOperation.objects.count() == 1


def test_staff_without_the_view_permission_cannot_browse(
    client: Client, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(user)

    assert client.get(CHANGELIST).status_code == 403
