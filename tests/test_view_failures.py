"""A failure anywhere between the claim and the stored response, in every adapter.

A view that returns something other than a response (``None``, a django-ninja style
dict), a template that cannot render, a response that breaks while it is read: each
must roll the view's writes back, release the key, leave the connection usable for
the next request, and reach Django's own error handling as a 500.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import OperationalError, connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotency.decorators import idempotent
from idempotency.models import IdempotencyKey
from idempotency.rest_framework import IdempotencyMixin
from tests.helpers import Send, new_key

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

#: What the views do this time: "broken" (the failure under test) or "ok" (a 201).
STATE = {"mode": "broken"}


class BrokenContent(HttpResponse):
    """A response that fails when the app reads its body to store it."""

    @property  # type: ignore[override]
    def content(self) -> bytes:
        raise RuntimeError("the body cannot be read")

    @content.setter
    def content(self, value: Any) -> None:
        pass


def _write(request: HttpRequest) -> Any:
    Group.objects.create(name=f"g-{uuid.uuid4()}")
    if STATE["mode"] == "ok":
        return JsonResponse({"groups": Group.objects.count()}, status=201)
    failure = request.GET.get("failure", "none")
    if failure == "none":
        return None
    if failure == "dict":
        return {"id": 1}
    if failure == "template":
        return TemplateResponse(request, "idempotency/no-such-template.html", status=201)
    return BrokenContent(status=201)


@csrf_exempt
@idempotent
def decorated(request: HttpRequest) -> Any:
    return _write(request)


@csrf_exempt
@idempotent
async def decorated_async(request: HttpRequest) -> Any:
    from asgiref.sync import sync_to_async

    return await sync_to_async(_write)(request)


@csrf_exempt
def plain(request: HttpRequest) -> Any:
    """Protected by the middleware."""
    return _write(request)


def _failing_hook() -> None:
    raise RuntimeError("the mail server is down")


def _stream_with_hook(request: HttpRequest) -> Any:
    Group.objects.create(name=f"g-{uuid.uuid4()}")
    if STATE["mode"] == "broken":
        transaction.on_commit(_failing_hook)
    return StreamingHttpResponse(iter([b"streamed"]), status=201)


@csrf_exempt
@idempotent
def decorated_stream(request: HttpRequest) -> Any:
    return _stream_with_hook(request)


@csrf_exempt
def plain_stream(request: HttpRequest) -> Any:
    return _stream_with_hook(request)


class Open(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []


class Mixin(IdempotencyMixin, Open):
    def post(self, request: Request) -> Any:
        Group.objects.create(name=f"g-{uuid.uuid4()}")
        if STATE["mode"] == "ok":
            return Response({"groups": Group.objects.count()}, status=201)
        return None


urlpatterns = [
    path("decorated/", decorated),
    path("decorated-async/", decorated_async),
    path("plain/", plain),
    path("mixin/", Mixin.as_view()),
    path("decorated-stream/", decorated_stream),
    path("plain-stream/", plain_stream),
]

#: Each adapter, and the failures it can meet. Under the middleware Django itself
#: refuses a view's None (ValueError) before the app sees it; a DRF view's None
#: fails DRF's own assertion in finalize_response.
CASES = [
    ("decorated/", "none"),
    ("decorated/", "dict"),
    ("decorated/", "template"),
    ("decorated/", "content"),
    ("decorated-async/", "none"),
    ("decorated-async/", "dict"),
    ("decorated-async/", "content"),
    ("plain/", "none"),
    ("plain/", "template"),
    ("plain/", "content"),
    ("mixin/", "none"),
]


@pytest.fixture(autouse=True)
def _broken() -> Any:
    STATE["mode"] = "broken"
    yield
    STATE["mode"] = "broken"


@pytest.fixture(params=["wsgi", "asgi"])
def send(request: pytest.FixtureRequest) -> Send:
    return Send(request.param, b'{"amount": 1}')


@pytest.mark.parametrize(("url", "failure"), CASES)
def test_failure_rolls_back_releases_and_answers_500(send: Send, url: str, failure: str) -> None:
    key = new_key()
    target = f"/{url}?failure={failure}"
    client = send.client(raise_request_exception=False)

    first = send("POST", target, headers={"Idempotency-Key": key}, client=client)

    assert first.status_code == 500
    assert Group.objects.count() == 0  # the view's write was rolled back
    row = IdempotencyKey.objects.get(key=key)
    assert row.state == IdempotencyKey.State.RELEASED
    assert not hasattr(row, "response") or row.response is None
    assert not connection.in_atomic_block

    # The same worker serves the next requests: an unkeyed write, and the retry.
    STATE["mode"] = "ok"
    unkeyed = send("POST", target, client=client)
    retry = send("POST", target, headers={"Idempotency-Key": key}, client=client)
    replay = send("POST", target, headers={"Idempotency-Key": key}, client=client)

    assert unkeyed.status_code == 201
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == retry.content
    assert Group.objects.count() == 2


@pytest.mark.parametrize(
    ("url", "returned", "view"),
    [
        ("decorated/", "none", f"{__name__}.decorated"),
        ("decorated/", "dict", f"{__name__}.decorated"),
        ("decorated-async/", "none", f"{__name__}.decorated_async"),
    ],
)
def test_a_view_that_returns_no_response_is_a_type_error_naming_it(
    send: Send, url: str, returned: str, view: str
) -> None:
    key = new_key()
    with pytest.raises(TypeError) as raised:
        send("POST", f"/{url}?failure={returned}", headers={"Idempotency-Key": key})

    message = str(raised.value)
    assert f"The view {view} didn't return an HttpResponse object" in message
    assert ("It returned None" in message) == (returned == "none")
    assert ("It returned a dict" in message) == (returned == "dict")
    assert ("idempotency.ninja.idempotent" in message) == (returned == "dict")
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.RELEASED


@pytest.mark.parametrize("url", ["decorated-stream/", "plain-stream/"])
def test_an_on_commit_hook_that_raises_still_frees_the_key(send: Send, url: str) -> None:
    key = new_key()
    client = send.client(raise_request_exception=False)

    first = send("POST", f"/{url}", headers={"Idempotency-Key": key}, client=client)

    assert first.status_code == 500  # the hook's error, through Django's handling
    assert Group.objects.count() == 1  # a stream is not stored: its writes stand
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.RELEASED
    assert not connection.in_atomic_block
    STATE["mode"] = "ok"
    retry = send("POST", f"/{url}", headers={"Idempotency-Key": key}, client=client)
    assert retry.status_code == 201  # not 409 locked


@pytest.mark.parametrize("url", ["decorated/", "plain/", "mixin/"])
def test_a_failed_begin_of_the_view_transaction_is_a_503(
    send: Send, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = transaction.Atomic.__enter__
    failures = []

    def enter(self: transaction.Atomic) -> None:
        # Fail the view's transaction, opened after the claim's INSERT committed.
        if not failures and IdempotencyKey.objects.exists():
            failures.append(self)
            raise OperationalError("server closed the connection unexpectedly")
        original(self)

    monkeypatch.setattr(transaction.Atomic, "__enter__", enter)
    key = new_key()
    STATE["mode"] = "ok"

    answer = send("POST", f"/{url}", headers={"Idempotency-Key": key})

    assert failures
    assert answer.status_code == 503
    assert answer.json()["code"] == "idempotency_store_unavailable"
    assert Group.objects.count() == 0  # the view never ran
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.RELEASED
    assert not connection.in_atomic_block
