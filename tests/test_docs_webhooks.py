"""The webhook examples of docs/webhooks.rst, run end to end.

The views below are the page's code, copied; ``test_the_page_shows_this_code``
fails when the two drift apart. Only the two ``handle_*`` functions differ:
here they record each call and write a row, so that a test can count how often
the handler ran and see its writes rolled back.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import textwrap
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.http import JsonResponse
from django.test import Client, RequestFactory
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from shop.models import WebhookEvent

from idempotency.decorators import idempotent
from idempotency.models import IdempotencyKey
from tests.helpers import assert_problem, assert_replay_of, key_row

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

PAGE = Path(__file__).resolve().parent.parent / "docs" / "webhooks.rst"
STRIPE_SECRET = "whsec_test_secret"
GITHUB_SECRET = "github-test-secret"


# -- what the handlers did --------------------------------------------------------------


class Handled:
    """Calls of the handlers, and what a test wants them to do on the next call."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: list[str] = []
        self.fail_next = False
        self.during: Callable[[], None] | None = None

    def record(self, name: str) -> None:
        self.calls.append(name)
        if self.during is not None:
            during, self.during = self.during, None
            during()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the handler failed")


HANDLED = Handled()


# -- the page's code --------------------------------------------------------------------


def signed(check):
    """Answer 400, before any key is claimed, to a request that check() refuses."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not check(request):
                return JsonResponse({"error": "invalid_signature"}, status=400)
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


STRIPE_TOLERANCE = 300  # seconds, as in stripe-python


def stripe_signature_ok(request):
    """Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">."""
    header = request.headers.get("Stripe-Signature", "")
    pairs = [item.partition("=") for item in header.split(",")]
    timestamp = next((value for name, _, value in pairs if name == "t"), "")
    signatures = [value.encode() for name, _, value in pairs if name == "v1"]
    if not (timestamp.isascii() and timestamp.isdigit()) or not signatures:
        return False
    if time.time() - int(timestamp) > STRIPE_TOLERANCE:
        return False  # an old delivery, sent again by someone else
    secret = settings.STRIPE_WEBHOOK_SECRET.encode()
    signed_payload = timestamp.encode() + b"." + request.body
    expected = hmac.new(secret, signed_payload, hashlib.sha256).hexdigest().encode()
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


