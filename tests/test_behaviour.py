"""The rules every adapter follows, stated once (SPEC sections 3 to 6).

Each rule runs under every adapter: ``IdempotencyMiddleware`` on a plain view, the
``@idempotent`` decorator, a DRF view with ``IdempotencyMixin`` and a django-ninja
operation under ``idempotency.ninja.idempotent``; the last three alone and with the
middleware installed too. Each runs through both handlers (``Client``, WSGI, and
``AsyncClient``, ASGI), with a sync view and, where the adapter has them, an
``async def`` view. What only one adapter does (its options, DRF's authentication
and permissions, the middleware's exemptions, ninja's auth scopes) is tested in that
adapter's own module.

The views write a ``Payment`` as their business effect and append to ``CALLS``, a
side effect outside the database, so every test can tell whether a view ran. The
query string picks their answer: ``?status=N`` answers ``N``, ``?stream=1`` streams.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import path
from ninja import NinjaAPI
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from idempotency import ninja as idempotency_ninja
from idempotency.decorators import idempotent
from idempotency.models import IdempotencyKey, IdempotencyResponse
from idempotency.rest_framework import IdempotencyMixin
from tests import helpers
from tests.conftest import MIDDLEWARE
from tests.helpers import (
    BODY,
    JSON,
    Send,
    assert_problem,
    assert_replay_of,
    idem,
    key_row,
    new_key,
)
from tests.testapp.models import Payment

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

# ---------------------------------------------------------------------------- views

#: One entry per view run: "<METHOD> <full path>".
CALLS: list[str] = []


def _amount(request: HttpRequest) -> str:
    try:
        return str(json.loads(request.body)["amount"])
    except (ValueError, TypeError, KeyError):
        return "1.00"


def _note(request: HttpRequest) -> int:
    CALLS.append(f"{request.method} {request.get_full_path()}")
    return len(CALLS)


def _answer(request: HttpRequest, n: int, payment: Payment) -> HttpResponseBase:
    if request.GET.get("stream"):
        return StreamingHttpResponse(iter([b"part-1,", f"call-{n}".encode()]), status=201)
    body = {
        "call": n,
        "id": payment.pk,
        "method": request.method,
        "body": hashlib.sha256(request.body).hexdigest(),
    }
    response = JsonResponse(body, status=int(request.GET.get("status", 201)))
    response["X-Call"] = str(n)
    response.set_cookie("seen", "yes")
    return response


def pay(request: HttpRequest) -> HttpResponseBase:
    n = _note(request)
    payment = Payment.objects.create(amount=_amount(request), currency="EUR", reference=str(n))
    return _answer(request, n, payment)


async def apay(request: HttpRequest) -> HttpResponseBase:
    n = _note(request)
    payment = await Payment.objects.acreate(
        amount=_amount(request), currency="EUR", reference=str(n)
    )
    return _answer(request, n, payment)


class PayView(IdempotencyMixin, APIView):
    """Anonymous callers may pay: the rules, not DRF's authentication, are under test."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def post(self, request: Request) -> HttpResponseBase:
        return pay(request._request)

    put = post


api = NinjaAPI(urls_namespace="idempotency-behaviour")
METHODS = ["POST", "PUT"]


@api.api_operation(METHODS, "/sync/")
@idempotency_ninja.idempotent
def ninja_pay(request: HttpRequest) -> HttpResponseBase:
    return pay(request)


@api.api_operation(METHODS, "/sync/other/")
@idempotency_ninja.idempotent
def ninja_pay_other(request: HttpRequest) -> HttpResponseBase:
    return pay(request)


@api.api_operation(METHODS, "/async/")
@idempotency_ninja.idempotent
async def ninja_apay(request: HttpRequest) -> HttpResponseBase:
    return await apay(request)


@api.api_operation(METHODS, "/async/other/")
@idempotency_ninja.idempotent
async def ninja_apay_other(request: HttpRequest) -> HttpResponseBase:
    return await apay(request)


