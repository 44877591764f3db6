"""Responses larger than ``MAX_RESPONSE_SIZE``, through every adapter.

With ``ATOMIC`` the view's writes roll back, nothing is stored, the key is released
and the client gets ``500 idempotency_response_too_large``. Without it the view's
effects stand: the client gets the response, the key keeps a stand-in, and a retry
gets ``500 idempotency_response_not_kept`` without the view running again. A response
at or under the limit is stored and replayed byte for byte.

Each case runs through ``Client`` (WSGI) and ``AsyncClient`` (ASGI). The views write
a ``Group`` row (the effect a rollback undoes) and append to ``CALLS`` (an effect
outside the database), and answer ``X-Size`` bytes: a request header that is not
fingerprinted, so that a retry of the same request may ask for a smaller answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotency import signals
from idempotency.decorators import idempotent
from idempotency.models import IdempotencyKey, IdempotencyResponse
from idempotency.rest_framework import IdempotencyMixin
from tests.conftest import MIDDLEWARE
from tests.helpers import Send, assert_problem, key_row, new_key

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

LIMIT = 1000
#: One entry per view run.
CALLS: list[str] = []


def _body(request: HttpRequest) -> bytes:
    """``X-Size`` bytes that go through every byte value (escaping included)."""
    size = int(request.headers["X-Size"])
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def _run(request: HttpRequest) -> str:
    CALLS.append(request.path)
    return f"row-{len(CALLS)}"


def sized(request: HttpRequest) -> HttpResponse:
    Group.objects.create(name=_run(request))
    response = HttpResponse(_body(request), status=201, content_type="application/octet-stream")
    response["X-Call"] = str(len(CALLS))
    return response


def sized_error(request: HttpRequest) -> HttpResponse:
    Group.objects.create(name=_run(request))
    return HttpResponse(_body(request), status=503)


async def asized(request: HttpRequest) -> HttpResponse:
    await Group.objects.acreate(name=_run(request))
    return HttpResponse(_body(request), status=201, content_type="application/octet-stream")


def sized_in_parts(request: HttpRequest) -> HttpResponse:
    # Written in three parts, as a view that streams a CSV into an HttpResponse does.
    Group.objects.create(name=_run(request))
    body = _body(request)
    response = HttpResponse(status=201, content_type="application/octet-stream")
    third = len(body) // 3
    for part in (body[:third], body[third : 2 * third], body[2 * third :]):
        response.write(part)
    return response


class SizedAPIView(IdempotencyMixin, APIView):
    """DRF renders ``{"pad":"aaa..."}``, compact: 10 bytes around the padding."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        Group.objects.create(name=_run(request))
        size = int(request.headers["X-Size"])
        return Response({"pad": "a" * (size - 10)}, status=201)


urlpatterns = [
    path("plain/", sized),
    path("plain-async/", asized),
    path("plain-error/", sized_error),
    path("plain-parts/", sized_in_parts),
    path("decorated/", idempotent(sized)),
    path("decorated-async/", idempotent(asized)),
    path("drf/", SizedAPIView.as_view()),
]

#: (URL, whether the middleware is installed): the middleware on plain views, and
#: the decorator and the DRF mixin on their own and under the middleware.
CASES = {
    "middleware": ("/plain/", True),
    "middleware-async-view": ("/plain-async/", True),
    "middleware-written-in-parts": ("/plain-parts/", True),
    "decorator": ("/decorated/", False),
    "decorator-under-middleware": ("/decorated/", True),
    "decorator-async-view": ("/decorated-async/", False),
    "drf": ("/drf/", False),
    "drf-under-middleware": ("/drf/", True),
}


@pytest.fixture(params=["wsgi", "asgi"])
def send(request: pytest.FixtureRequest) -> Send:
    return Send(request.param, b'{"order": 1}')


@pytest.fixture(params=list(CASES))
def url(request: pytest.FixtureRequest, settings: Any) -> str:
    """The URL of one adapter's view, with the middleware installed or not."""
    where, with_middleware = CASES[request.param]
    if not with_middleware:
        settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE]
    return where


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


def limit(settings: Any, size: int | None = LIMIT, **more: Any) -> None:
    settings.IDEMPOTENCY = {"MAX_RESPONSE_SIZE": size, **more}


def post(send: Send, url: str, key: str, size: int) -> Any:
    return send("POST", url, headers={"Idempotency-Key": key, "X-Size": str(size)})


def rows() -> int:
    return Group.objects.count()


# ------------------------------------------------------------------------ ATOMIC


def test_over_the_limit_rolls_back_releases_and_says_why(
    send: Send, url: str, settings: Any
) -> None:
    limit(settings)
    key = new_key()

    first = post(send, url, key, LIMIT + 1)

    assert_problem(first, 500, "idempotency_response_too_large")
    assert len(CALLS) == 1
    assert rows() == 0  # the view's write went with the rollback
    assert key_row(key).state == IdempotencyKey.State.RELEASED
    assert IdempotencyResponse.objects.count() == 0  # not a byte of it kept

    # The key is free: the same request runs again, and gets the same answer.
    again = post(send, url, key, LIMIT + 1)
    assert_problem(again, 500, "idempotency_response_too_large")
    assert len(CALLS) == 2
    assert rows() == 0
    # A retry whose answer fits is stored, then replayed.
    fits = post(send, url, key, LIMIT)
    replay = post(send, url, key, LIMIT)
    assert fits.status_code == 201
    assert "Idempotent-Replayed" not in fits
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == fits.content
    assert len(CALLS) == 3
    assert rows() == 1


