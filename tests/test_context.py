"""``idempotency.current_key()`` and ``idempotency.derive()`` inside and outside views.

The views record what ``current_key()`` and ``derive()`` return while they run
(``SEEN``); the tests compare it with the client's key, the stored row and a
UUIDv5 computed here from the documented material.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext, async_to_sync, sync_to_async
from django.contrib.auth.models import User
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client
from django.urls import include, path
from django.utils import timezone
from rest_framework import viewsets
from rest_framework.routers import SimpleRouter
from rest_framework.serializers import BaseSerializer

import idempotency
from idempotency import CurrentKey, NoIdempotencyKey, current_key, derive
from idempotency.context import _activate
from idempotency.decorators import idempotency_exempt, idempotent
from idempotency.models import IdempotencyKey
from idempotency.rest_framework import IdempotencyMixin
from tests.helpers import BODY, JSON, Send, idem, key_row, new_key, token_headers
from tests.testapp.models import Order, Payment
from tests.testapp.serializers import OrderSerializer

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

OTHER_BODY = b'{"amount": "99.00"}'
ORDER = b'{"item": "book", "quantity": 2, "amount": "12.50"}'
WAIT = 30  # seconds; an upper bound for hand-offs between threads, never reached when green
NAMESPACE = uuid.UUID("6f0f3e52-3c5e-4d53-9a54-8d1f2b7c9e41")


def expected_derive(scope: str, key: str, fingerprint: str, name: str) -> str:
    """The documented derivation: UUIDv5 of scope, key, fingerprint and name joined by US."""
    return str(uuid.uuid5(NAMESPACE, "\x1f".join([scope, key, fingerprint, name])))


# -- views ------------------------------------------------------------------------------

#: One entry per view run: what current_key() and derive() gave inside the view.
SEEN: list[dict[str, Any]] = []
#: Keys whose first run already raised (the "?fail=once" views raise once per key).
FAILED_ONCE: set[str] = set()


def _look() -> dict[str, Any]:
    current = current_key()
    if current is None:
        try:
            derive("charge")
        except NoIdempotencyKey as exc:
            return {"current": None, "error": exc}
        return {"current": None, "error": None}
    return {"current": current, "charge": derive("charge"), "refund": derive("refund")}


def _answer(request: HttpRequest, payment: Payment) -> HttpResponse:
    how = request.GET.get("fail")
    current = current_key()
    if how == "raise" or (how == "once" and current and current.key not in FAILED_ONCE):
        if current is not None:
            FAILED_ONCE.add(current.key)
        raise RuntimeError("the view failed")
    return JsonResponse({"id": payment.pk, "run": len(SEEN)}, status=201)


def pay(request: HttpRequest) -> HttpResponse:
    SEEN.append(_look())
    payment = Payment.objects.create(amount="12.50", currency="EUR", reference="sync")
    return _answer(request, payment)


async def apay(request: HttpRequest) -> HttpResponse:
    SEEN.append(_look())
    payment = await Payment.objects.acreate(amount="12.50", currency="EUR", reference="async")
    return _answer(request, payment)


@idempotent
def decorated(request: HttpRequest) -> HttpResponse:
    return pay(request)


@idempotent
async def adecorated(request: HttpRequest) -> HttpResponse:
    return await apay(request)


def event_key(request: HttpRequest) -> str | None:
    event = request.headers.get("X-Event-Id")
    return None if event is None else f"evt-{event}"


@idempotent(key_func=event_key)
def webhook(request: HttpRequest) -> HttpResponse:
    return pay(request)


@idempotency_exempt
def exempt(request: HttpRequest) -> HttpResponse:
    return pay(request)


class OrderViewSet(IdempotencyMixin, viewsets.ModelViewSet):
    """Token users (the project's REST_FRAMEWORK defaults) create their orders."""

    serializer_class = OrderSerializer

    def get_queryset(self) -> QuerySet[Order]:
        return Order.objects.filter(user=self.request.user)

    def perform_create(self, serializer: BaseSerializer[Order]) -> None:
        SEEN.append(_look())
        serializer.save(user=self.request.user)


#: Set by the concurrency tests: the hand-offs between two requests running at once.
GATES: dict[str, Any] = {}


def _paired_look(request: HttpRequest) -> dict[str, Any]:
    return {"role": request.headers["X-Role"], "entry": current_key()}


def paired(request: HttpRequest) -> HttpResponse:
    # "first" waits inside the view until "second" is inside too; "second" waits
    # until "first" has returned. Each reads its key while the other one runs.
    seen = _paired_look(request)
    if seen["role"] == "first":
        GATES["first_in"].set()
        assert GATES["second_in"].wait(WAIT)
    else:
        GATES["second_in"].set()
        assert GATES["first_done"].wait(WAIT)
    SEEN.append({**seen, "later": current_key(), "charge": derive("charge")})
    return JsonResponse({"role": seen["role"]}, status=201)


async def apaired(request: HttpRequest) -> HttpResponse:
    seen = _paired_look(request)
    if seen["role"] == "first":
        GATES["first_in"].set()
        await asyncio.wait_for(GATES["second_in"].wait(), WAIT)
    else:
        GATES["second_in"].set()
        await asyncio.wait_for(GATES["first_done"].wait(), WAIT)
    SEEN.append({**seen, "later": current_key(), "charge": derive("charge")})
    return JsonResponse({"role": seen["role"]}, status=201)


router = SimpleRouter()
router.register("orders", OrderViewSet, basename="order")


def outer(request: HttpRequest) -> HttpResponse:
    """A protected view that makes a protected request of its own, in process."""
    before = current_key()
    inner = Client().generic(
        "POST", "/pay/", BODY, JSON, headers={"Idempotency-Key": request.GET["inner"]}
    )
    NESTED.update(before=before, after=current_key(), inner=inner.status_code)
    return JsonResponse({}, status=201)


NESTED: dict[str, Any] = {}

urlpatterns = [
    path("outer/", outer),
    path("pay/", pay),
    path("apay/", apay),
    path("decorated/", decorated),
    path("adecorated/", adecorated),
    path("webhook/", webhook),
    path("exempt/", exempt),
    path("paired/", paired),
    path("apaired/", apaired),
    path("apaired/decorated/", idempotent(apaired)),
    path("", include(router.urls)),
]

#: The protected function views: middleware sync and async, @idempotent sync and async.
TARGETS = {
    "middleware-sync": "/pay/",
    "middleware-async": "/apay/",
    "decorator-sync": "/decorated/",
    "decorator-async": "/adecorated/",
}


# -- harness ----------------------------------------------------------------------------


@pytest.fixture(params=["wsgi", "asgi"])
def send(request: pytest.FixtureRequest) -> Send:
    return Send(request.param, BODY)


@pytest.fixture(params=list(TARGETS))
def url(request: pytest.FixtureRequest) -> str:
    return TARGETS[request.param]


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    SEEN.clear()
    FAILED_ONCE.clear()
    GATES.clear()
    assert current_key() is None
    yield
    SEEN.clear()
    FAILED_ONCE.clear()
    GATES.clear()
    _activate(None)


def the_current(key: str) -> CurrentKey:
    """The CurrentKey a view running under ``key`` must see, read from the key's row."""
    found = key_row(key)
    return CurrentKey(found.key, found.scope, found.fingerprint)


def _running_row(key: str, url: str, fingerprint: str, *, lease: timedelta) -> IdempotencyKey:
    """The row a worker leaves behind when it dies while running this request."""
    now = timezone.now()
    return IdempotencyKey.objects.create(
        scope="anonymous",
        key=key,
        fingerprint=fingerprint,
        method="POST",
        path=url,
        state=IdempotencyKey.State.RUNNING,
        created_at=now - timedelta(minutes=5),
        lease_expires_at=now + lease,
        expires_at=now + timedelta(hours=1),
    )


# -- current_key() inside the view ------------------------------------------------------


def test_current_key_in_a_protected_view(send: Send, url: str) -> None:
    key = new_key()

    response = send("POST", url, headers=idem(key))

    assert response.status_code == 201
    (seen,) = SEEN
    assert isinstance(seen["current"], CurrentKey)
    assert seen["current"] == CurrentKey(key, "anonymous", send.fingerprint("POST", url, BODY))
    assert seen["current"] == the_current(key)
    assert current_key() is None


def test_current_key_in_a_drf_viewset_is_scoped_by_the_token_user(send: Send, alice: User) -> None:
    key = new_key()

    response = send("POST", "/orders/", ORDER, headers=token_headers(alice, **idem(key)))

    assert response.status_code == 201
    (seen,) = SEEN
    assert seen["current"] == CurrentKey(
        key, f"user:{alice.pk}", send.fingerprint("POST", "/orders/", ORDER)
    )
    assert seen["current"] == the_current(key)
    assert current_key() is None


def test_current_key_with_key_func_is_the_key_it_returned(send: Send) -> None:
    response = send("POST", "/webhook/", headers={"X-Event-Id": "42"})

    assert response.status_code == 201
    (seen,) = SEEN
    assert seen["current"].key == "evt-42"
    assert seen["current"] == the_current("evt-42")
    assert current_key() is None


# -- current_key() is None --------------------------------------------------------------


def test_nothing_is_current_outside_a_request() -> None:
    assert current_key() is None
    with pytest.raises(NoIdempotencyKey) as raised:
        derive("charge")
    assert isinstance(raised.value, LookupError)
    assert idempotency.current_key is current_key
    assert idempotency.derive is derive


def test_derive_needs_a_name() -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        derive("")
    _activate(CurrentKey("k", "anonymous", "f" * 64))
    try:
        with pytest.raises(ValueError, match="non-empty name"):
            derive("")
    finally:
        _activate(None)


def test_nothing_is_current_after_a_view_that_raised(send: Send, url: str) -> None:
    key = new_key()

    with pytest.raises(RuntimeError, match="the view failed"):
        send("POST", f"{url}?fail=raise", headers=idem(key))

    assert SEEN[0]["current"] is not None
    assert current_key() is None
    assert key_row(key).state == IdempotencyKey.State.RELEASED


def test_nothing_is_current_in_a_view_called_without_a_key(send: Send, url: str) -> None:
    response = send("POST", url)

    assert response.status_code == 201
    (seen,) = SEEN
    assert seen["current"] is None
    assert isinstance(seen["error"], NoIdempotencyKey)
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/exempt/"), ("GET", "/pay/")], ids=["exempt", "safe-method"]
)
def test_nothing_is_current_in_a_view_that_is_not_protected(
    send: Send, method: str, path: str
) -> None:
    response = send(method, path, headers=idem(new_key()))

    assert response.status_code == 201
    (seen,) = SEEN
    assert seen["current"] is None
    assert isinstance(seen["error"], NoIdempotencyKey)
    assert IdempotencyKey.objects.count() == 0


