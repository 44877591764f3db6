"""The demo (``testproject``, its ``shop`` app) as its README shows it: the webhook
receiver and the orders API, served by ``testproject.urls``.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client
from shop.models import Order, WebhookEvent

from idempotency.models import IdempotencyKey
from tests.helpers import (
    JSON,
    assert_fresh,
    assert_problem,
    assert_replay_of,
    key_row,
    post,
    session_client,
    token_client,
)

pytestmark = [pytest.mark.urls("testproject.urls"), pytest.mark.django_db]

ORDER = b'{"item": "book", "quantity": 2, "amount": "12.50"}'


# -- the webhook receiver ---------------------------------------------------------------


def test_shop_webhook_deduplicates_deliveries() -> None:
    delivery = b'{"id": "evt_100", "type": "invoice.paid", "data": {"amount": 5}}'
    first = post("/webhooks/events/", delivery)
    second = post("/webhooks/events/", delivery)
    other = post("/webhooks/events/", b'{"id": "evt_101", "type": "invoice.paid"}')

    assert first.status_code == 200
    assert json.loads(first.content) == {"received": "evt_100"}
    assert second.status_code == 200
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 200
    assert "Idempotent-Replayed" not in other.headers
    assert sorted(WebhookEvent.objects.values_list("event_id", flat=True)) == [
        "evt_100",
        "evt_101",
    ]
    assert WebhookEvent.objects.get(event_id="evt_100").payload == json.loads(delivery)
    assert IdempotencyKey.objects.count() == 2
    assert key_row("evt_100").scope == "webhook:events"


def test_shop_webhook_event_ids_are_not_shared_with_anonymous_keys() -> None:
    payment = Client().post(
        "/payments/",
        b'{"amount": "1.00", "currency": "EUR"}',
        content_type=JSON,
        headers={"Idempotency-Key": "evt_7"},
    )
    delivery = post("/webhooks/events/", b'{"id": "evt_7", "type": "invoice.paid"}')

    assert payment.status_code == 201
    assert delivery.status_code == 200
    assert json.loads(delivery.content) == {"received": "evt_7"}
    assert WebhookEvent.objects.filter(event_id="evt_7").count() == 1


@pytest.mark.parametrize("body", [b'{"type": "ping"}', b"not json", b'{"id": true}', b"[]"])
def test_shop_webhook_without_event_id(body: bytes) -> None:
    response = post("/webhooks/events/", body)

    assert_problem(response, 400, "idempotency_key_missing")
    assert WebhookEvent.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.parametrize("event", ["e" * 256, "evt\n1", "\u00e9vt"])
def test_shop_webhook_unusable_event_id(event: str) -> None:
    response = post("/webhooks/events/", json.dumps({"id": event}).encode())

    assert_problem(response, 400, "idempotency_key_invalid")
    assert WebhookEvent.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


def test_shop_webhook_without_middleware(no_middleware: None) -> None:
    delivery = b'{"id": 7}'
    first = post("/webhooks/events/", delivery)
    second = post("/webhooks/events/", delivery)

    assert first.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert WebhookEvent.objects.count() == 1
    assert key_row("7").state == IdempotencyKey.State.COMPLETED


# -- the orders API (OrderViewSet) ------------------------------------------------------


def test_shop_orders(alice: User, bob: User) -> None:
    as_alice, as_bob = token_client(alice), token_client(bob)
    first = post("/api/orders/", ORDER, key="order-1", client=as_alice)
    replay = post("/api/orders/", ORDER, key="order-1", client=as_alice)
    by_session = post("/api/orders/", ORDER, key="order-1", client=session_client(alice))
    bobs = post("/api/orders/", ORDER, key="order-1", client=as_bob)
    mismatch = post(
        "/api/orders/",
        b'{"item": "x", "quantity": 1, "amount": "1"}',
        key="order-1",
        client=as_alice,
    )
    anonymous = post("/api/orders/", ORDER, key="order-2", client=Client())

    assert_fresh(first)
    assert json.loads(first.content)["user"] == alice.pk
    assert_replay_of(first, replay)
    assert_replay_of(first, by_session, session_vary=True)
    assert_fresh(bobs)
    assert json.loads(bobs.content)["user"] == bob.pk
    assert bobs.content != first.content
    assert_problem(mismatch, 409, "idempotency_key_mismatch")
    assert anonymous.status_code == 401
    assert sorted(Order.objects.values_list("user__username", flat=True)) == ["alice", "bob"]
    assert sorted(IdempotencyKey.objects.values_list("scope", flat=True)) == sorted(
        [f"user:{alice.pk}", f"user:{bob.pk}"]
    )


def test_shop_orders_validation_error_is_stored(alice: User) -> None:
    client = token_client(alice)
    bad = b'{"item": "book", "quantity": 1, "amount": "-1"}'
    first = post("/api/orders/", bad, key="k-1", client=client)
    replay = post("/api/orders/", bad, key="k-1", client=client)

    assert first.status_code == 400
    assert json.loads(first.content) == {"amount": ["Ensure this value is greater than 0."]}
    assert_replay_of(first, replay)
    assert Order.objects.count() == 0
