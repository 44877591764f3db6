"""``IdempotencyMixin`` on DRF views and viewsets.

Most tests run twice: with the mixin alone and with the ``IdempotencyMiddleware`` of
the test settings installed as well, where the mixin must take charge
and the request must be claimed exactly once. The rules every adapter shares (first
run and replay, mismatch, missing and malformed keys, what is never stored) are in
``tests/test_behaviour.py``; this module tests what DRF adds: its authentication,
permissions and throttling, the principal's scope, viewsets and the mixin's attributes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory
from django.test.client import MULTIPART_CONTENT
from django.urls import include, path
from django.utils import timezone
from rest_framework import authentication, permissions, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.serializers import BaseSerializer
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from idempotency.conf import idempotency_settings
from idempotency.decorators import idempotency_exempt
from idempotency.fingerprints import canonical_json, default_fingerprint
from idempotency.models import IdempotencyKey, IdempotencyResponse
from idempotency.rest_framework import IdempotencyMixin
from tests import helpers
from tests.helpers import (
    DRAFT,
    JSON,
    assert_fresh,
    assert_problem,
    assert_replay_of,
    key_row,
    session_client,
    token_client,
)
from tests.testapp.models import Order
from tests.testapp.serializers import OrderSerializer

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

ORDER = {"item": "book", "quantity": 2, "amount": "12.50"}
BODY = json.dumps(ORDER).encode()


# -- views ------------------------------------------------------------------------------

#: Keys whose first attempt already crashed (the flaky view crashes once per key).
CRASHED_ONCE: set[str] = set()


class CreateOrder(IdempotencyMixin, APIView):
    """Token or session users (the project's REST_FRAMEWORK defaults) create orders."""

    def post(self, request: Request) -> Response:
        serializer = OrderSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        order = serializer.save(user=request.user)
        fail = request.query_params.get("fail")
        if fail == "validation":
            raise ValidationError({"item": ["Rejected after the order was saved."]})
        if fail == "raise":
            raise RuntimeError("boom")
        if fail == "once":
            key = request.headers["Idempotency-Key"]
            if key not in CRASHED_ONCE:
                CRASHED_ONCE.add(key)
                raise RuntimeError("first attempt crashes")
        return Response(
            OrderSerializer(order).data, status=201, headers={"X-Order-Id": str(order.pk)}
        )


class RequiredView(CreateOrder):
    idempotency_required = True


class TtlView(CreateOrder):
    idempotency_ttl = timedelta(minutes=10)


class LeaseView(CreateOrder):
    idempotency_lock_timeout = 9
    idempotency_ttl = 30

    def post(self, request: Request) -> Response:
        row = IdempotencyKey.objects.get(key=request.headers["Idempotency-Key"])
        assert row.lease_expires_at is not None
        response = super().post(request)
        response["X-Lease"] = str((row.lease_expires_at - row.created_at).total_seconds())
        response["X-State"] = row.state
        return response


class NotAtomicView(CreateOrder):
    idempotency_atomic = False


def key_from_data(request: Request) -> Any:
    return request.data.get("id")


class KeyFromBodyView(CreateOrder):
    idempotency_key_func = key_from_data
    idempotency_required = True


def key_or_crash(request: Request) -> str:
    return request.data["id"]  # KeyError when absent


class KeyFuncRaisesView(CreateOrder):
    idempotency_key_func = key_or_crash


class CanonicalView(CreateOrder):
    idempotency_fingerprint_func = canonical_json()


class ScopeFuncView(CreateOrder):
    idempotency_scope_func = staticmethod(lambda request: "team:" + request.headers["X-Team"])


class ExemptView(CreateOrder):
    idempotency_exempt = True


class HookView(CreateOrder):
    def get_idempotency_key(self, request: Request) -> str | None:
        return request.headers.get("X-Request-Id")

    def get_idempotency_scope(self, request: Request) -> str:
        return f"tenant:{request.headers.get('X-Tenant', 'none')}:user:{request.user.pk}"

    def get_idempotency_fingerprint(self, request: Request) -> str:
        return str(request.data.get("item"))


class NestedView(CreateOrder):
    """Sends a duplicate of itself while it still runs."""

    idempotency_concurrent_wait = 0.05

    def post(self, request: Request) -> Response:
        response = super().post(request)
        if request.headers.get("X-Outer"):
            headers = {
                "Idempotency-Key": request.headers["Idempotency-Key"],
                "Authorization": request.headers["Authorization"],
            }
            inner = {}
            for name, body in (("same", request.body), ("other", b'{"item": "other"}')):
                answer = Client().post(request.path, body, content_type=JSON, headers=headers)
                inner[name] = {
                    "status": answer.status_code,
                    "body": json.loads(answer.content),
                    "content_type": answer.headers["Content-Type"],
                    "retry_after": answer.headers.get("Retry-After"),
                }
            response.data = inner
        return response


class DenyAll(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return False


class ForbiddenView(CreateOrder):
    permission_classes = [DenyAll]


class SessionOnlyView(CreateOrder):
    authentication_classes = [authentication.SessionAuthentication]


class OncePerDay(UserRateThrottle):
    scope = "idempotency-tests"
    rate = "1/day"


class ThrottledView(CreateOrder):
    throttle_classes = [OncePerDay]


class OrderViewSet(IdempotencyMixin, viewsets.ModelViewSet):
    serializer_class = OrderSerializer

    def get_queryset(self) -> QuerySet[Order]:
        return Order.objects.filter(user=self.request.user)

    def perform_create(self, serializer: BaseSerializer[Order]) -> None:
        serializer.save(user=self.request.user)

    @action(detail=False, methods=["post"])
    def duplicate(self, request: Request) -> Response:
        order = Order.objects.create(user=request.user, item="dup", quantity=1, amount="1.00")
        return Response({"id": order.pk}, status=201)

    @action(detail=False, methods=["post"])
    def django_denied(self, request: Request) -> Response:
        Order.objects.create(user=request.user, item="denied", quantity=1, amount="1.00")
        raise DjangoPermissionDenied("Not for you.")

    @action(detail=False, methods=["post"])
    @idempotency_exempt
    def ping(self, request: Request) -> Response:
        order = Order.objects.create(user=request.user, item="ping", quantity=1, amount="1.00")
        return Response({"id": order.pk}, status=201)


class OwnerOnly(permissions.BasePermission):
    def has_object_permission(self, request: Request, view: Any, obj: Order) -> bool:
        return obj.user_id == request.user.pk


class AllOrdersViewSet(OrderViewSet):
    permission_classes = [permissions.IsAuthenticated, OwnerOnly]

    def get_queryset(self) -> QuerySet[Order]:
        return Order.objects.all()


class ExemptCreateViewSet(OrderViewSet):
    @idempotency_exempt
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().create(request, *args, **kwargs)


def csrf_token(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"token": get_token(request)})


router = SimpleRouter()
router.register("orders", OrderViewSet, basename="order")
router.register("exempt-create", ExemptCreateViewSet, basename="exempt-create")
router.register("all-orders", AllOrdersViewSet, basename="all-orders")

urlpatterns = [
    path("create/", CreateOrder.as_view()),
    path("required/", RequiredView.as_view()),
    path("ttl/", TtlView.as_view()),
    path("lease/", LeaseView.as_view()),
    path("not-atomic/", NotAtomicView.as_view()),
    path("key-from-body/", KeyFromBodyView.as_view()),
    path("key-func-raises/", KeyFuncRaisesView.as_view()),
    path("canonical/", CanonicalView.as_view()),
    path("scope-func/", ScopeFuncView.as_view()),
    path("exempt/", ExemptView.as_view()),
    path("hooks/", HookView.as_view()),
    path("nested/", NestedView.as_view()),
    path("forbidden/", ForbiddenView.as_view()),
    path("session-only/", SessionOnlyView.as_view()),
    path("throttled/", ThrottledView.as_view()),
    path("csrf/", csrf_token),
    path("", include(router.urls)),
]


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CRASHED_ONCE.clear()
    cache.clear()
    yield
    CRASHED_ONCE.clear()
    cache.clear()


def post(
    client: Client, url: str, body: bytes = BODY, key: str | None = None, **headers: str
) -> HttpResponse:
    """``client``'s request (which user, authenticated how): an order unless ``body``."""
    return helpers.post(url, body, key, client=client, **headers)


# -- first request, replay, mismatch, locked, missing, invalid -------------------------


def test_first_request_runs_and_is_stored(middleware: bool, alice: User) -> None:
    response = post(token_client(alice), "/create/", key="k-1")

    assert_fresh(response)
    order = Order.objects.get()
    assert (order.user, order.item, order.quantity) == (alice, "book", 2)
    assert json.loads(response.content)["id"] == order.pk
    assert response.headers["X-Order-Id"] == str(order.pk)
    assert IdempotencyKey.objects.count() == 1
    row = key_row("k-1")
    assert row.scope == f"user:{alice.pk}"
    assert (row.state, row.method, row.path, row.fence) == ("completed", "POST", "/create/", 1)
    assert row.expires_at - row.created_at == timedelta(hours=24)
    assert row.response.status == 201
    assert bytes(row.response.body) == response.content
    stored = {name: value for name, value in row.response.headers}
    assert stored["Content-Type"] == JSON
    assert stored["Allow"] == "POST, OPTIONS"
    assert stored["Vary"] == "Accept"
    assert stored["X-Order-Id"] == str(order.pk)


def test_retry_is_replayed_with_the_same_headers(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(client, "/create/", key="k-1")
    replay = post(client, "/create/", key="k-1")
    again = post(token_client(alice), "/create/", key="k-1")

    assert_fresh(first)
    assert_replay_of(first, replay)
    assert_replay_of(first, again)
    assert replay.headers["Allow"] == "POST, OPTIONS"
    assert replay.headers["Vary"] == first.headers["Vary"]
    assert "Accept" in replay.headers["Vary"]
    assert replay.headers["Content-Type"] == JSON
    assert Order.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    assert IdempotencyResponse.objects.count() == 1


def test_viewset_create_replay(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(client, "/orders/", key="k-1")
    replay = post(client, "/orders/", key="k-1")

    assert_fresh(first)
    assert_replay_of(first, replay)
    assert first.headers["Allow"] == "GET, POST, HEAD, OPTIONS"
    assert Order.objects.count() == 1
    assert key_row("k-1").scope == f"user:{alice.pk}"


def test_viewset_update_and_destroy(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    order = Order.objects.create(user=alice, item="pen", quantity=1, amount="1.00")
    url = f"/orders/{order.pk}/"

    patch = client.patch(
        url, b'{"quantity": 5}', content_type=JSON, headers={"Idempotency-Key": "p"}
    )
    Order.objects.filter(pk=order.pk).update(quantity=7)  # changed since; a replay must not redo
    patch_again = client.patch(
        url, b'{"quantity": 5}', content_type=JSON, headers={"Idempotency-Key": "p"}
    )
    assert patch.status_code == 200
    assert json.loads(patch.content)["quantity"] == 5
    assert_replay_of(patch, patch_again)
    assert Order.objects.get().quantity == 7

    delete = client.delete(url, headers={"Idempotency-Key": "d"})
    delete_again = client.delete(url, headers={"Idempotency-Key": "d"})
    delete_new_key = client.delete(url, headers={"Idempotency-Key": "d2"})
    assert delete.status_code == 204
    assert_replay_of(delete, delete_again)
    assert delete_new_key.status_code == 404
    assert Order.objects.count() == 0
    assert key_row("d").response.status == 204
    assert key_row("d2").response.status == 404


def test_safe_methods_ignore_the_key(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    for _ in range(2):
        response = client.get("/orders/", headers={"Idempotency-Key": "k-1"})

    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response.headers
    assert IdempotencyKey.objects.count() == 0


def test_duplicate_while_running_is_locked(middleware: bool, alice: User) -> None:
    response = post(token_client(alice), "/nested/", key="k-1", X_Outer="1")

    assert_fresh(response)
    result = json.loads(response.content)
    assert result["same"]["status"] == 409
    assert result["same"]["content_type"] == "application/problem+json"
    assert result["same"]["retry_after"] == "1"
    assert result["same"]["body"]["code"] == "idempotency_key_locked"
    assert result["same"]["body"]["type"] == f"{DRAFT}#section-2.6"
    assert result["other"]["status"] == 409
    assert result["other"]["body"]["code"] == "idempotency_key_mismatch"
    assert Order.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    assert key_row("k-1").state == IdempotencyKey.State.COMPLETED


def test_abandoned_lease_is_taken_over(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    assert_fresh(post(client, "/create/", key="k-1"))
    IdempotencyKey.objects.update(response_status=None, response_headers=None, response_body=None)
    IdempotencyKey.objects.update(
        state="running", completed_at=None, lease_expires_at=timezone.now() + timedelta(hours=1)
    )
    assert_problem(post(client, "/create/", key="k-1"), 409, "idempotency_key_locked")

    IdempotencyKey.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    retry = post(client, "/create/", key="k-1")

    assert_fresh(retry)
    assert Order.objects.count() == 2
    row = key_row("k-1")
    assert (row.state, row.fence) == ("completed", 2)


def test_required_attribute(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    missing = post(client, "/required/")

    assert_problem(missing, 400, "idempotency_key_missing")
    assert Order.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0

    assert_fresh(post(client, "/required/", key="k-1"))
    assert post(client, "/required/", key="k-1").headers["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    # The plain view does not require a key.
    assert_fresh(post(client, "/create/"))


@pytest.mark.parametrize("value", ["", "a,b", "fine-key"])
@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_a_method_without_a_handler_is_drfs_405_whatever_the_key(
    middleware: bool, alice: User, method: str, value: str
) -> None:
    # The list route has no PUT, PATCH or DELETE: DRF answers 405, and the key is
    # neither read nor claimed, valid or not.
    response = getattr(token_client(alice), method)(
        "/orders/", b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY=value
    )

    assert response.status_code == 405
    assert "Idempotent-Replayed" not in response.headers
    assert IdempotencyKey.objects.count() == 0


def test_serializer_errors_are_stored(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    bad = b'{"item": "book", "quantity": 0, "amount": "1.00"}'
    first = post(client, "/orders/", bad, key="k-1")
    replay = post(client, "/orders/", bad, key="k-1")

    assert first.status_code == 400
    assert json.loads(first.content) == {
        "quantity": ["Ensure this value is greater than or equal to 1."]
    }
    assert_replay_of(first, replay)
    assert Order.objects.count() == 0
    assert key_row("k-1").response.status == 400


# -- after authentication, permissions and throttling -----------------------------------


def test_unauthenticated_is_never_stored(middleware: bool, alice: User) -> None:
    anonymous = post(Client(), "/create/", key="k-1")
    bad_token = post(Client(headers={"Authorization": "Token nope"}), "/create/", key="k-1")
    again = post(Client(), "/create/", key="k-1")

    for response in (anonymous, bad_token, again):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Token"
        assert "Idempotent-Replayed" not in response.headers
    assert json.loads(bad_token.content) == {"detail": "Invalid token."}
    assert IdempotencyKey.objects.count() == 0
    assert Order.objects.count() == 0

    # The real user's request with that key is a new operation.
    assert_fresh(post(token_client(alice), "/create/", key="k-1"))
    assert IdempotencyKey.objects.count() == 1


def test_session_only_view_unauthenticated_is_403(middleware: bool) -> None:
    response = post(Client(), "/session-only/", key="k-1")

    assert response.status_code == 403
    assert json.loads(response.content) == {
        "detail": "Authentication credentials were not provided."
    }
    assert IdempotencyKey.objects.count() == 0
    assert Order.objects.count() == 0


def test_permission_denied_is_never_stored(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(client, "/forbidden/", key="k-1")
    second = post(client, "/forbidden/", key="k-1")

    assert first.status_code == 403
    assert second.status_code == 403
    assert "Idempotent-Replayed" not in second.headers
    assert IdempotencyKey.objects.count() == 0
    assert Order.objects.count() == 0


def test_throttled_is_never_stored_or_replayed(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(client, "/throttled/", key="k-1")
    retry = post(client, "/throttled/", key="k-1")
    other = post(client, "/throttled/", key="k-2")

    assert_fresh(first)
    for response in (retry, other):
        assert response.status_code == 429
        assert "Idempotent-Replayed" not in response.headers
        assert "Retry-After" in response.headers
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["k-1"]
    assert Order.objects.count() == 1


def test_object_permission_denied_in_the_handler_is_not_stored(
    middleware: bool, alice: User, bob: User
) -> None:
    order = Order.objects.create(user=alice, item="pen", quantity=1, amount="1.00")
    url = f"/all-orders/{order.pk}/"
    as_bob = token_client(bob)

    def patch(client: Client) -> HttpResponse:
        return client.patch(
            url, b'{"quantity": 9}', content_type=JSON, headers={"Idempotency-Key": "k-1"}
        )

    first = patch(as_bob)
    second = patch(as_bob)

    assert first.status_code == 403
    assert second.status_code == 403
    assert "Idempotent-Replayed" not in second.headers
    assert IdempotencyResponse.objects.count() == 0
    assert key_row("k-1").state == IdempotencyKey.State.RELEASED
    assert Order.objects.get().quantity == 1
    # The owner's request is unaffected.
    mine = patch(token_client(alice))
    assert mine.status_code == 200
    assert Order.objects.get().quantity == 9


def test_djangos_permission_denied_in_the_handler_is_not_stored(
    middleware: bool, alice: User
) -> None:
    as_alice = token_client(alice)
    first = post(as_alice, "/orders/django_denied/", key="k-1")
    second = post(as_alice, "/orders/django_denied/", key="k-1")

    assert first.status_code == 403
    assert second.status_code == 403
    assert "Idempotent-Replayed" not in second.headers
    assert IdempotencyResponse.objects.count() == 0
    assert key_row("k-1").state == IdempotencyKey.State.RELEASED
    assert key_row("k-1").fence == 2  # the retry ran the handler again
    assert Order.objects.count() == 0  # each run's write was rolled back


def test_csrf_failure_is_never_stored(middleware: bool, alice: User) -> None:
    client = session_client(alice, enforce_csrf_checks=True)
    response = post(client, "/create/", key="k-1")

    assert response.status_code == 403
    assert "CSRF" in json.loads(response.content)["detail"]
    assert IdempotencyKey.objects.count() == 0
    assert Order.objects.count() == 0


# -- scope: the DRF principal --------------------------------------------------------


@pytest.mark.parametrize("login", [token_client, session_client], ids=["token", "session"])
def test_users_never_see_each_others_responses(
    middleware: bool, alice: User, bob: User, login: Any
) -> None:
    as_alice, as_bob = login(alice), login(bob)
    a = post(as_alice, "/create/", key="shared")
    b = post(as_bob, "/create/", key="shared")
    a_again = post(as_alice, "/create/", key="shared")
    b_again = post(as_bob, "/create/", key="shared")

    assert_fresh(a)
    assert_fresh(b)
    assert a.content != b.content
    assert json.loads(a.content)["user"] == alice.pk
    assert json.loads(b.content)["user"] == bob.pk
    assert_replay_of(a, a_again)
    assert_replay_of(b, b_again)
    assert sorted(Order.objects.values_list("user__username", flat=True)) == ["alice", "bob"]
    assert sorted(IdempotencyKey.objects.values_list("scope", flat=True)) == sorted(
        [f"user:{alice.pk}", f"user:{bob.pk}"]
    )


def test_another_user_cannot_collide_with_a_different_body(
    middleware: bool, alice: User, bob: User
) -> None:
    assert_fresh(post(token_client(alice), "/create/", key="shared"))
    other = post(
        token_client(bob), "/create/", b'{"item": "x", "quantity": 1, "amount": "2"}', key="shared"
    )

    assert_fresh(other)  # not a mismatch: bob's key lives in bob's scope
    assert Order.objects.count() == 2


def test_token_and_session_of_one_user_share_a_scope(middleware: bool, alice: User) -> None:
    by_token = post(token_client(alice), "/create/", key="k-1")
    by_session = post(session_client(alice), "/create/", key="k-1")

    assert_fresh(by_token)
    assert_replay_of(by_token, by_session, session_vary=True)
    assert Order.objects.count() == 1
    assert key_row("k-1").scope == f"user:{alice.pk}"


def test_with_middleware_claimed_once_with_the_drf_scope(alice: User) -> None:
    response = post(token_client(alice), "/orders/", key="k-1")

    assert_fresh(response)
    assert Order.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    row = key_row("k-1")
    assert row.scope == f"user:{alice.pk}"  # not a hash of the Authorization header
    assert row.fence == 1
    assert IdempotencyResponse.objects.count() == 1


# -- failures inside the view ----------------------------------------------------------


def test_validation_error_is_stored_replayed_and_rolled_back(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(client, "/create/?fail=validation", key="k-1")
    replay = post(client, "/create/?fail=validation", key="k-1")

    assert first.status_code == 400
    assert json.loads(first.content) == {"item": ["Rejected after the order was saved."]}
    assert_replay_of(first, replay)
    assert Order.objects.count() == 0  # ATOMIC: the save before the raise is undone
    row = key_row("k-1")
    assert (row.state, row.response.status) == ("completed", 400)


def test_validation_error_keeps_writes_when_not_atomic(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(client, "/not-atomic/?fail=validation", key="k-1")
    replay = post(client, "/not-atomic/?fail=validation", key="k-1")

    assert first.status_code == 400
    assert_replay_of(first, replay)
    assert Order.objects.count() == 1
    assert key_row("k-1").state == IdempotencyKey.State.COMPLETED


def test_uncaught_exception_releases_and_rolls_back(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    with pytest.raises(RuntimeError, match="boom"):
        post(client, "/create/?fail=raise", key="k-1")

    assert Order.objects.count() == 0
    row = key_row("k-1")
    assert (row.state, row.lease_expires_at) == ("released", None)
    assert IdempotencyResponse.objects.count() == 0


def test_retry_after_a_crash_runs_again(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    with pytest.raises(RuntimeError, match="first attempt crashes"):
        post(client, "/create/?fail=once", key="k-1")
    assert Order.objects.count() == 0

    retry = post(client, "/create/?fail=once", key="k-1")
    replay = post(client, "/create/?fail=once", key="k-1")

    assert_fresh(retry)
    assert_replay_of(retry, replay)
    assert Order.objects.count() == 1
    row = key_row("k-1")
    assert (row.state, row.fence) == ("completed", 2)


def test_crash_with_atomic_false_keeps_writes(middleware: bool, alice: User) -> None:
    with pytest.raises(RuntimeError):
        post(token_client(alice), "/not-atomic/?fail=raise", key="k-1")

    assert Order.objects.count() == 1
    assert key_row("k-1").state == IdempotencyKey.State.RELEASED


# -- per-view attributes and hooks ------------------------------------------------------


def test_ttl_attribute(middleware: bool, alice: User) -> None:
    assert_fresh(post(token_client(alice), "/ttl/", key="k-1"))
    row = key_row("k-1")
    assert row.expires_at - row.created_at == timedelta(minutes=10)


def test_lock_timeout_attribute(middleware: bool, alice: User) -> None:
    response = post(token_client(alice), "/lease/", key="k-1")

    assert_fresh(response)
    assert response.headers["X-State"] == "running"
    assert response.headers["X-Lease"] == "9.0"
    row = key_row("k-1")
    assert row.expires_at - row.created_at == timedelta(seconds=30)


def test_key_func_attribute_reads_request_data(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    body = json.dumps({**ORDER, "id": "ord-1"}).encode()
    first = post(client, "/key-from-body/", body)
    replay = post(client, "/key-from-body/", body, key="ignored")
    other = post(client, "/key-from-body/", json.dumps({**ORDER, "id": "ord-2"}).encode())
    missing = post(client, "/key-from-body/", BODY, key="header-is-not-read")
    too_long = post(client, "/key-from-body/", json.dumps({**ORDER, "id": "i" * 256}).encode())

    assert_fresh(first)
    assert_replay_of(first, replay)
    assert_fresh(other)
    assert_problem(missing, 400, "idempotency_key_missing")
    assert_problem(too_long, 400, "idempotency_key_invalid")
    assert Order.objects.count() == 2
    assert sorted(IdempotencyKey.objects.values_list("key", flat=True)) == ["ord-1", "ord-2"]


def test_key_func_that_raises_is_invalid(middleware: bool, alice: User) -> None:
    client = Client(
        headers={"Authorization": f"Token {Token.objects.create(user=alice).key}"},
        raise_request_exception=False,
    )
    response = post(client, "/key-func-raises/", BODY, key="k-1")

    assert_problem(response, 400, "idempotency_key_invalid")
    assert Order.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


def test_fingerprint_func_attribute(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(
        client, "/canonical/", b'{"item": "book", "quantity": 2, "amount": "12.50"}', key="k"
    )
    replay = post(
        client, "/canonical/", b'{ "amount":"12.50","quantity":2,"item":"book" }', key="k"
    )
    other = post(
        client, "/canonical/", b'{"item": "book", "quantity": 3, "amount": "12.50"}', key="k"
    )
    # Without it, key order matters.
    assert_fresh(post(client, "/create/", b'{"item": "a", "quantity": 1, "amount": "1"}', key="c"))
    reordered = post(client, "/create/", b'{"quantity": 1, "item": "a", "amount": "1"}', key="c")

    assert_fresh(first)
    assert_replay_of(first, replay)
    assert_problem(other, 409, "idempotency_key_mismatch")
    assert_problem(reordered, 409, "idempotency_key_mismatch")
    assert Order.objects.count() == 2


def test_scope_func_attribute(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    red = post(client, "/scope-func/", key="k-1", X_Team="red")
    blue = post(client, "/scope-func/", key="k-1", X_Team="blue")
    red_again = post(session_client(alice), "/scope-func/", key="k-1", X_Team="red")

    assert_fresh(red)
    assert_fresh(blue)
    assert_replay_of(red, red_again, session_vary=True)
    assert sorted(IdempotencyKey.objects.values_list("scope", flat=True)) == [
        "team:blue",
        "team:red",
    ]
    assert Order.objects.count() == 2


def test_exempt_attribute(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(client, "/exempt/", key="k-1")
    second = post(client, "/exempt/", key="k-1")
    malformed = post(client, "/exempt/", key="a,b")

    assert_fresh(first)
    assert_fresh(second)
    assert_fresh(malformed)
    assert first.content != second.content
    assert Order.objects.count() == 3
    assert IdempotencyKey.objects.count() == 0


def test_overridden_hooks(middleware: bool, alice: User, bob: User) -> None:
    as_alice = token_client(alice)
    first = post(as_alice, "/hooks/", key="header-ignored", X_Request_Id="r-1", X_Tenant="t1")
    # The fingerprint hook only looks at the item: another quantity is the same request.
    changed = json.dumps({**ORDER, "quantity": 9}).encode()
    replay = post(as_alice, "/hooks/", changed, X_Request_Id="r-1", X_Tenant="t1")
    other_item = post(
        as_alice,
        "/hooks/",
        json.dumps({**ORDER, "item": "pen"}).encode(),
        X_Request_Id="r-1",
        X_Tenant="t1",
    )
    other_tenant = post(as_alice, "/hooks/", X_Request_Id="r-1", X_Tenant="t2")
    other_user = post(token_client(bob), "/hooks/", X_Request_Id="r-1", X_Tenant="t1")
    no_request_id = post(as_alice, "/hooks/", key="k-1", X_Tenant="t1")

    assert_fresh(first)
    assert_replay_of(first, replay)
    assert_problem(other_item, 409, "idempotency_key_mismatch")
    assert_fresh(other_tenant)
    assert_fresh(other_user)
    assert_fresh(no_request_id)
    assert Order.objects.count() == 4
    assert sorted(IdempotencyKey.objects.values_list("scope", "key")) == sorted(
        [
            (f"tenant:t1:user:{alice.pk}", "r-1"),
            (f"tenant:t2:user:{alice.pk}", "r-1"),
            (f"tenant:t1:user:{bob.pk}", "r-1"),
        ]
    )


def test_options_come_from_settings_at_call_time(
    middleware: bool, alice: User, settings: Any
) -> None:
    settings.IDEMPOTENCY = {"TTL": timedelta(hours=2)}
    assert_fresh(post(token_client(alice), "/create/", key="k-1"))
    row = key_row("k-1")
    assert row.expires_at - row.created_at == timedelta(hours=2)


# -- exempt viewset actions -------------------------------------------------------------


def test_exempt_create_on_a_viewset(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(client, "/exempt-create/", key="k-1")
    second = post(client, "/exempt-create/", key="k-1")

    assert_fresh(first)
    assert_fresh(second)
    assert Order.objects.count() == 2
    assert IdempotencyKey.objects.count() == 0

    # The other actions of that viewset are still protected.
    order = Order.objects.first()
    assert order is not None
    url = f"/exempt-create/{order.pk}/"
    patch = client.patch(url, b'{"item": "x"}', content_type=JSON, headers={"Idempotency-Key": "p"})
    patch_again = client.patch(
        url, b'{"item": "x"}', content_type=JSON, headers={"Idempotency-Key": "p"}
    )
    assert patch.status_code == 200
    assert_replay_of(patch, patch_again)
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["p"]


def test_exempt_extra_action(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    ping = [post(client, "/orders/ping/", b"{}", key="k-1") for _ in range(2)]
    duplicate = [post(client, "/orders/duplicate/", b"{}", key="k-2") for _ in range(2)]

    assert_fresh(ping[0])
    assert_fresh(ping[1])
    assert_fresh(duplicate[0])
    assert_replay_of(duplicate[0], duplicate[1])
    assert Order.objects.filter(item="ping").count() == 2
    assert Order.objects.filter(item="dup").count() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["k-2"]


# -- CSRF-checked session requests ------------------------------------------------------


def _csrf_client(user: User) -> tuple[Client, str]:
    client = session_client(user, enforce_csrf_checks=True)
    token = json.loads(client.get("/csrf/").content)["token"]
    assert client.cookies["csrftoken"].value
    return client, token


def test_session_json_with_csrf_header(middleware: bool, alice: User) -> None:
    client, token = _csrf_client(alice)
    first = post(client, "/create/", key="k-1", X_CSRFToken=token)
    replay = post(client, "/create/", key="k-1", X_CSRFToken=token)

    assert_fresh(first)
    assert_replay_of(first, replay)
    assert Order.objects.count() == 1
    expected = default_fingerprint(
        RequestFactory().post("/create/", BODY, content_type=JSON),
        idempotency_settings.get().fingerprint_meta,
    )
    assert key_row("k-1").fingerprint == expected


@pytest.mark.parametrize("url", ["/create/", "/orders/"])
def test_session_multipart_with_csrf_field(middleware: bool, alice: User, url: str) -> None:
    client, token = _csrf_client(alice)
    form = {"csrfmiddlewaretoken": token, **ORDER}

    def send(data: dict[str, Any]) -> HttpResponse:
        return client.post(
            url, data, content_type=MULTIPART_CONTENT, headers={"Idempotency-Key": "k"}
        )

    first = send(form)
    replay = send(form)
    other = send({**form, "quantity": 3})

    assert_fresh(first)
    assert json.loads(first.content)["quantity"] == 2  # DRF still parsed the form
    assert_replay_of(first, replay)
    assert_problem(other, 409, "idempotency_key_mismatch")
    assert Order.objects.count() == 1
    # The fingerprint covers the raw body, read before DRF's parsers and CSRF check.
    expected = default_fingerprint(
        RequestFactory().post(url, form, content_type=MULTIPART_CONTENT),
        idempotency_settings.get().fingerprint_meta,
    )
    assert key_row("k").fingerprint == expected


def test_a_method_the_view_lacks_is_drfs_405_not_a_claim(middleware: bool, alice: User) -> None:
    client = token_client(alice)
    first = post(client, "/create/", key="k-405")
    put = client.put(
        "/create/",
        json.dumps({"item": "book", "quantity": 2}),
        content_type=JSON,
        headers={"Idempotency-Key": "k-405"},
    )
    patch = client.patch(
        "/create/",
        json.dumps({"item": "pen"}),
        content_type=JSON,
        headers={"Idempotency-Key": "k-other"},
    )

    assert first.status_code == 201
    assert put.status_code == 405  # not 409 idempotency_key_mismatch
    assert patch.status_code == 405
    assert list(IdempotencyKey.objects.values_list("key", "method")) == [("k-405", "POST")]