# -- derive() ---------------------------------------------------------------------------


def test_derive_is_a_uuid5_of_scope_key_fingerprint_and_name(send: Send, url: str) -> None:
    key = new_key()
    send("POST", url, headers=idem(key))

    (seen,) = SEEN
    charge, refund = seen["charge"], seen["refund"]
    for value in (charge, refund):
        assert isinstance(value, str)
        assert uuid.UUID(value).version == 5
        assert str(uuid.UUID(value)) == value
    assert charge != refund
    fingerprint = send.fingerprint("POST", url, BODY)
    assert charge == expected_derive("anonymous", key, fingerprint, "charge")
    assert refund == expected_derive("anonymous", key, fingerprint, "refund")


def test_derive_is_the_same_when_a_retry_runs_the_view_again(send: Send, url: str) -> None:
    key = new_key()
    client = send.client(raise_request_exception=False)

    failed = send("POST", f"{url}?fail=once", headers=idem(key), client=client)
    retried = send("POST", f"{url}?fail=once", headers=idem(key))

    assert failed.status_code == 500
    assert retried.status_code == 201
    first, second = SEEN
    assert first["current"] == second["current"] == the_current(key)
    assert first["charge"] == second["charge"]
    assert first["refund"] == second["refund"]
    assert key_row(key).fence == 2


