"""The signals of ``idempotency.signals`` and the ``INFO`` records of the ``idempotency`` logger.

A receiver connected to all five signals records every call (the ``received``
fixture); each test checks which signals a request sent, with which sender and
keyword arguments. Requests go through ``django.test.Client`` (WSGI) and
``django.test.AsyncClient`` (ASGI), to sync and ``async def`` views protected by
the middleware, by ``@idempotent`` and by the DRF mixin.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import Error, connection
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import include, path
from django.utils import timezone
from rest_framework import permissions, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from idempotency import signals
from idempotency.conf import idempotency_settings
from idempotency.decorators import idempotent
from idempotency.fingerprints import default_fingerprint
from idempotency.models import IdempotencyKey, IdempotencyResponse
from idempotency.rest_framework import IdempotencyMixin
from tests.helpers import (
    BODY,
    Send,
    assert_problem,
    idem,
    in_thread,
    new_key,
    token_headers,
    with_unreachable_store,
)
from tests.testapp.models import Order, Payment
from tests.testapp.serializers import OrderSerializer

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

WAIT = 30  # seconds; an upper bound for a helper thread, never reached when green


# -- views ------------------------------------------------------------------------------

#: One entry per view run: the Django request the view was given.
RAN: list[HttpRequest] = []


def _answer(request: HttpRequest, payment: Payment) -> HttpResponse:
    if request.GET.get("fail") == "raise":
        raise RuntimeError("the view failed")
    status = int(request.GET.get("status", "201"))
    return JsonResponse({"id": payment.pk, "call": len(RAN)}, status=status)


def pay(request: HttpRequest) -> HttpResponse:
    RAN.append(request)
    payment = Payment.objects.create(amount="12.50", currency="EUR", reference=request.path)
    return _answer(request, payment)


async def apay(request: HttpRequest) -> HttpResponse:
    RAN.append(request)
    payment = await Payment.objects.acreate(amount="12.50", currency="EUR", reference=request.path)
    return _answer(request, payment)


@idempotent
def decorated(request: HttpRequest) -> HttpResponse:
    return pay(request)


@idempotent
async def adecorated(request: HttpRequest) -> HttpResponse:
    return await apay(request)


def stream(request: HttpRequest) -> StreamingHttpResponse:
    RAN.append(request)
    Payment.objects.create(amount="1.00", currency="EUR", reference="stream")
    return StreamingHttpResponse(iter([b"part-1,", b"part-2"]), status=201)


class OrderViewSet(IdempotencyMixin, viewsets.ModelViewSet):
    """Token users (the project's REST_FRAMEWORK defaults) create their orders."""

    serializer_class = OrderSerializer

    def get_queryset(self) -> QuerySet[Order]:
        return Order.objects.filter(user=self.request.user)

    def perform_create(self, serializer: BaseSerializer[Order]) -> None:
        RAN.append(self.request._request)
        serializer.save(user=self.request.user)


class DenyInHandler(IdempotencyMixin, APIView):
    """Refuses the caller from inside the handler, after the key was claimed."""

    def post(self, request: Request) -> Response:
        RAN.append(request._request)
        Payment.objects.create(amount="1.00", currency="EUR", reference="denied")
        if request.query_params["deny"] == "django":
            raise DjangoPermissionDenied("not for you")
        self.throttled(request, 60)
        raise AssertionError("unreachable")


class OwnerOnly(permissions.BasePermission):
    def has_object_permission(self, request: Request, view: Any, obj: Order) -> bool:
        return bool(obj.user_id == request.user.pk)


class AllOrdersViewSet(OrderViewSet):
    """Every order is found, but only its owner may change it: the check runs in the handler."""

    permission_classes = [permissions.IsAuthenticated, OwnerOnly]

    def get_queryset(self) -> QuerySet[Order]:
        return Order.objects.all()


router = SimpleRouter()
router.register("orders", OrderViewSet, basename="order")
router.register("all-orders", AllOrdersViewSet, basename="all-orders")

urlpatterns = [
    path("pay/", pay),
    path("apay/", apay),
    path("decorated/", decorated),
    path("adecorated/", adecorated),
    path("stream/", stream),
    path("deny/", DenyInHandler.as_view()),
    path("", include(router.urls)),
]

#: URL and expected ``sender`` of each kind of protected function view. Under the
#: middleware the sender is the view the URLconf resolves to; under ``@idempotent`` it is
#: the function the decorator wrapped.
TARGETS: dict[str, tuple[str, Callable[..., Any]]] = {
    "middleware-sync": ("/pay/", pay),
    "middleware-async": ("/apay/", apay),
    "decorator-sync": ("/decorated/", decorated),
    "decorator-async": ("/adecorated/", adecorated),
}


# -- harness ----------------------------------------------------------------------------


@pytest.fixture(params=["wsgi", "asgi"])
def send(request: pytest.FixtureRequest) -> Send:
    return Send(request.param, BODY)


@pytest.fixture(params=list(TARGETS))
def target(request: pytest.FixtureRequest) -> tuple[str, Callable[..., Any]]:
    return TARGETS[request.param]


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    RAN.clear()
    yield
    RAN.clear()


#: The keyword arguments of each signal besides ``request``, ``key`` and ``scope``.
EXTRA_ARGUMENTS = {
    "response_stored": {"status", "duration"},
    "response_replayed": {"status"},
    "conflict": {"reason", "status"},
    "key_released": {"reason"},
    "store_unavailable": {"error"},
}
SIGNALS = {name: getattr(signals, name) for name in EXTRA_ARGUMENTS}


@dataclass
class Sent:
    signal: str
    sender: Any
    arguments: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.arguments[name]


class Received:
    """Every signal sent while a test runs, in order."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._names = {id(signal): name for name, signal in SIGNALS.items()}

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        name = self._names[id(kwargs.pop("signal"))]
        self.sent.append(Sent(name, sender, kwargs))

    def names(self) -> list[str]:
        return [sent.signal for sent in self.sent]

    def only(self, name: str) -> Sent:
        """The one signal sent, which must be ``name``, with exactly its documented arguments."""
        assert self.names() == [name]
        sent = self.sent[0]
        assert set(sent.arguments) == {"request", "key", "scope"} | EXTRA_ARGUMENTS[name]
        return sent

    def clear(self) -> None:
        self.sent.clear()


@pytest.fixture
def received() -> Iterator[Received]:
    recorder = Received()
    for signal in SIGNALS.values():
        signal.connect(recorder, weak=False)
    try:
        yield recorder
    finally:
        for signal in SIGNALS.values():
            assert signal.disconnect(recorder)


def assert_request(sent: Sent, method: str, path: str) -> None:
    request = sent["request"]
    assert isinstance(request, HttpRequest)
    assert (request.method, request.path) == (method, path)


def _running_row(send: Send, key: str, url: str, *, lease: timedelta) -> IdempotencyKey:
    """The row of a request with ``key`` that another worker is running (or ran and died)."""
    now = timezone.now()
    return IdempotencyKey.objects.create(
        scope="anonymous",
        key=key,
        fingerprint=default_fingerprint(
            send.request("POST", url, BODY), idempotency_settings.get().fingerprint_meta
        ),
        method="POST",
        path=url,
        state=IdempotencyKey.State.RUNNING,
        lease_expires_at=now + lease,
        expires_at=now + timedelta(hours=1),
    )


ORDER = b'{"item": "book", "quantity": 2, "amount": "12.50"}'


# -- response_stored, response_replayed -------------------------------------------------


def test_first_request_sends_response_stored_once(
    send: Send, target: tuple[str, Callable[..., Any]], received: Received
) -> None:
    url, view = target
    key = new_key()
    response = send("POST", url, headers=idem(key))

    assert response.status_code == 201
    assert len(RAN) == 1
    sent = received.only("response_stored")
    assert sent.sender is view
    assert sent["request"] is RAN[0]
    assert_request(sent, "POST", url)
    assert (sent["key"], sent["scope"], sent["status"]) == (key, "anonymous", 201)
    assert isinstance(sent["duration"], float)
    assert 0 <= sent["duration"] < WAIT


def test_replay_sends_response_replayed_with_the_stored_status(
    send: Send, target: tuple[str, Callable[..., Any]], received: Received
) -> None:
    url, view = target
    key = new_key()
    first = send("POST", f"{url}?status=202", headers=idem(key))
    received.clear()

    replay = send("POST", f"{url}?status=202", headers=idem(key))

    assert first.status_code == replay.status_code == 202
    assert replay["Idempotent-Replayed"] == "true"
    assert len(RAN) == 1
    sent = received.only("response_replayed")
    assert sent.sender is view
    assert sent["request"] is not RAN[0]
    assert_request(sent, "POST", url)
    assert (sent["key"], sent["scope"], sent["status"]) == (key, "anonymous", 202)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", ["middleware-sync", "decorator-async"])
def test_response_stored_is_sent_after_the_commit(send: Send, name: str) -> None:
    url, _view = TARGETS[name]
    key = new_key()
    seen: dict[str, Any] = {}

    def look(sender: Any, key: str, **kwargs: Any) -> None:
        # What another connection sees: only what was committed.
        seen["status"] = in_thread(
            lambda: (
                IdempotencyResponse.objects.filter(idempotency_key__key=key)
                .values_list("status", flat=True)
                .first()
            )
        )
        seen["payments"] = in_thread(lambda: Payment.objects.count())
        seen["in_transaction"] = connection.in_atomic_block

    signals.response_stored.connect(look, weak=False)
    try:
        response = send("POST", url, headers=idem(key))
    finally:
        signals.response_stored.disconnect(look)

    assert response.status_code == 201
    assert seen == {"status": 201, "payments": 1, "in_transaction": False}


def test_drf_viewset_sends_stored_then_replayed(
    send: Send, alice: User, received: Received
) -> None:
    key = new_key()
    headers = token_headers(alice, **idem(key))
    first = send("POST", "/orders/", ORDER, headers=headers)

    assert first.status_code == 201
    stored = received.only("response_stored")
    assert stored.sender is OrderViewSet
    assert stored["request"] is RAN[0]
    assert_request(stored, "POST", "/orders/")
    assert (stored["key"], stored["scope"], stored["status"]) == (key, f"user:{alice.pk}", 201)
    assert stored["duration"] >= 0

    received.clear()
    replay = send("POST", "/orders/", ORDER, headers=headers)

    assert replay["Idempotent-Replayed"] == "true"
    assert len(RAN) == 1
    replayed = received.only("response_replayed")
    assert replayed.sender is OrderViewSet
    assert_request(replayed, "POST", "/orders/")
    assert (replayed["key"], replayed["scope"], replayed["status"]) == (
        key,
        f"user:{alice.pk}",
        201,
    )


# -- conflict ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [409, 422])
def test_mismatch_sends_conflict(
    send: Send,
    target: tuple[str, Callable[..., Any]],
    received: Received,
    settings: Any,
    status: int,
) -> None:
    settings.IDEMPOTENCY = {"MISMATCH_STATUS": status}
    url, view = target
    key = new_key()
    send("POST", url, headers=idem(key))
    received.clear()

    response = send("POST", url, b'{"amount": "99.00"}', headers=idem(key))

    assert_problem(response, status, "idempotency_key_mismatch")
    sent = received.only("conflict")
    assert sent.sender is view
    assert_request(sent, "POST", url)
    assert (sent["key"], sent["scope"]) == (key, "anonymous")
    assert (sent["reason"], sent["status"]) == ("mismatch", status)
    assert len(RAN) == 1


def test_running_key_sends_conflict_locked(
    send: Send, target: tuple[str, Callable[..., Any]], received: Received
) -> None:
    url, view = target
    key = new_key()
    _running_row(send, key, url, lease=timedelta(seconds=60))

    response = send("POST", url, headers=idem(key))

    assert_problem(response, 409, "idempotency_key_locked")
    assert RAN == []
    sent = received.only("conflict")
    assert sent.sender is view
    assert_request(sent, "POST", url)
    assert (sent["key"], sent["scope"]) == (key, "anonymous")
    assert (sent["reason"], sent["status"]) == ("locked", 409)


# -- key_released -----------------------------------------------------------------------


def test_view_that_raises_sends_key_released_exception(
    send: Send, target: tuple[str, Callable[..., Any]], received: Received
) -> None:
    url, view = target
    key = new_key()
    client = send.client(raise_request_exception=False)

    response = send("POST", f"{url}?fail=raise", headers=idem(key), client=client)

    assert response.status_code == 500
    assert len(RAN) == 1
    sent = received.only("key_released")
    assert sent.sender is view
    assert sent["request"] is RAN[0]
    assert (sent["key"], sent["scope"], sent["reason"]) == (key, "anonymous", "exception")
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.RELEASED
    assert Payment.objects.count() == 0


@pytest.mark.parametrize("status", [500, 429])
def test_non_storable_status_sends_key_released_not_stored(
    send: Send, target: tuple[str, Callable[..., Any]], received: Received, status: int
) -> None:
    url, view = target
    key = new_key()

    response = send("POST", f"{url}?status={status}", headers=idem(key))

    assert response.status_code == status
    sent = received.only("key_released")
    assert sent.sender is view
    assert sent["request"] is RAN[0]
    assert (sent["key"], sent["scope"], sent["reason"]) == (key, "anonymous", "not_stored")
    assert IdempotencyResponse.objects.count() == 0


def test_streaming_response_sends_key_released_streaming(send: Send, received: Received) -> None:
    key = new_key()

    response = send("POST", "/stream/", headers=idem(key))

    assert response.status_code == 201
    assert b"".join(response.streaming_content) == b"part-1,part-2"
    sent = received.only("key_released")
    assert sent.sender is stream
    assert sent["request"] is RAN[0]
    assert (sent["key"], sent["scope"], sent["reason"]) == (key, "anonymous", "streaming")


def test_drf_permission_denied_in_the_handler_sends_key_released_rejected(
    send: Send, alice: User, bob: User, received: Received
) -> None:
    order = Order.objects.create(user=alice, item="pen", quantity=1, amount="1.00")
    url = f"/all-orders/{order.pk}/"
    key = new_key()

    response = send("PATCH", url, b'{"quantity": 9}', headers=token_headers(bob, **idem(key)))

    assert response.status_code == 403
    sent = received.only("key_released")
    assert sent.sender is AllOrdersViewSet
    assert_request(sent, "PATCH", url)
    assert (sent["key"], sent["scope"], sent["reason"]) == (key, f"user:{bob.pk}", "rejected")
    assert Order.objects.get().quantity == 1


@pytest.mark.parametrize(("deny", "status"), [("django", 403), ("throttle", 429)])
def test_drf_refusal_raised_in_the_handler_sends_key_released_rejected(
    send: Send, alice: User, received: Received, deny: str, status: int
) -> None:
    key = new_key()

    response = send("POST", f"/deny/?deny={deny}", headers=token_headers(alice, **idem(key)))

    assert response.status_code == status
    sent = received.only("key_released")
    assert sent.sender is DenyInHandler
    assert sent["request"] is RAN[0]
    assert (sent["key"], sent["scope"], sent["reason"]) == (key, f"user:{alice.pk}", "rejected")
    assert Payment.objects.count() == 0


# -- store_unavailable ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_unreachable_store_sends_store_unavailable(
    send: Send, target: tuple[str, Callable[..., Any]], received: Received
) -> None:
    url, view = target
    key = new_key()

    response = with_unreachable_store(lambda: send("POST", url, headers=idem(key)))

    assert_problem(response, 503, "idempotency_store_unavailable")
    assert RAN == []
    sent = received.only("store_unavailable")
    assert sent.sender is view
    assert_request(sent, "POST", url)
    assert (sent["key"], sent["scope"]) == (key, "anonymous")
    assert isinstance(sent["error"], Error)


# -- receivers that raise ---------------------------------------------------------------


def test_receiver_that_raises_changes_nothing_and_is_logged(
    send: Send,
    target: tuple[str, Callable[..., Any]],
    received: Received,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, _view = target
    key = new_key()

    def broken(sender: Any, **kwargs: Any) -> None:
        raise ValueError("this receiver is broken")

    signals.response_stored.connect(broken, weak=False)
    signals.response_replayed.connect(broken, weak=False)
    try:
        first = send("POST", url, headers=idem(key))
        replay = send("POST", url, headers=idem(key))
    finally:
        signals.response_stored.disconnect(broken)
        signals.response_replayed.disconnect(broken)

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert len(RAN) == 1
    # The other receivers still ran.
    assert received.names() == ["response_stored", "response_replayed"]
    errors = [r for r in caplog.records if r.name == "idempotency" and r.levelno == logging.ERROR]
    assert len(errors) == 2
    for record in errors:
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ValueError)
        assert "this receiver is broken" in str(record.exc_info[1])


# -- no key, no signal ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [None, {"Idempotency-Key": "a,b"}],
    ids=["no-key", "invalid-key"],
)
def test_requests_without_a_usable_key_send_nothing(
    send: Send,
    target: tuple[str, Callable[..., Any]],
    received: Received,
    headers: dict[str, str] | None,
) -> None:
    url, _view = target

    response = send("POST", url, headers=headers)
    safe_get = send("GET", url, b"", headers=idem(new_key()))

    if headers is None:
        assert response.status_code == 201
    else:
        assert_problem(response, 400, "idempotency_key_invalid")
    assert safe_get.status_code == 201
    assert received.sent == []


# -- logging ----------------------------------------------------------------------------


def _events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        dict(r.idempotency)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "idempotency" and r.levelno == logging.INFO
    ]


def test_stored_then_replayed_are_logged_with_their_fields(
    send: Send, target: tuple[str, Callable[..., Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="idempotency")
    url, _view = target
    key = new_key()

    send("POST", url, headers=idem(key))
    send("POST", url, headers=idem(key))

    stored, replayed = _events(caplog)
    duration = stored.pop("duration")
    assert isinstance(duration, float) and duration >= 0
    common = {"key": key, "scope": "anonymous", "method": "POST", "path": url, "status": 201}
    assert stored == {"event": "stored", **common}
    assert replayed == {"event": "replayed", **common}
    messages = [r.getMessage() for r in caplog.records if r.name == "idempotency"]
    line = f"POST {url} key={key!r} scope=anonymous status=201"
    assert len(messages) == 2
    assert re.fullmatch(rf"idempotency stored: {line} duration=\d+\.\d{{3}}", messages[0])
    assert messages[1] == f"idempotency replayed: {line}"

    caplog.clear()
    send("POST", url)

    assert [r for r in caplog.records if r.name == "idempotency"] == []


def test_conflict_and_release_are_logged_with_their_reason(
    send: Send, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="idempotency")
    key, failing = new_key(), new_key()
    client = send.client(raise_request_exception=False)

    send("POST", "/pay/", headers=idem(key))
    send("POST", "/pay/", b"{}", headers=idem(key))
    send("PUT", "/pay/?fail=raise", headers=idem(failing), client=client)

    request = {"scope": "anonymous", "method": "POST", "path": "/pay/"}
    assert _events(caplog)[1:] == [
        {"event": "conflict", "key": key, **request, "reason": "mismatch", "status": 409},
        {"event": "released", "key": failing, **request, "method": "PUT", "reason": "exception"},
    ]


@pytest.mark.django_db(transaction=True)
def test_store_unavailable_is_logged_with_the_error_class(
    send: Send, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="idempotency")
    key = new_key()

    response = with_unreachable_store(lambda: send("POST", "/apay/", headers=idem(key)))

    assert response.status_code == 503
    assert _events(caplog) == [
        {
            "event": "store_unavailable",
            "key": key,
            "scope": "anonymous",
            "method": "POST",
            "path": "/apay/",
            "error": "OperationalError",
        }
    ]
    assert json.loads(response.content)["code"] == "idempotency_store_unavailable"
