"""Scopes: no caller ever receives a response stored for another principal.

The default scope of a request without an authenticated ``request.user`` hashes the
credentials it carries (``CREDENTIAL_HEADERS``, ``CREDENTIAL_COOKIES``). A 401 or
403 is never stored. A view that authenticates its caller itself, under a key
claimed in the anonymous scope, never has its response stored there. And keys read
by ``key_func`` are strings or integers, or a clear 400.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import pytest
from django.contrib.auth import login
from django.contrib.auth.models import Group, User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import RequestFactory
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotency import decorators
from idempotency.engine import ANONYMOUS, default_scope
from idempotency.models import IdempotencyKey
from idempotency.rest_framework import IdempotencyMixin
from tests.helpers import Send, assert_problem, new_key

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

SECRETS = {"alice-secret": "alice", "bob-secret": "bob"}
RUNS: list[str] = []


def _run(where: str) -> JsonResponse:
    RUNS.append(where)
    group = Group.objects.create(name=f"{where}-{uuid.uuid4()}")
    return JsonResponse({"id": group.pk, "run": len(RUNS)}, status=201)


@csrf_exempt
def header_checked(request: HttpRequest) -> HttpResponse:
    """Authenticates by a header of its own, and says so only with a 401."""
    if request.headers.get("X-API-Key") not in SECRETS:
        return JsonResponse({"detail": "who are you?"}, status=401)
    return _run("header")


@csrf_exempt
def forbidden(request: HttpRequest) -> HttpResponse:
    Group.objects.create(name=f"forbidden-{uuid.uuid4()}")
    return JsonResponse({"detail": "not yours"}, status=403)


@csrf_exempt
def logs_in(request: HttpRequest) -> HttpResponse:
    """Signs the caller up and logs them in: a principal appears inside the view."""
    user = User.objects.create_user(f"new-{uuid.uuid4()}")
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return _run("login")


class SecretHeader(BaseAuthentication):
    """A DRF scheme on a header the app does not know."""

    def authenticate(self, request: Request) -> tuple[User, str] | None:
        name = SECRETS.get(request.META.get("HTTP_X_SHOP_SECRET", ""))
        if name is None:
            return None
        return User.objects.get_or_create(username=name)[0], name


class DRFWithoutMixin(APIView):
    """A DRF view under the middleware alone: DRF authenticates inside the view."""

    authentication_classes = [SecretHeader]
    permission_classes: list[Any] = []

    def post(self, request: Request) -> Response:
        RUNS.append("drf")
        return Response({"user": request.user.username, "run": len(RUNS)}, status=201)


class MixinWithOptions(IdempotencyMixin, APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    idempotency_ttl = 60

    def post(self, request: Request) -> Response:
        RUNS.append("mixin")
        return Response({}, status=201)


#: A decorator around a mixin view: the decorator claims first, the mixin's own
#: options cannot apply.
wrapped_mixin = decorators.idempotent(MixinWithOptions.as_view())


def _event_id(request: HttpRequest) -> Any:
    return json.loads(request.body).get("id")


@csrf_exempt
@decorators.idempotent(required=True, key_func=_event_id, scope_func=lambda r: "events")
def events(request: HttpRequest) -> HttpResponse:
    return _run("events")


@decorators.idempotent(ttl=60)
def routed_target(request: HttpRequest) -> HttpResponse:
    return _run("routed")


@csrf_exempt
def router(request: HttpRequest) -> HttpResponse:
    """A router of its own: the middleware sees this view, not the decorated one."""
    return routed_target(request)


urlpatterns = [
    path("header-checked/", header_checked),
    path("forbidden/", forbidden),
    path("logs-in/", logs_in),
    path("drf/", DRFWithoutMixin.as_view()),
    path("events/", events),
    path("router/", router),
    path("wrapped-mixin/", csrf_exempt(wrapped_mixin)),
]


@pytest.fixture(autouse=True)
def _runs() -> None:
    RUNS.clear()
    decorators._warned.clear()


@pytest.fixture(params=["wsgi", "asgi"])
def send(request: pytest.FixtureRequest) -> Send:
    return Send(request.param, b'{"amount": 1}')


def scopes(key: str) -> list[str]:
    return sorted(IdempotencyKey.objects.filter(key=key).values_list("scope", flat=True))


# ------------------------------------------------------------------------ default scope


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_default_scope_of_each_kind_of_caller(settings: Any) -> None:
    factory = RequestFactory()

    def scope(**headers: str) -> str:
        request = factory.post("/", headers=headers)
        return default_scope(request, request)

    assert scope() == ANONYMOUS
    # Authorization alone keeps the form it has always had.
    assert scope(Authorization="Token t1") == "authorization:" + _sha("Token t1")
    api_alice, api_bob = scope(x_api_key="alice-secret"), scope(x_api_key="bob-secret")
    assert api_alice.startswith("credentials:")
    assert api_alice != api_bob
    assert scope(x_api_key="alice-secret", Authorization="Token t1") not in (
        api_alice,
        scope(Authorization="Token t1"),
    )
    session_a, session_b = scope(Cookie="sessionid=aaa"), scope(Cookie="sessionid=bbb")
    assert session_a.startswith("credentials:") and session_a != session_b
    assert scope(Cookie="csrftoken=x") == ANONYMOUS  # not a credential

    settings.SESSION_COOKIE_NAME = "shop_session"
    assert scope(Cookie="sessionid=aaa") == ANONYMOUS
    assert scope(Cookie="shop_session=aaa").startswith("credentials:")

    settings.IDEMPOTENCY = {"CREDENTIAL_HEADERS": ["X-Shop-Secret"], "CREDENTIAL_COOKIES": []}
    assert scope(x_api_key="alice-secret") == ANONYMOUS
    assert scope(Cookie="shop_session=aaa") == ANONYMOUS
    assert scope(x_shop_secret="s").startswith("credentials:")


def test_authenticated_user_is_scoped_by_pk(alice: Any) -> None:
    request = RequestFactory().post("/", headers={"x_api_key": "alice-secret"})
    request.user = alice
    assert default_scope(request, request) == f"user:{alice.pk}"


# --------------------------------------------------------------- a view's own credentials


def test_a_header_scheme_of_the_view_never_replays_across_callers(send: Send) -> None:
    key = new_key()
    alice = send(
        "POST", "/header-checked/", headers={"Idempotency-Key": key, "X-API-Key": "alice-secret"}
    )
    bob = send(
        "POST", "/header-checked/", headers={"Idempotency-Key": key, "X-API-Key": "bob-secret"}
    )
    nobody = send("POST", "/header-checked/", headers={"Idempotency-Key": key})
    replay = send(
        "POST", "/header-checked/", headers={"Idempotency-Key": key, "X-API-Key": "alice-secret"}
    )

    assert alice.status_code == bob.status_code == 201
    assert "Idempotent-Replayed" not in bob
    assert bob.content != alice.content
    assert nobody.status_code == 401
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == alice.content
    assert RUNS == ["header", "header"]
    assert len(set(scopes(key))) == 3  # alice's, bob's and the anonymous one


@pytest.mark.parametrize("status_url", ["/header-checked/", "/forbidden/"])
def test_401_and_403_are_never_stored(send: Send, settings: Any, status_url: str) -> None:
    # No credential header is known: every caller shares the anonymous scope.
    settings.IDEMPOTENCY = {"CREDENTIAL_HEADERS": []}
    key = new_key()
    refused = send("POST", status_url, headers={"Idempotency-Key": key})
    alice = send("POST", status_url, headers={"Idempotency-Key": key, "X-API-Key": "alice-secret"})

    assert refused.status_code in (401, 403)
    assert "Idempotent-Replayed" not in alice  # the refusal was not replayed to her
    row = IdempotencyKey.objects.get(key=key)
    assert row.scope == ANONYMOUS
    if status_url == "/forbidden/":
        assert alice.status_code == 403
        assert row.state == IdempotencyKey.State.RELEASED
        assert Group.objects.count() == 0  # the 403's writes rolled back, as for a 5xx
    else:
        assert alice.status_code == 201
        assert RUNS == ["header"]


def test_a_drf_scheme_under_the_middleware_is_not_stored_in_the_anonymous_scope(
    send: Send, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_key()
    with caplog.at_level(logging.WARNING, logger="idempotency"):
        alice = send(
            "POST", "/drf/", headers={"Idempotency-Key": key, "X-Shop-Secret": "alice-secret"}
        )
    bob = send("POST", "/drf/", headers={"Idempotency-Key": key, "X-Shop-Secret": "bob-secret"})
    nobody = send("POST", "/drf/", headers={"Idempotency-Key": key})

    assert json.loads(alice.content)["user"] == "alice"
    assert json.loads(bob.content)["user"] == "bob"
    assert "Idempotent-Replayed" not in bob
    assert "Idempotent-Replayed" not in nobody
    assert json.loads(nobody.content)["user"] == ""
    assert RUNS == ["drf", "drf", "drf"]
    assert IdempotencyKey.objects.get(key=key).scope == ANONYMOUS
    assert any("authenticated its caller inside the view" in r.getMessage() for r in caplog.records)


def test_a_view_that_logs_the_caller_in_is_not_stored_in_the_anonymous_scope(send: Send) -> None:
    key = new_key()
    first = send("POST", "/logs-in/", headers={"Idempotency-Key": key})
    other = send("POST", "/logs-in/", headers={"Idempotency-Key": key})

    assert first.status_code == other.status_code == 201
    assert "Idempotent-Replayed" not in other
    assert RUNS == ["login", "login"]
    assert User.objects.count() == 2  # the writes stood; only the response was not stored
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.RELEASED


# --------------------------------------------------------------------------- key_func


def test_key_func_may_return_an_integer(send: Send) -> None:
    first = send("POST", "/events/", b'{"id": 42}')
    replay = send("POST", "/events/", b'{"id": 42}')

    assert first.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert IdempotencyKey.objects.get().key == "42"


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b'{"id": [1]}', "a list"), (b'{"id": 1.5}', "a float"), (b'{"id": true}', "a bool")],
)
def test_key_func_returning_another_type_is_a_400(send: Send, body: bytes, kind: str) -> None:
    answer = send("POST", "/events/", body)

    problem = assert_problem(answer, 400, "idempotency_key_invalid")
    assert f"is {kind};" in problem["detail"]
    assert "string or an integer" in problem["detail"]
    assert RUNS == []


def test_key_func_finding_no_key_says_what_is_missing(send: Send) -> None:
    answer = send("POST", "/events/", b'{"type": "paid"}')

    problem = assert_problem(answer, 400, "idempotency_key_missing")
    assert "Idempotency-Key header" not in problem["detail"]
    assert "where this endpoint reads it" in problem["detail"]


# ------------------------------------------------------------- options that cannot apply


def test_decorator_options_the_middleware_preempted_are_logged(
    send: Send, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="idempotency"):
        send("POST", "/router/", headers={"Idempotency-Key": new_key()})
        send("POST", "/router/", headers={"Idempotency-Key": new_key()})

    warnings = [r.getMessage() for r in caplog.records if "could apply" in r.getMessage()]
    assert len(warnings) == 1  # once per view
    assert "routed_target" in warnings[0]
    assert "ttl" in warnings[0]
    assert "EXEMPT_PATHS" in warnings[0]


def test_mixin_options_a_decorator_preempted_are_logged(
    send: Send, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="idempotency"):
        answer = send("POST", "/wrapped-mixin/", headers={"Idempotency-Key": new_key()})

    assert answer.status_code == 201
    warnings = [r.getMessage() for r in caplog.records if "could apply" in r.getMessage()]
    assert len(warnings) == 1
    assert "MixinWithOptions" in warnings[0] and "ttl" in warnings[0]