def test_derive_is_the_same_when_a_retry_takes_over_an_abandoned_key(send: Send, url: str) -> None:
    key = new_key()
    fingerprint = send.fingerprint("POST", url, BODY)
    send("POST", url, headers=idem(key))
    assert key_row(key).fence == 1
    # The same request again, now after a worker died while running it.
    IdempotencyKey.objects.filter(key=key).delete()
    _running_row(key, url, fingerprint, lease=timedelta(seconds=-1))

    response = send("POST", url, headers=idem(key))

    assert response.status_code == 201
    assert key_row(key).fence == 2
    normal, takeover = SEEN
    assert takeover["current"] == normal["current"] == CurrentKey(key, "anonymous", fingerprint)
    assert takeover["charge"] == normal["charge"]
    assert takeover["charge"] == expected_derive("anonymous", key, fingerprint, "charge")


def test_derive_differs_between_users_with_the_same_key(send: Send, alice: User, bob: User) -> None:
    key = new_key()
    as_alice, as_bob = send.client(), send.client()
    as_alice.force_login(alice)
    as_bob.force_login(bob)

    send("POST", "/pay/", headers=idem(key), client=as_alice)
    send("POST", "/pay/", headers=idem(key), client=as_bob)

    for_alice, for_bob = SEEN
    assert for_alice["current"].scope == f"user:{alice.pk}"
    assert for_bob["current"].scope == f"user:{bob.pk}"
    assert for_alice["current"].key == for_bob["current"].key == key
    assert for_alice["current"].fingerprint == for_bob["current"].fingerprint
    assert for_alice["charge"] != for_bob["charge"]