urlpatterns = [
    path("middleware/sync/", pay),
    path("middleware/sync/other/", pay),
    path("middleware/async/", apay),
    path("middleware/async/other/", apay),
    path("decorator/sync/", idempotent(pay)),
    path("decorator/sync/other/", idempotent(pay)),
    path("decorator/async/", idempotent(apay)),
    path("decorator/async/other/", idempotent(apay)),
    path("drf/sync/", PayView.as_view()),
    path("drf/sync/other/", PayView.as_view()),
    path("ninja/", api.urls),
]


# ---------------------------------------------------------------------------- harness


@dataclass(frozen=True)
class Via:
    """An adapter (``with_middleware``: the middleware installed too), a handler and a
    kind of view (``sync`` or ``async``)."""

    adapter: str
    with_middleware: bool
    handler: str
    kind: str

    @property
    def id(self) -> str:
        adapter = self.adapter + ("+middleware" if self.with_middleware else "")
        return f"{adapter}-{self.handler}-{self.kind}"

    def url(self, other: bool = False) -> str:
        return f"/{self.adapter}/{self.kind}/" + ("other/" if other else "")


#: (adapter, the middleware too, kinds of view the adapter has)
_ADAPTERS = [
    ("middleware", True, ("sync", "async")),
    ("decorator", False, ("sync", "async")),
    ("decorator", True, ("sync", "async")),
    ("drf", False, ("sync",)),
    ("drf", True, ("sync",)),
    ("ninja", False, ("sync", "async")),
    ("ninja", True, ("sync", "async")),
]
VIAS = [
    Via(adapter, with_middleware, handler, kind)
    for adapter, with_middleware, kinds in _ADAPTERS
    for handler in ("wsgi", "asgi")
    for kind in kinds
]


def _vias(kind: str | None = None) -> list[Any]:
    return [pytest.param(v, id=v.id) for v in VIAS if kind is None or v.kind == kind]


@pytest.fixture(autouse=True)
def _clean_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


@pytest.fixture
def send(via: Via, settings: Any) -> Send:
    """Requests through ``via``'s handler, with the middleware installed or not."""
    if not via.with_middleware:
        settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE]
    return Send(via.handler, BODY)


def stored(key: str) -> IdempotencyResponse | None:
    return IdempotencyResponse.objects.filter(idempotency_key__key=key).first()


def stored_headers(key: str) -> dict[str, str]:
    return {name.lower(): value for name, value in key_row(key).response.headers}


def assert_fresh(response: Any, status: int, call: int) -> None:
    """The view ran (its ``call``-th run in this test) and this is its own answer."""
    helpers.assert_fresh(response, status)
    assert json.loads(response.content)["call"] == call


def assert_nothing_ran() -> None:
    assert CALLS == []
    assert Payment.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


# ---------------------------------------------------------------------------- first run, replay


@pytest.mark.parametrize("via", _vias())
def test_first_request_runs_the_view_and_stores_the_response(send: Send, via: Via) -> None:
    key = new_key()
    response = send("POST", via.url(), headers=idem(key))

    assert_fresh(response, 201, call=1)
    payment = Payment.objects.get()
    assert json.loads(response.content)["id"] == payment.pk
    row = key_row(key)
    assert row.state == IdempotencyKey.State.COMPLETED
    assert (row.scope, row.method, row.path, row.fence) == ("anonymous", "POST", via.url(), 1)
    assert row.lease_expires_at is None
    assert row.expires_at - row.created_at == timedelta(hours=24)
    response_row = stored(key)
    assert response_row is not None
    assert response_row.status == 201
    assert bytes(response_row.body) == response.content
    headers = stored_headers(key)
    assert headers["content-type"] == JSON
    assert headers["x-call"] == "1"
    assert "set-cookie" not in headers
    assert "date" not in headers


@pytest.mark.parametrize("via", _vias())
def test_retry_replays_without_running_the_view(send: Send, via: Via) -> None:
    key = new_key()
    first = send("POST", via.url(), headers=idem(key))
    second = send("POST", via.url(), headers=idem(key))
    third = send("POST", via.url(), headers=idem(key))

    assert_fresh(first, 201, call=1)
    assert_replay_of(first, second, cookie="seen")
    assert_replay_of(first, third, cookie="seen")
    assert second["X-Call"] == "1"
    assert second["Content-Type"] == JSON
    assert len(CALLS) == 1
    assert Payment.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    assert IdempotencyResponse.objects.count() == 1


