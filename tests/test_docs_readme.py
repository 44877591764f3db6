"""The function views of README.md, run as written.

The README's code block is read from the file and executed, so the two cannot
drift apart. The block leaves two functions to the reader (``create_payment``
and ``handle_event``, "your code"); here they record their calls. The variants
that show why a line is there are the same block without that line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client
from django.urls import path

from idempotency.models import IdempotencyKey
from tests import helpers
from tests.helpers import assert_problem

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

README = Path(__file__).resolve().parent.parent / "README.md"
FINGERPRINT_LINE = "fingerprint_func=canonical_json(),"
CSRF_EXEMPT_LINE = "@csrf_exempt"


def readme_views_block() -> str:
    """The README's Python block that defines the ``pay`` and ``webhook`` views."""
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.DOTALL | re.MULTILINE)
    found = [block for block in blocks if "def pay(" in block and "def webhook(" in block]
    assert len(found) == 1, "README.md should have one block with both views"
    return found[0]


calls: list[tuple[str, Any]] = []


def create_payment(data: dict[str, Any]) -> Any:
    calls.append(("create_payment", data))
    return SimpleNamespace(pk=len(calls))


def handle_event(event: dict[str, Any]) -> None:
    calls.append(("handle_event", event))


def run(code: str) -> dict[str, Any]:
    """Execute ``code`` as a module whose reader wrote ``create_payment`` and ``handle_event``."""
    namespace: dict[str, Any] = {
        "__name__": f"{__name__}.readme",
        "create_payment": create_payment,
        "handle_event": handle_event,
    }
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def without(code: str, start: str) -> str:
    """``code`` without its lines that start (after the indent) with ``start``."""
    lines = code.splitlines(keepends=True)
    kept = [line for line in lines if not line.lstrip().startswith(start)]
    assert len(kept) < len(lines), f"no line {start!r} in the README's block"
    return "".join(kept)


AS_WRITTEN = run(readme_views_block())
NO_FINGERPRINT = run(without(readme_views_block(), FINGERPRINT_LINE))
NO_CSRF_EXEMPT = run(without(readme_views_block(), CSRF_EXEMPT_LINE))

urlpatterns = [
    path("pay/", AS_WRITTEN["pay"]),
    path("webhook/", AS_WRITTEN["webhook"]),
    path("variants/webhook-without-fingerprint/", NO_FINGERPRINT["webhook"]),
    path("variants/pay-without-csrf-exempt/", NO_CSRF_EXEMPT["pay"]),
]


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


def api_client() -> Client:
    """A client as an API client is: no CSRF cookie or token, and Django checks for them."""
    return Client(enforce_csrf_checks=True)


def post(url: str, body: bytes, **headers: str) -> Any:
    return helpers.post(url, body, client=api_client(), **headers)


PAYMENT = json.dumps({"amount": "12.50", "currency": "EUR"}).encode()
EVENT = b'{"id": "evt_1", "type": "invoice.paid", "data": {"amount": 1250}}'
# The same event as another sender's JSON library writes it: other key order, no spaces.
EVENT_REORDERED = b'{"type":"invoice.paid","data":{"amount":1250},"id":"evt_1"}'


def test_the_readme_block_is_the_one_with_the_fixes() -> None:
    block = readme_views_block()
    assert "@csrf_exempt  # API clients send no CSRF token" in block
    assert f"    {FINGERPRINT_LINE}  # the same JSON with its keys reordered" in block
    assert "from idempotency.fingerprints import canonical_json" in block


def test_pay_answers_an_api_client_and_replays_its_retry() -> None:
    first = post("/pay/", PAYMENT, **{"Idempotency-Key": "pay-1"})
    retry = post("/pay/", PAYMENT, **{"Idempotency-Key": "pay-1"})

    assert first.status_code == 201
    assert first.json() == {"id": 1}
    assert "Idempotent-Replayed" not in first
    assert retry.status_code == 201
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert calls == [("create_payment", {"amount": "12.50", "currency": "EUR"})]


def test_pay_requires_a_key() -> None:
    assert_problem(post("/pay/", PAYMENT), 400, "idempotency_key_missing")
    assert calls == []


def test_without_csrf_exempt_pay_answers_an_api_client_403() -> None:
    response = post("/variants/pay-without-csrf-exempt/", PAYMENT, **{"Idempotency-Key": "pay-1"})

    assert response.status_code == 403
    assert b"CSRF" in response.content
    assert calls == []
    assert IdempotencyKey.objects.count() == 0


def test_webhook_redelivery_with_the_keys_reordered_replays() -> None:
    first = post("/webhook/", EVENT)
    again = post("/webhook/", EVENT_REORDERED)

    assert first.status_code == 200
    assert first.json() == {"received": True}
    assert again.status_code == 200
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert calls == [("handle_event", json.loads(EVENT))]
    row = IdempotencyKey.objects.get()
    assert (row.scope, row.key) == ("webhooks", "evt_1")


def test_webhook_the_same_id_with_other_content_is_a_mismatch() -> None:
    post("/webhook/", EVENT)
    other = post("/webhook/", b'{"id": "evt_1", "type": "invoice.paid", "data": {"amount": 1}}')

    assert_problem(other, 409, "idempotency_key_mismatch")
    assert len(calls) == 1


def test_without_the_fingerprint_func_the_reordered_body_is_a_mismatch() -> None:
    url = "/variants/webhook-without-fingerprint/"
    first = post(url, EVENT)
    again = post(url, EVENT_REORDERED)

    assert first.status_code == 200
    assert_problem(again, 409, "idempotency_key_mismatch")
    assert len(calls) == 1