def test_derive_differs_between_token_users_of_a_drf_viewset(
    send: Send, alice: User, bob: User
) -> None:
    key = new_key()

    send("POST", "/orders/", ORDER, headers=token_headers(alice, **idem(key)))
    send("POST", "/orders/", ORDER, headers=token_headers(bob, **idem(key)))

    for_alice, for_bob = SEEN
    assert (for_alice["current"].key, for_bob["current"].key) == (key, key)
    assert for_alice["charge"] != for_bob["charge"]
    assert for_alice["charge"] == expected_derive(
        f"user:{alice.pk}", key, for_alice["current"].fingerprint, "charge"
    )


def test_derive_differs_between_keys(send: Send) -> None:
    send("POST", "/pay/", headers=idem(new_key()))
    send("POST", "/pay/", headers=idem(new_key()))

    first, second = SEEN
    assert first["current"].fingerprint == second["current"].fingerprint
    assert first["charge"] != second["charge"]


def test_derive_differs_for_another_request_reusing_an_expired_key(send: Send) -> None:
    key = new_key()
    send("POST", "/pay/", headers=idem(key))
    IdempotencyKey.objects.filter(key=key).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = send("POST", "/pay/", OTHER_BODY, headers=idem(key))

    assert response.status_code == 201
    first, second = SEEN
    assert (first["current"].key, second["current"].key) == (key, key)
    assert first["current"].fingerprint != second["current"].fingerprint
    assert first["charge"] != second["charge"]
    assert second["current"] == the_current(key)


@pytest.mark.parametrize(
    ("current", "name", "value"),
    [
        (
            CurrentKey(
                "order-2024-0001",
                "user:42",
                "9b1c2f0e4a7d4b1e8f3a6c5d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f",
            ),
            "charge",
            "7bac4101-649a-5063-a76b-ea7cc6ab5330",
        ),
        (
            CurrentKey(
                "order-2024-0001",
                "user:42",
                "9b1c2f0e4a7d4b1e8f3a6c5d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f",
            ),
            "refund",
            "216cdcdb-2d38-5df4-a840-eefa9be6be60",
        ),
        (
            CurrentKey(
                "order-2024-0001",
                "tenant:Zürich",
                "9b1c2f0e4a7d4b1e8f3a6c5d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f",
            ),
            "charge",
            "d28c23dd-5c82-5095-b396-818bebd742ba",
        ),
    ],
    ids=["charge", "refund", "non-ascii-scope"],
)
def test_derive_is_pinned(current: CurrentKey, name: str, value: str) -> None:
    # Derived keys must not change across releases: a retry after an upgrade sends the
    # same downstream key as the attempt before it.
    _activate(current)
    try:
        assert current_key() == current
        assert derive(name) == value
    finally:
        _activate(None)
    assert current_key() is None