@pytest.mark.parametrize("via", _vias())
def test_without_a_key_the_request_runs_unprotected(send: Send, via: Via) -> None:
    first = send("POST", via.url())
    second = send("POST", via.url())

    assert_fresh(first, 201, call=1)
    assert_fresh(second, 201, call=2)
    assert Payment.objects.count() == 2
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.parametrize("via", _vias())
def test_each_new_key_runs_the_view(send: Send, via: Via) -> None:
    first = send("POST", via.url(), headers=idem(new_key()))
    second = send("POST", via.url(), headers=idem(new_key()))

    assert_fresh(first, 201, call=1)
    assert_fresh(second, 201, call=2)
    assert Payment.objects.count() == 2
    assert IdempotencyKey.objects.count() == 2


# ---------------------------------------------------------------------------- mismatch

#: How a second request with the same key differs from the first: (method, the other
#: view, query string, body, content type); the first is a POST of BODY to ``?a=1&b=2``.
DIFFERENCES: dict[str, tuple[str, bool, str, bytes, str]] = {
    "body": ("POST", False, "?a=1&b=2", b'{"amount": "99.00"}', JSON),
    "body-whitespace": ("POST", False, "?a=1&b=2", BODY + b" ", JSON),
    "query": ("POST", False, "?a=2&b=2", BODY, JSON),
    "query-order": ("POST", False, "?b=2&a=1", BODY, JSON),
    "query-added": ("POST", False, "?a=1&b=2&c=3", BODY, JSON),
    "query-dropped": ("POST", False, "", BODY, JSON),
    "content-type": ("POST", False, "?a=1&b=2", BODY, "text/plain"),
    "content-type-params": ("POST", False, "?a=1&b=2", BODY, JSON + "; charset=latin-1"),
    "method": ("PUT", False, "?a=1&b=2", BODY, JSON),
    "path": ("POST", True, "?a=1&b=2", BODY, JSON),
}


@pytest.mark.parametrize("difference", DIFFERENCES.values(), ids=DIFFERENCES.keys())
@pytest.mark.parametrize("via", _vias())
def test_same_key_different_request_is_a_mismatch(
    send: Send, via: Via, difference: tuple[str, bool, str, bytes, str]
) -> None:
    method, other, query, body, content_type = difference
    key = new_key()
    url = via.url() + "?a=1&b=2"
    original = send("POST", url, headers=idem(key))
    conflict = send(method, via.url(other) + query, body, content_type, headers=idem(key))

    assert_fresh(original, 201, call=1)
    assert_problem(conflict, 409, "idempotency_key_mismatch")
    assert len(CALLS) == 1
    assert Payment.objects.count() == 1
    # The stored response is untouched, and the original request still replays.
    assert key_row(key).state == IdempotencyKey.State.COMPLETED
    assert stored(key).status == 201  # type: ignore[union-attr]
    assert_replay_of(original, send("POST", url, headers=idem(key)), cookie="seen")


@pytest.mark.parametrize("via", _vias())
def test_mismatch_status_may_be_422(send: Send, via: Via, settings: Any) -> None:
    settings.IDEMPOTENCY = {"MISMATCH_STATUS": 422}
    key = new_key()
    assert_fresh(send("POST", via.url(), headers=idem(key)), 201, call=1)

    conflict = send("POST", via.url(), b'{"amount": "99.00"}', headers=idem(key))

    assert_problem(conflict, 422, "idempotency_key_mismatch")
    assert len(CALLS) == 1
    assert Payment.objects.count() == 1


# ---------------------------------------------------------------------------- missing, malformed


@pytest.mark.parametrize("via", _vias())
def test_missing_key_where_required_is_400(send: Send, via: Via, settings: Any) -> None:
    settings.IDEMPOTENCY = {"REQUIRED": True}
    response = send("POST", via.url())

    body = assert_problem(response, 400, "idempotency_key_missing")
    assert body["detail"] == "This request needs an Idempotency-Key header."
    assert_nothing_ran()