def stripe_event_id(request):
    """The event's "id" ("evt_..."), or None when the body has none."""
    try:
        event = json.loads(request.body)
    except ValueError:
        return None
    event_id = event.get("id") if isinstance(event, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


def handle_stripe_event(event: dict[str, Any]) -> None:
    WebhookEvent.objects.create(event_id=event["id"], type=event.get("type", ""), payload=event)
    HANDLED.record(event["id"])


@csrf_exempt
@require_POST
@signed(stripe_signature_ok)
@idempotent(
    required=True,
    key_func=stripe_event_id,
    fingerprint_func=stripe_event_id,
    scope_func=lambda request: "stripe",
    ttl=timedelta(days=4),
)
def stripe_webhook(request):
    event = json.loads(request.body)
    handle_stripe_event(event)
    return JsonResponse({"received": event["id"]})


def signed_stripe_event_id(request):
    return stripe_event_id(request) if stripe_signature_ok(request) else None


def github_signature_ok(request):
    """X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>."""
    secret = settings.GITHUB_WEBHOOK_SECRET.encode()
    expected = "sha256=" + hmac.new(secret, request.body, hashlib.sha256).hexdigest()
    received = request.headers.get("X-Hub-Signature-256", "")
    return hmac.compare_digest(expected.encode(), received.encode())


def github_delivery(request):
    """The delivery GUID; a redelivery carries the same one."""
    return request.headers.get("X-GitHub-Delivery")


def github_hook(request):
    """One namespace per webhook: GitHub sends one GUID to every hook of an event."""
    return "github:" + request.headers.get("X-GitHub-Hook-ID", "")


def handle_github_event(name: str, payload: dict[str, Any]) -> None:
    WebhookEvent.objects.create(event_id=uuid.uuid4().hex, type=name, payload=payload)
    HANDLED.record(f"{name}:{payload.get('hook')}")


@csrf_exempt
@require_POST
@signed(github_signature_ok)
@idempotent(
    required=True,
    key_func=github_delivery,
    fingerprint_func=github_delivery,
    scope_func=github_hook,
    ttl=timedelta(days=30),
)
def github_webhook(request):
    handle_github_event(request.headers.get("X-GitHub-Event", ""), json.loads(request.body))
    return JsonResponse({"received": request.headers["X-GitHub-Delivery"]})


# -- the variants the page argues against, or offers as an alternative -------------------


@csrf_exempt
@idempotent(
    required=True,
    key_func=stripe_event_id,
    fingerprint_func=stripe_event_id,
    scope_func=lambda request: "stripe",
)
def stripe_checked_inside(request):
    """The wrong order: the signature is checked after the key was claimed."""
    if not stripe_signature_ok(request):
        return JsonResponse({"error": "invalid_signature"}, status=400)
    event = json.loads(request.body)
    handle_stripe_event(event)
    return JsonResponse({"received": event["id"]})


@csrf_exempt
@idempotent(
    required=True,
    key_func=signed_stripe_event_id,
    fingerprint_func=stripe_event_id,
    scope_func=lambda request: "stripe",
)
def stripe_checked_in_key_func(request):
    event = json.loads(request.body)
    handle_stripe_event(event)
    return JsonResponse({"received": event["id"]})


@csrf_exempt
@signed(stripe_signature_ok)
@idempotent(required=True, key_func=stripe_event_id, scope_func=lambda request: "stripe")
def stripe_body_fingerprint(request):
    """The default fingerprint: the body bytes."""
    event = json.loads(request.body)
    handle_stripe_event(event)
    return JsonResponse({"received": event["id"]})


@csrf_exempt
@signed(github_signature_ok)
@idempotent(
    required=True,
    key_func=github_delivery,
    fingerprint_func=github_delivery,
    scope_func=lambda request: "github",
)
def github_one_scope(request):
    """One scope for every GitHub webhook."""
    handle_github_event(request.headers.get("X-GitHub-Event", ""), json.loads(request.body))
    return JsonResponse({"received": request.headers["X-GitHub-Delivery"]})


@csrf_exempt
@signed(stripe_signature_ok)
@idempotent(required=True, key_func=stripe_event_id, fingerprint_func=stripe_event_id)
def stripe_default_scope(request):
    """No scope function: the shared anonymous namespace."""
    event = json.loads(request.body)
    handle_stripe_event(event)
    return JsonResponse({"received": event["id"]})


@csrf_exempt
def anonymous_endpoint(request):
    """Another endpoint, open to anonymous clients; the middleware protects it."""
    return JsonResponse({"ok": True}, status=201)


urlpatterns = [
    path("anonymous/", anonymous_endpoint),
    path("variants/stripe-default-scope/", stripe_default_scope),
    path("webhooks/stripe/", stripe_webhook),
    path("webhooks/github/", github_webhook),
    path("variants/stripe-checked-inside/", stripe_checked_inside),
    path("variants/stripe-checked-in-key-func/", stripe_checked_in_key_func),
    path("variants/stripe-body-fingerprint/", stripe_body_fingerprint),
    path("variants/github-one-scope/", github_one_scope),
]


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _secrets_and_fresh_handlers(settings: Any) -> None:
    settings.STRIPE_WEBHOOK_SECRET = STRIPE_SECRET
    settings.GITHUB_WEBHOOK_SECRET = GITHUB_SECRET
    HANDLED.reset()


def stripe_event(event_id: str = "evt_1", **fields: Any) -> bytes:
    return json.dumps(
        {"id": event_id, "object": "event", "type": "invoice.paid", **fields}
    ).encode()


def stripe_header(body: bytes, *, secret: str = STRIPE_SECRET, at: int | None = None) -> str:
    timestamp = str(int(time.time()) if at is None else at)
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def deliver_stripe(
    body: bytes,
    signature: str | None = None,
    *,
    url: str = "/webhooks/stripe/",
    client: Client | None = None,
) -> Any:
    """One delivery, signed anew like each of Stripe's attempts unless told otherwise."""
    headers = {"Stripe-Signature": stripe_header(body) if signature is None else signature}
    return (client or Client()).post(url, body, content_type="application/json", headers=headers)


def github_payload(hook: str = "1") -> bytes:
    return json.dumps({"action": "opened", "hook": hook, "number": 7}).encode()


def github_signature(body: bytes, secret: str = GITHUB_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver_github(
    body: bytes,
    guid: str | None = "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    *,
    hook: str = "1",
    signature: str | None = None,
    url: str = "/webhooks/github/",
    client: Client | None = None,
) -> Any:
    headers = {
        "X-GitHub-Event": "issues",
        "X-GitHub-Hook-ID": hook,
        "X-Hub-Signature-256": github_signature(body) if signature is None else signature,
    }
    if guid is not None:
        headers["X-GitHub-Delivery"] = guid
    return (client or Client()).post(url, body, content_type="application/json", headers=headers)


# -- the page and this module -----------------------------------------------------------


def _code_blocks(text: str) -> str:
    blocks: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        body: list[str] = []
        for following in lines[i + 1 :]:
            if following.strip() and not following.startswith("   "):
                break
            body.append(following)
        blocks.append(textwrap.dedent("\n".join(body)))
    return "\n".join(blocks)


@pytest.mark.parametrize(
    "obj",
    [
        signed,
        stripe_signature_ok,
        stripe_event_id,
        stripe_webhook,
        signed_stripe_event_id,
        github_signature_ok,
        github_delivery,
        github_hook,
        github_webhook,
    ],
    ids=lambda obj: obj.__name__,
)
def test_the_page_shows_this_code(obj: Any) -> None:
    assert inspect.getsource(obj).strip() in _code_blocks(PAGE.read_text())


def test_the_page_shows_the_tolerance() -> None:
    line = "STRIPE_TOLERANCE = 300  # seconds, as in stripe-python"
    assert line in inspect.getsource(inspect.getmodule(test_the_page_shows_the_tolerance))
    assert line in _code_blocks(PAGE.read_text())


# -- Stripe -----------------------------------------------------------------------------


def test_stripe_first_delivery_runs_the_handler_once(middleware: bool) -> None:
    response = deliver_stripe(stripe_event("evt_1"))

    assert response.status_code == 200
    assert response.json() == {"received": "evt_1"}
    assert "Idempotent-Replayed" not in response.headers
    assert HANDLED.calls == ["evt_1"]
    assert list(WebhookEvent.objects.values_list("event_id", flat=True)) == ["evt_1"]
    row = key_row("evt_1")
    assert (row.scope, row.state) == ("stripe", IdempotencyKey.State.COMPLETED)
    assert row.completed_at is not None
    assert row.expires_at - row.created_at == timedelta(days=4)


def test_stripe_redelivery_replays_without_running_the_handler(middleware: bool) -> None:
    body = stripe_event("evt_1")
    first = deliver_stripe(body, stripe_header(body, at=int(time.time()) - 60))
    again = deliver_stripe(body)  # a later attempt: new timestamp, new signature

    assert first.status_code == 200
    assert_replay_of(first, again)
    assert HANDLED.calls == ["evt_1"]
    assert WebhookEvent.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1


def test_stripe_redelivery_with_other_bytes_still_replays() -> None:
    first = deliver_stripe(stripe_event("evt_1", pending_webhooks=2))
    again = deliver_stripe(stripe_event("evt_1", pending_webhooks=1))

    assert_replay_of(first, again)
    assert HANDLED.calls == ["evt_1"]


def test_with_the_default_fingerprint_other_bytes_are_a_mismatch() -> None:
    url = "/variants/stripe-body-fingerprint/"
    first = deliver_stripe(stripe_event("evt_1", pending_webhooks=2), url=url)
    again = deliver_stripe(stripe_event("evt_1", pending_webhooks=1), url=url)

    assert first.status_code == 200
    assert_problem(again, 409, "idempotency_key_mismatch")
    assert HANDLED.calls == ["evt_1"]


def test_stripe_other_events_run_each_once() -> None:
    responses = [deliver_stripe(stripe_event(e)) for e in ("evt_1", "evt_2", "evt_1", "evt_2")]

    assert [r.status_code for r in responses] == [200, 200, 200, 200]
    assert [r.headers.get("Idempotent-Replayed") for r in responses] == [
        None,
        None,
        "true",
        "true",
    ]
    assert HANDLED.calls == ["evt_1", "evt_2"]


BAD_STRIPE_SIGNATURES = {
    "missing": lambda body: "",
    "other secret": lambda body: stripe_header(body, secret="whsec_other"),
    "other body": lambda body: stripe_header(stripe_event("evt_1", amount=1)),
    "no v1": lambda body: stripe_header(body).replace("v1=", "v0="),
    "no timestamp": lambda body: stripe_header(body).split(",", 1)[1],
    "timestamp not a number": lambda body: "t=1e9," + stripe_header(body).split(",", 1)[1],
    "older than the tolerance": lambda body: stripe_header(body, at=int(time.time()) - 301),
    "not ASCII": lambda body: stripe_header(body).split(",")[0] + ",v1=\u00e9",
}


@pytest.mark.parametrize("make", BAD_STRIPE_SIGNATURES.values(), ids=BAD_STRIPE_SIGNATURES)
def test_stripe_bad_signature_is_400_and_claims_nothing(
    middleware: bool, make: Callable[[bytes], str]
) -> None:
    body = stripe_event("evt_1")

    forged = deliver_stripe(body, make(body))

    assert forged.status_code == 400
    assert forged.json() == {"error": "invalid_signature"}
    assert IdempotencyKey.objects.count() == 0
    assert HANDLED.calls == []

    genuine = deliver_stripe(body)

    assert genuine.status_code == 200
    assert "Idempotent-Replayed" not in genuine.headers
    assert HANDLED.calls == ["evt_1"]


def test_stripe_signature_within_the_tolerance_is_accepted() -> None:
    body = stripe_event("evt_1")
    assert deliver_stripe(body, stripe_header(body, at=int(time.time()) - 290)).status_code == 200
    assert HANDLED.calls == ["evt_1"]


def test_stripe_one_good_signature_among_several_is_enough() -> None:
    # The header may carry several v1 signatures; stripe-python accepts any match.
    body = stripe_event("evt_1")
    old = stripe_header(body, secret="whsec_old").split(",")[1]
    assert deliver_stripe(body, f"{stripe_header(body)},{old}").status_code == 200
    assert HANDLED.calls == ["evt_1"]


def test_signature_checked_inside_the_view_lets_a_forgery_block_the_event() -> None:
    url = "/variants/stripe-checked-inside/"
    body = stripe_event("evt_1")

    forged = deliver_stripe(body, stripe_header(body, secret="whsec_attacker"), url=url)
    genuine = deliver_stripe(body, url=url)

    assert forged.status_code == 400
    assert_replay_of(forged, genuine)  # Stripe's own delivery gets the forger's 400
    assert HANDLED.calls == []


def test_signature_checked_in_key_func_claims_nothing() -> None:
    url = "/variants/stripe-checked-in-key-func/"
    body = stripe_event("evt_1")

    forged = deliver_stripe(body, stripe_header(body, secret="whsec_attacker"), url=url)

    assert_problem(forged, 400, "idempotency_key_missing")
    assert IdempotencyKey.objects.count() == 0

    genuine = deliver_stripe(body, url=url)

    assert genuine.status_code == 200
    assert HANDLED.calls == ["evt_1"]


def test_stripe_handler_raising_releases_the_key(middleware: bool) -> None:
    body = stripe_event("evt_1")
    HANDLED.fail_next = True

    failed = deliver_stripe(body, client=Client(raise_request_exception=False))

    assert failed.status_code == 500
    assert key_row("evt_1").state == IdempotencyKey.State.RELEASED
    assert WebhookEvent.objects.count() == 0  # the handler's write was rolled back

    retry = deliver_stripe(body)

    assert retry.status_code == 200
    assert "Idempotent-Replayed" not in retry.headers
    assert HANDLED.calls == ["evt_1", "evt_1"]
    assert WebhookEvent.objects.count() == 1
    assert key_row("evt_1").state == IdempotencyKey.State.COMPLETED


def test_stripe_redelivery_while_the_first_runs_is_locked(middleware: bool) -> None:
    body = stripe_event("evt_1")
    during: dict[str, Any] = {}
    HANDLED.during = lambda: during.update(response=deliver_stripe(body))

    first = deliver_stripe(body)

    assert first.status_code == 200
    assert_problem(during["response"], 409, "idempotency_key_locked")
    assert during["response"].headers["Retry-After"] == "1"
    assert HANDLED.calls == ["evt_1"]

    later = deliver_stripe(body)

    assert_replay_of(first, later)
    assert HANDLED.calls == ["evt_1"]


@pytest.mark.parametrize("body", [b'{"type": "ping"}', b'{"id": ""}', b'{"id": 7}', b"[]", b"x"])
def test_stripe_signed_body_without_event_id_is_missing_key(body: bytes) -> None:
    response = deliver_stripe(body)

    assert_problem(response, 400, "idempotency_key_missing")
    assert IdempotencyKey.objects.count() == 0
    assert HANDLED.calls == []


def test_an_idempotency_key_header_on_a_delivery_changes_nothing() -> None:
    # The middleware leaves the view to @idempotent, which keys on the event id.
    body = stripe_event("evt_1")
    headers = {"Stripe-Signature": stripe_header(body)}
    first, again = (
        Client().post(
            "/webhooks/stripe/",
            body,
            content_type="application/json",
            headers={**headers, "Idempotency-Key": key},
        )
        for key in ("header-key-1", "header-key-2")
    )

    assert first.status_code == 200
    assert_replay_of(first, again)
    assert HANDLED.calls == ["evt_1"]
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["evt_1"]


def test_stripe_get_is_refused_before_anything() -> None:
    assert Client().get("/webhooks/stripe/").status_code == 405
    assert IdempotencyKey.objects.count() == 0


def _anonymous_client_takes_key(key: str) -> None:
    response = Client().post(
        "/anonymous/", b"{}", content_type="application/json", headers={"Idempotency-Key": key}
    )
    assert response.status_code == 201
    assert IdempotencyKey.objects.get(key=key).scope == "anonymous"


def test_an_anonymous_client_cannot_hold_a_stripe_event_id() -> None:
    _anonymous_client_takes_key("evt_1")

    response = deliver_stripe(stripe_event("evt_1"))

    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response.headers
    assert HANDLED.calls == ["evt_1"]
    assert IdempotencyKey.objects.get(key="evt_1", scope="stripe").state == "completed"


def test_without_a_scope_an_anonymous_client_blocks_the_event() -> None:
    _anonymous_client_takes_key("evt_1")

    response = deliver_stripe(stripe_event("evt_1"), url="/variants/stripe-default-scope/")

    assert_problem(response, 409, "idempotency_key_mismatch")
    assert HANDLED.calls == []


# -- GitHub -----------------------------------------------------------------------------


def test_github_signature_matches_githubs_example(settings: Any) -> None:
    # The example on "Validating webhook deliveries" in GitHub's documentation.
    request = RequestFactory().post(
        "/",
        b"Hello, World!",
        content_type="text/plain",
        headers={
            "X-Hub-Signature-256": (
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
            )
        },
    )
    settings.GITHUB_WEBHOOK_SECRET = "It's a Secret to Everybody"
    assert github_signature_ok(request) is True
    settings.GITHUB_WEBHOOK_SECRET = "It's a secret to everybody"
    assert github_signature_ok(request) is False


def test_github_first_delivery_runs_and_redelivery_replays(middleware: bool) -> None:
    body = github_payload()
    first = deliver_github(body)
    again = deliver_github(body)

    assert first.status_code == 200
    assert first.json() == {"received": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    assert_replay_of(first, again)
    assert HANDLED.calls == ["issues:1"]
    assert WebhookEvent.objects.count() == 1
    row = key_row("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert row.scope == "github:1"
    assert row.completed_at is not None
    assert row.expires_at - row.created_at == timedelta(days=30)


BAD_GITHUB_SIGNATURES = {
    "missing": lambda body: "",
    "other secret": lambda body: github_signature(body, "other"),
    "other body": lambda body: github_signature(body + b" "),
    "no prefix": lambda body: github_signature(body).removeprefix("sha256="),
    "sha1": lambda body: "sha1=" + hmac.new(GITHUB_SECRET.encode(), body, "sha1").hexdigest(),
    "not ASCII": lambda body: "sha256=\u00e9",
}


@pytest.mark.parametrize("make", BAD_GITHUB_SIGNATURES.values(), ids=BAD_GITHUB_SIGNATURES)
def test_github_bad_signature_is_400_and_claims_nothing(
    middleware: bool, make: Callable[[bytes], str]
) -> None:
    body = github_payload()

    forged = deliver_github(body, signature=make(body))

    assert forged.status_code == 400
    assert forged.json() == {"error": "invalid_signature"}
    assert IdempotencyKey.objects.count() == 0
    assert HANDLED.calls == []

    genuine = deliver_github(body)

    assert genuine.status_code == 200
    assert "Idempotent-Replayed" not in genuine.headers
    assert HANDLED.calls == ["issues:1"]


def test_github_handler_raising_releases_the_key(middleware: bool) -> None:
    body = github_payload()
    HANDLED.fail_next = True

    failed = deliver_github(body, client=Client(raise_request_exception=False))

    assert failed.status_code == 500
    assert WebhookEvent.objects.count() == 0

    redelivered = deliver_github(body)

    assert redelivered.status_code == 200
    assert "Idempotent-Replayed" not in redelivered.headers
    assert HANDLED.calls == ["issues:1", "issues:1"]
    assert WebhookEvent.objects.count() == 1


def test_github_redelivery_while_the_first_runs_is_locked() -> None:
    body = github_payload()
    during: dict[str, Any] = {}
    HANDLED.during = lambda: during.update(response=deliver_github(body))

    first = deliver_github(body)

    assert first.status_code == 200
    assert_problem(during["response"], 409, "idempotency_key_locked")
    assert HANDLED.calls == ["issues:1"]


def test_github_one_guid_for_two_hooks_runs_for_each_hook() -> None:
    first = deliver_github(github_payload(hook="1"), hook="1")
    second = deliver_github(github_payload(hook="2"), hook="2")

    assert (first.status_code, second.status_code) == (200, 200)
    assert "Idempotent-Replayed" not in second.headers
    assert HANDLED.calls == ["issues:1", "issues:2"]
    assert sorted(IdempotencyKey.objects.values_list("scope", flat=True)) == [
        "github:1",
        "github:2",
    ]


def test_with_one_scope_for_github_the_second_hook_is_never_handled() -> None:
    url = "/variants/github-one-scope/"
    first = deliver_github(github_payload(hook="1"), hook="1", url=url)
    second = deliver_github(github_payload(hook="2"), hook="2", url=url)

    assert_replay_of(first, second)
    assert HANDLED.calls == ["issues:1"]


def test_github_signed_delivery_without_guid_is_missing_key() -> None:
    response = deliver_github(github_payload(), guid=None)

    assert_problem(response, 400, "idempotency_key_missing")
    assert IdempotencyKey.objects.count() == 0
    assert HANDLED.calls == []


def test_a_stripe_event_id_and_a_github_guid_live_apart() -> None:
    guid = "evt_shared"
    stripe = deliver_stripe(stripe_event(guid))
    github = deliver_github(github_payload(), guid=guid)

    assert (stripe.status_code, github.status_code) == (200, 200)
    assert "Idempotent-Replayed" not in github.headers
    assert HANDLED.calls == [guid, "issues:1"]


def test_github_a_captured_body_under_a_new_guid_runs_again() -> None:
    # The signature covers the body only, so the page says to make the handler safe to repeat.
    body = github_payload()
    signature = github_signature(body)
    first = deliver_github(body, signature=signature)
    replayed = deliver_github(body, str(uuid.uuid4()), signature=signature)

    assert (first.status_code, replayed.status_code) == (200, 200)
    assert "Idempotent-Replayed" not in replayed.headers
    assert HANDLED.calls == ["issues:1", "issues:1"]