# -- concurrent requests ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_in_threads_each_see_their_own_key(send: Send, settings: Any) -> None:
    # Not ATOMIC: on SQLite a view's transaction holds the write lock while the view runs.
    settings.IDEMPOTENCY = {"ATOMIC": False}
    GATES.update(
        first_in=threading.Event(), second_in=threading.Event(), first_done=threading.Event()
    )
    keys = {"first": new_key(), "second": new_key()}
    responses: dict[str, Any] = {}

    def run(role: str) -> Callable[[], None]:
        def request() -> None:
            try:
                responses[role] = send(
                    "POST", "/paired/", headers=idem(keys[role], **{"X-Role": role})
                )
            finally:
                connections.close_all()

        return request

    first = threading.Thread(target=run("first"))
    second = threading.Thread(target=run("second"))
    first.start()
    assert GATES["first_in"].wait(WAIT)
    second.start()
    first.join(WAIT)
    GATES["first_done"].set()
    second.join(WAIT)

    assert not first.is_alive() and not second.is_alive()
    assert [responses[role].status_code for role in ("first", "second")] == [201, 201]
    by_role = {seen["role"]: seen for seen in SEEN}
    for role, key in keys.items():
        seen = by_role[role]
        assert seen["entry"] == seen["later"] == the_current(key)
        assert seen["charge"] == expected_derive(
            "anonymous", key, seen["entry"].fingerprint, "charge"
        )
    assert by_role["first"]["charge"] != by_role["second"]["charge"]
    assert current_key() is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path", ["/apaired/", "/apaired/decorated/"], ids=["middleware", "decorator"]
)
def test_concurrent_asgi_requests_each_see_their_own_key(path: str, settings: Any) -> None:
    settings.IDEMPOTENCY = {"ATOMIC": False}
    keys = {"first": new_key(), "second": new_key()}

    async def one(role: str) -> Any:
        # Each request gets its own thread for its sync parts, as under an ASGI server.
        async with ThreadSensitiveContext():
            try:
                return await AsyncClient().post(
                    path, BODY, content_type=JSON, headers=idem(keys[role], **{"X-Role": role})
                )
            finally:
                await sync_to_async(connections.close_all)()

    async def both() -> list[Any]:
        GATES.update(
            first_in=asyncio.Event(), second_in=asyncio.Event(), first_done=asyncio.Event()
        )

        async def first() -> Any:
            response = await one("first")
            GATES["first_done"].set()
            return response

        async def second() -> Any:
            await asyncio.wait_for(GATES["first_in"].wait(), WAIT)
            return await one("second")

        return list(await asyncio.gather(first(), second()))

    responses = async_to_sync(both)()

    assert [response.status_code for response in responses] == [201, 201]
    by_role = {seen["role"]: seen for seen in SEEN}
    for role, key in keys.items():
        seen = by_role[role]
        assert seen["entry"] == seen["later"] == the_current(key)
    assert by_role["first"]["charge"] != by_role["second"]["charge"]
    assert current_key() is None


@pytest.mark.django_db(transaction=True)
def test_a_protected_request_inside_a_view_gives_the_outer_key_back(settings: Any) -> None:
    settings.IDEMPOTENCY = {"ATOMIC": False}
    outer_key, inner_key = new_key(), new_key()
    NESTED.clear()

    response = Client().generic(
        "POST", f"/outer/?inner={inner_key}", BODY, JSON, headers=idem(outer_key)
    )

    assert response.status_code == 201
    assert NESTED["inner"] == 201
    assert SEEN[0]["current"].key == inner_key
    assert NESTED["before"] is not None and NESTED["before"].key == outer_key
    assert NESTED["after"] == NESTED["before"]
    assert current_key() is None