def _mojibake(text: str) -> str:
    # What a server hands the app for UTF-8 bytes in a header: latin-1 decoded.
    return text.encode("utf-8").decode("latin-1")


INVALID_KEYS = {
    "empty": "",
    "spaces-only": "   ",
    "too-long": "a" * 256,
    "10KiB": "k" * 10240,
    "control-char": "ab\x01cd",
    "tab": "ab\tcd",
    "newline": "ab\ncd",
    "del": "ab\x7fcd",
    "nul": "ab\x00cd",
    "non-ascii": _mojibake("clé-€"),
    "latin-1": "caf\xe9",
    "unquoted-comma": "a,b",
    "joined-repeat": "abc, abc",
    "joined-repeat-no-space": "abc,abc",
    "quoted-list": '"abc", "abc"',
    "bad-escape": '"a\\nb"',
    "escape-at-end": '"abc\\',
    "unterminated": '"abc',
    "trailing-garbage": '"abc"x',
    "two-strings": '"abc" "def"',
    "empty-string": '""',
    "quoted-too-long": '"' + "a" * 256 + '"',
    "quoted-control": '"a\x01b"',
    "quoted-10KiB": '"' + "q" * 10240 + '"',
}


@pytest.mark.parametrize("value", INVALID_KEYS.values(), ids=INVALID_KEYS.keys())
@pytest.mark.parametrize("via", _vias("sync"))
def test_malformed_key_is_400(send: Send, via: Via, value: str) -> None:
    response = send("POST", via.url(), headers=idem(value))

    assert_problem(response, 400, "idempotency_key_invalid")
    assert_nothing_ran()


@pytest.mark.parametrize("value", ["", "a,b", '"abc', "caf\xe9"])
@pytest.mark.parametrize("via", _vias("async"))
def test_malformed_key_is_400_before_an_async_view(send: Send, via: Via, value: str) -> None:
    response = send("POST", via.url(), headers=idem(value))

    assert_problem(response, 400, "idempotency_key_invalid")
    assert_nothing_ran()


# ---------------------------------------------------------------------------- not stored


@pytest.mark.parametrize("status", [401, 403, 408, 425, 429, 500, 502, 503, 504])
@pytest.mark.parametrize("via", _vias())
def test_non_storable_status_releases_the_key(send: Send, via: Via, status: int) -> None:
    key = new_key()
    url = f"{via.url()}?status={status}"
    first = send("POST", url, headers=idem(key))

    assert_fresh(first, status, call=1)
    row = key_row(key)
    assert row.state == IdempotencyKey.State.RELEASED
    assert row.lease_expires_at is None
    assert stored(key) is None
    assert Payment.objects.count() == 0  # ATOMIC: the view's writes went with the failed answer

    retry = send("POST", url, headers=idem(key))

    assert_fresh(retry, status, call=2)
    assert (key_row(key).state, key_row(key).fence) == (IdempotencyKey.State.RELEASED, 2)
    assert stored(key) is None
    assert Payment.objects.count() == 0


@pytest.mark.parametrize("via", _vias())
def test_streaming_response_is_not_stored_and_releases_the_key(send: Send, via: Via) -> None:
    key = new_key()
    url = f"{via.url()}?stream=1"
    first = send("POST", url, headers=idem(key))

    assert first.status_code == 201
    assert first.streaming
    assert "Idempotent-Replayed" not in first
    assert first.getvalue() == b"part-1,call-1"
    row = key_row(key)
    assert row.state == IdempotencyKey.State.RELEASED
    assert stored(key) is None
    assert Payment.objects.count() == 1  # the stream's writes stand, as without the app

    retry = send("POST", url, headers=idem(key))

    assert "Idempotent-Replayed" not in retry
    assert retry.getvalue() == b"part-1,call-2"
    assert Payment.objects.count() == 2
    assert IdempotencyResponse.objects.count() == 0