@pytest.mark.parametrize("size", [LIMIT, LIMIT - 1], ids=["at-the-limit", "one-byte-under"])
def test_at_or_under_the_limit_is_stored_and_replayed_byte_for_byte(
    send: Send, url: str, settings: Any, size: int
) -> None:
    limit(settings)
    key = new_key()

    first = post(send, url, key, size)
    replay = post(send, url, key, size)

    assert first.status_code == 201
    assert len(first.content) == size
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.status_code == 201
    assert replay.content == first.content
    assert replay["Content-Type"] == first["Content-Type"]
    assert bytes(IdempotencyResponse.objects.get().body) == first.content
    assert len(CALLS) == 1
    assert rows() == 1


def test_without_a_limit_any_size_is_stored(send: Send, url: str, settings: Any) -> None:
    limit(settings, None)
    key = new_key()

    first = post(send, url, key, 64 * LIMIT)
    replay = post(send, url, key, 64 * LIMIT)

    assert first.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert len(CALLS) == 1


# ---------------------------------------------------------------- ATOMIC = False


def test_not_atomic_over_the_limit_sends_it_and_never_runs_it_again(
    send: Send, url: str, settings: Any
) -> None:
    limit(settings, ATOMIC=False)
    key = new_key()

    first = post(send, url, key, LIMIT + 1)

    # The view's effects stand, so its answer goes out in full...
    assert first.status_code == 201
    assert len(first.content) == LIMIT + 1
    assert "Idempotent-Replayed" not in first
    assert rows() == 1
    # ...and the key is completed with a stand-in, never with part of the body.
    assert key_row(key).state == IdempotencyKey.State.COMPLETED
    stand_in = IdempotencyResponse.objects.get()
    assert stand_in.status == 500
    assert json.loads(bytes(stand_in.body))["code"] == "idempotency_response_not_kept"

    retry = post(send, url, key, LIMIT + 1)
    smaller = post(send, url, key, 10)

    body = assert_problem(retry, 500, "idempotency_response_not_kept", replayed=True)
    assert "201" in body["detail"]
    assert smaller.content == retry.content  # the same stand-in, whatever the retry asks
    assert len(CALLS) == 1  # the view never ran twice
    assert rows() == 1


def test_not_atomic_at_the_limit_is_stored(send: Send, url: str, settings: Any) -> None:
    limit(settings, ATOMIC=False)
    key = new_key()

    first = post(send, url, key, LIMIT)
    replay = post(send, url, key, LIMIT)

    assert first.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert len(CALLS) == 1


# ------------------------------------------------------------------------ the rest


def test_a_response_that_is_not_storable_anyway_is_left_alone(send: Send, settings: Any) -> None:
    # A 5xx is the view's own answer and is released as always, whatever its size.
    limit(settings)
    key = new_key()

    response = post(send, "/plain-error/", key, LIMIT + 1)

    assert response.status_code == 503
    assert len(response.content) == LIMIT + 1
    assert key_row(key).state == IdempotencyKey.State.RELEASED
    assert IdempotencyResponse.objects.count() == 0
    assert rows() == 0


@pytest.mark.django_db(transaction=True)  # the signals follow the commit
def test_signals_say_what_happened(send: Send, settings: Any) -> None:
    events: list[tuple[str, Any]] = []

    def on_released(**kwargs: Any) -> None:
        events.append(("released", kwargs["reason"]))

    def on_stored(**kwargs: Any) -> None:
        events.append(("stored", kwargs["status"]))

    signals.key_released.connect(on_released)
    signals.response_stored.connect(on_stored)
    try:
        limit(settings)
        post(send, "/plain/", new_key(), LIMIT + 1)
        limit(settings, ATOMIC=False)
        post(send, "/plain/", new_key(), LIMIT + 1)
    finally:
        signals.key_released.disconnect(on_released)
        signals.response_stored.disconnect(on_stored)

    assert events == [("released", "too_large"), ("stored", 500)]


def test_the_limit_is_logged(send: Send, settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    limit(settings)
    with caplog.at_level("ERROR", logger="idempotency"):
        post(send, "/plain/", "logged-key", LIMIT + 1)

    [record] = [r for r in caplog.records if r.name == "idempotency"]
    message = record.getMessage()
    assert "(1001 bytes)" in message
    assert "MAX_RESPONSE_SIZE" in message
    assert "'logged-key'" in message


def _documented_body(code: str) -> dict[str, Any]:
    text = (Path(__file__).resolve().parent.parent / "docs" / "errors.rst").read_text()
    for block in re.findall(r"\.\. code-block:: json\n\n((?:   .*\n)+)", text):
        body = json.loads(block)
        if body["code"] == code:
            return body  # type: ignore[no-any-return]
    raise AssertionError(f"no example body for {code} in docs/errors.rst")


def test_the_errors_page_shows_the_bodies_answered(settings: Any) -> None:
    limit(settings)
    too_large = post(Send("wsgi"), "/plain/", new_key(), LIMIT + 1)
    limit(settings, ATOMIC=False)
    key = new_key()
    post(Send("wsgi"), "/plain/", key, LIMIT + 1)
    not_kept = post(Send("wsgi"), "/plain/", key, LIMIT + 1)

    assert json.loads(too_large.content) == _documented_body("idempotency_response_too_large")
    assert json.loads(not_kept.content) == _documented_body("idempotency_response_not_kept")
