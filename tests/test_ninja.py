"""django-ninja: authentication inside the view, under the middleware and the decorator.

ninja authenticates in the operation, after every middleware has run. The
middleware therefore scopes a ninja request by the credentials it carries
(``CREDENTIAL_HEADERS``); ``idempotency.ninja.idempotent`` claims after ninja's
auth and scopes by ``request.auth``. Either way no caller gets another's response.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.urls import path
from ninja import NinjaAPI, Schema
from ninja.errors import HttpError
from ninja.security import APIKeyHeader, HttpBearer

from idempotency import decorators as plain_decorators
from idempotency.decorators import idempotency_exempt
from idempotency.models import IdempotencyKey
from idempotency.ninja import auth_scope, idempotent
from tests.helpers import Send, new_key

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

TOKENS = {"alice-token": "alice", "bob-token": "bob"}
RUNS: list[str] = []


def _user(secret: str) -> User | None:
    name = TOKENS.get(secret)
    return User.objects.get_or_create(username=name)[0] if name else None


class Bearer(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> User | None:
        return _user(token)


class ApiKey(APIKeyHeader):
    param_name = "X-API-Key"

    def authenticate(self, request: HttpRequest, key: str | None) -> User | None:
        return _user(key or "")


class CustomKey(APIKeyHeader):
    """A scheme whose header the app does not know (not in CREDENTIAL_HEADERS)."""

    param_name = "X-Shop-Secret"

    def authenticate(self, request: HttpRequest, key: str | None) -> str | None:
        return key if key in TOKENS else None


class PaymentIn(Schema):
    amount: int


api = NinjaAPI(urls_namespace="idempotency-ninja-tests")


def _create(request: HttpRequest, payload: PaymentIn, where: str) -> dict[str, Any]:
    RUNS.append(where)
    group = Group.objects.create(name=f"{where}-{uuid.uuid4()}")
    return {"id": group.pk, "amount": payload.amount, "run": len(RUNS)}


@api.post("/bearer/", auth=Bearer(), response={201: dict})
@idempotent
def bearer(request: HttpRequest, payload: PaymentIn) -> Any:
    return _create(request, payload, "bearer")


@api.post("/api-key/", auth=ApiKey(), response={201: dict})
@idempotent(ttl=60)
def api_key(request: HttpRequest, payload: PaymentIn) -> Any:
    return _create(request, payload, "api-key")


@api.post("/async-bearer/", auth=Bearer(), response={201: dict})
@idempotent
async def async_bearer(request: HttpRequest, payload: PaymentIn) -> Any:
    from asgiref.sync import sync_to_async

    return await sync_to_async(_create)(request, payload, "async-bearer")


@api.post("/fails/", auth=Bearer(), response={201: dict})
@idempotent
def fails(request: HttpRequest, payload: PaymentIn) -> Any:
    _create(request, payload, "fails")
    raise HttpError(400, "refused after a write")


# Protected by the middleware alone.
@api.post("/mw-api-key/", auth=ApiKey(), response={201: dict})
def mw_api_key(request: HttpRequest, payload: PaymentIn) -> Any:
    return _create(request, payload, "mw-api-key")


@api.post("/mw-bearer/", auth=Bearer(), response={201: dict})
def mw_bearer(request: HttpRequest, payload: PaymentIn) -> Any:
    return _create(request, payload, "mw-bearer")


@api.post("/mw-custom/", auth=CustomKey(), response={201: dict})
def mw_custom(request: HttpRequest, payload: PaymentIn) -> Any:
    return _create(request, payload, "mw-custom")


# Django's own decorator on a ninja operation: the operation returns data, not a response.
@api.post("/wrong-decorator/", auth=Bearer(), response={201: dict})
@plain_decorators.idempotent(scope_func=lambda request: str(request.auth))
def wrong_decorator(request: HttpRequest, payload: PaymentIn) -> Any:
    return _create(request, payload, "wrong")


@api.post("/exempt/", auth=Bearer(), response={201: dict})
@idempotency_exempt
def exempt(request: HttpRequest, payload: PaymentIn) -> Any:
    return _create(request, payload, "exempt")


@api.post("/reuses/", auth=Bearer(), response={201: dict})
def reuses(request: HttpRequest, payload: PaymentIn) -> Any:
    """An undecorated operation that calls a decorated one as a plain function."""
    return bearer(request, payload)


class Yes(HttpBearer):
    """An auth callback that answers True: no principal to name."""

    def authenticate(self, request: HttpRequest, token: str) -> bool:
        return token in TOKENS


@api.post("/yes/", auth=Yes(), response={201: dict})
@idempotent
def yes(request: HttpRequest, payload: PaymentIn) -> Any:
    return _create(request, payload, "yes")


urlpatterns = [path("ninja/", api.urls)]


@pytest.fixture(autouse=True)
def _runs() -> None:
    RUNS.clear()


@pytest.fixture(params=["wsgi", "asgi"])
def send(request: pytest.FixtureRequest) -> Send:
    return Send(request.param, b'{"amount": 12}')


def bearer_of(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}-token"}


def api_key_of(name: str) -> dict[str, str]:
    return {"X-API-Key": f"{name}-token"}


def keyed(key: str, credentials: dict[str, str]) -> dict[str, str]:
    return {"Idempotency-Key": key, **credentials}


def the_scope(key: str) -> list[str]:
    return sorted(IdempotencyKey.objects.filter(key=key).values_list("scope", flat=True))


# ------------------------------------------------------------- idempotency.ninja.idempotent


@pytest.mark.parametrize(
    ("url", "credentials"),
    [
        ("/ninja/bearer/", bearer_of),
        ("/ninja/api-key/", api_key_of),
        ("/ninja/async-bearer/", bearer_of),
    ],
)
def test_decorated_operation_is_scoped_by_request_auth(
    send: Send, url: str, credentials: Any
) -> None:
    key = new_key()
    nobody = send("POST", url, headers={"Idempotency-Key": key})
    first = send("POST", url, headers=keyed(key, credentials("alice")))
    replay = send("POST", url, headers=keyed(key, credentials("alice")))
    bob = send("POST", url, headers=keyed(key, credentials("bob")))
    nobody_again = send("POST", url, headers={"Idempotency-Key": key})

    assert nobody.status_code == 401  # ninja's auth refused it before any claim
    assert first.status_code == 201
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert bob.status_code == 201
    assert "Idempotent-Replayed" not in bob
    assert bob.content != first.content
    assert nobody_again.status_code == 401
    assert len(RUNS) == 2
    alice, bob_user = User.objects.get(username="alice"), User.objects.get(username="bob")
    assert the_scope(key) == sorted([f"user:{alice.pk}", f"user:{bob_user.pk}"])


def test_decorated_operation_with_the_middleware_is_claimed_once_with_its_options(
    send: Send,
) -> None:
    key = new_key()
    first = send("POST", "/ninja/api-key/", headers=keyed(key, api_key_of("alice")))
    replay = send("POST", "/ninja/api-key/", headers=keyed(key, api_key_of("alice")))

    assert first.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    row = IdempotencyKey.objects.get(key=key)  # exactly one claim
    assert row.scope == f"user:{User.objects.get(username='alice').pk}"  # ninja's request.auth
    # The decorator's ttl=60 applied, not the setting's 24 hours.
    assert (row.expires_at - row.created_at).total_seconds() < 120


def test_decorated_operation_that_raises_rolls_back_and_releases(send: Send) -> None:
    key = new_key()
    first = send("POST", "/ninja/fails/", headers=keyed(key, bearer_of("alice")))
    again = send("POST", "/ninja/fails/", headers=keyed(key, bearer_of("alice")))

    assert first.status_code == 400
    assert again.status_code == 400
    assert "Idempotent-Replayed" not in again
    assert RUNS == ["fails", "fails"]  # released: the retry ran again
    assert Group.objects.count() == 0  # and each run's write was rolled back
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.RELEASED


def test_decorator_above_the_route_is_refused() -> None:
    other = NinjaAPI(urls_namespace="idempotency-ninja-misplaced")

    with pytest.raises(ImproperlyConfigured, match=r"below @api\.post"):

        @idempotent
        @other.post("/misplaced/")
        def misplaced(request: HttpRequest) -> dict[str, str]:
            return {}


def test_auth_scope_of_each_kind_of_principal(rf: Any) -> None:
    request = rf.post("/")
    user = User.objects.create_user("carol")
    group = Group.objects.create(name="tenant")
    request.auth = user
    assert auth_scope(request) == f"user:{user.pk}"
    request.auth = group
    assert auth_scope(request) == f"auth.group:{group.pk}"
    request.auth = "token-1"
    token_1 = auth_scope(request)
    request.auth = "token-2"
    assert token_1.startswith("auth:") and auth_scope(request) != token_1
    request.auth = 7
    assert auth_scope(request) == auth_scope(request) != token_1
    request.auth = "7"
    assert auth_scope(request) != auth_scope_of(rf, 7)
    request.auth = object()  # names no principal: the request's credentials scope it
    assert auth_scope(request) == "anonymous"


def auth_scope_of(rf: Any, auth: Any) -> str:
    request = rf.post("/")
    request.auth = auth
    return auth_scope(request)


# ------------------------------------------------------------------ the middleware alone


@pytest.mark.parametrize(
    ("url", "credentials"),
    [("/ninja/mw-api-key/", api_key_of), ("/ninja/mw-bearer/", bearer_of)],
)
def test_middleware_scopes_ninja_requests_by_their_credentials(
    send: Send, url: str, credentials: Any
) -> None:
    key = new_key()
    nobody = send("POST", url, headers={"Idempotency-Key": key})
    first = send("POST", url, headers=keyed(key, credentials("alice")))
    bob = send("POST", url, headers=keyed(key, credentials("bob")))
    nobody_again = send("POST", url, headers={"Idempotency-Key": key})
    replay = send("POST", url, headers=keyed(key, credentials("alice")))

    assert nobody.status_code == 401
    assert nobody_again.status_code == 401  # the 401 was not stored: ninja refused again
    assert first.status_code == 201
    assert bob.status_code == 201
    assert "Idempotent-Replayed" not in bob
    assert bob.content != first.content
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content  # alice gets her own response, not the 401
    assert len(RUNS) == 2
    scopes = the_scope(key)
    assert "anonymous" in scopes  # the refused request's key, released
    assert IdempotencyKey.objects.get(key=key, scope="anonymous").state == (
        IdempotencyKey.State.RELEASED
    )


def test_unknown_scheme_under_the_middleware_is_never_stored_for_others(
    send: Send, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_key()
    with caplog.at_level(logging.WARNING, logger="idempotency"):
        alice = send(
            "POST",
            "/ninja/mw-custom/",
            headers={"Idempotency-Key": key, "X-Shop-Secret": "alice-token"},
        )
    bob = send(
        "POST", "/ninja/mw-custom/", headers={"Idempotency-Key": key, "X-Shop-Secret": "bob-token"}
    )
    nobody = send("POST", "/ninja/mw-custom/", headers={"Idempotency-Key": key})

    assert alice.status_code == 201
    assert bob.status_code == 201
    assert "Idempotent-Replayed" not in bob
    assert bob.content != alice.content
    assert nobody.status_code == 401
    assert len(RUNS) == 2
    assert Group.objects.count() == 2  # the writes stood; only the response was not stored
    row = IdempotencyKey.objects.get(key=key)
    assert row.scope == "anonymous"
    assert row.state == IdempotencyKey.State.RELEASED
    assert any("CREDENTIAL_HEADERS" in r.getMessage() for r in caplog.records)


def test_the_unknown_scheme_replays_once_its_header_is_a_credential(
    send: Send, settings: Any
) -> None:
    settings.IDEMPOTENCY = {"CREDENTIAL_HEADERS": ["Authorization", "X-Shop-Secret"]}
    key = new_key()
    alice = send(
        "POST",
        "/ninja/mw-custom/",
        headers={"Idempotency-Key": key, "X-Shop-Secret": "alice-token"},
    )
    replay = send(
        "POST",
        "/ninja/mw-custom/",
        headers={"Idempotency-Key": key, "X-Shop-Secret": "alice-token"},
    )
    bob = send(
        "POST", "/ninja/mw-custom/", headers={"Idempotency-Key": key, "X-Shop-Secret": "bob-token"}
    )

    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == alice.content
    assert "Idempotent-Replayed" not in bob
    assert len(RUNS) == 2
    assert all(scope.startswith("credentials:") for scope in the_scope(key))


def test_django_decorator_on_a_ninja_operation_is_a_clear_error(send: Send) -> None:
    key = new_key()
    with pytest.raises(TypeError, match=r"idempotency\.ninja\.idempotent"):
        send("POST", "/ninja/wrong-decorator/", headers=keyed(key, bearer_of("alice")))
    # Its options were not silently skipped: the middleware left the route to it.
    assert IdempotencyKey.objects.get(key=key).scope == "alice"
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.RELEASED
    assert Group.objects.count() == 0


def test_exempt_operation_is_left_alone_by_the_middleware(send: Send) -> None:
    key = new_key()
    first = send("POST", "/ninja/exempt/", headers=keyed(key, bearer_of("alice")))
    second = send("POST", "/ninja/exempt/", headers=keyed(key, bearer_of("alice")))

    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert RUNS == ["exempt", "exempt"]
    assert not IdempotencyKey.objects.filter(key=key).exists()


def test_a_decorated_operation_called_as_a_function_claims_nothing(
    send: Send, middleware: bool
) -> None:
    from django.db import connection

    key = new_key()
    first = send("POST", "/ninja/reuses/", headers=keyed(key, bearer_of("alice")))

    assert first.status_code == 201
    assert not connection.in_atomic_block
    assert Group.objects.count() == 1
    if middleware:
        # The middleware protects the outer operation: one claim, completed.
        assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.COMPLETED
    else:
        # The inner call has no end of ninja's run to store at: it claims nothing.
        assert not IdempotencyKey.objects.filter(key=key).exists()


def test_an_auth_that_answers_true_is_scoped_by_the_credentials(send: Send) -> None:
    key = new_key()
    alice = send("POST", "/ninja/yes/", headers=keyed(key, bearer_of("alice")))
    replay = send("POST", "/ninja/yes/", headers=keyed(key, bearer_of("alice")))
    bob = send("POST", "/ninja/yes/", headers=keyed(key, bearer_of("bob")))

    assert alice.status_code == bob.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in bob
    assert all(scope.startswith("authorization:") for scope in the_scope(key))
