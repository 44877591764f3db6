"""How a request ends at the edges: BaseException, nested transactions, failing logs,
a release after a takeover, and views exempt by their handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotency import current_key, signals
from idempotency.context import _activate
from idempotency.decorators import idempotency_exempt, idempotent
from idempotency.models import IdempotencyKey
from idempotency.rest_framework import IdempotencyMixin
from tests.helpers import JSON, new_key, post

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

RUNS: list[str] = []


class Stop(BaseException):
    """Not an Exception: what a worker timeout (SystemExit) raises inside a view."""


def plain_stop(request: HttpRequest) -> HttpResponse:
    raise Stop


@idempotent
def decorated_stop(request: HttpRequest) -> HttpResponse:
    raise Stop


class Open(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []


class DRFStop(IdempotencyMixin, Open):
    def post(self, request: Request) -> Response:
        raise Stop


class DRFCreate(IdempotencyMixin, Open):
    def post(self, request: Request) -> Response:
        RUNS.append("drf")
        return Response({}, status=201)


@idempotent
def created(request: HttpRequest) -> HttpResponse:
    RUNS.append("fn")
    return JsonResponse({}, status=201)


def plain(request: HttpRequest) -> HttpResponse:
    RUNS.append("plain")
    return JsonResponse({"run": len(RUNS)}, status=201)


def current(request: HttpRequest) -> HttpResponse:
    found = current_key()
    return JsonResponse({"current": None if found is None else found.key})


def slow_then_raise(request: HttpRequest) -> HttpResponse:
    """The first run outlives its lease; a retry takes the key over and completes."""
    if request.headers.get("X-Retry"):
        return JsonResponse({}, status=201)
    time.sleep(0.3)
    retry = Client().generic(
        "POST",
        request.get_full_path(),
        request.body,
        JSON,
        headers={"Idempotency-Key": request.headers["Idempotency-Key"], "X-Retry": "1"},
    )
    RUNS.append(f"retry {retry.status_code}")
    raise RuntimeError("the first run fails after its lease ended")


class ExemptHandler(Open):
    """No mixin: the middleware's view, with the POST handler exempt."""

    @idempotency_exempt
    def post(self, request: Request) -> Response:
        RUNS.append("exempt-handler")
        return Response({"run": len(RUNS)}, status=201)


class ExemptClass(Open):
    idempotency_exempt = True

    def post(self, request: Request) -> Response:
        RUNS.append("exempt-class")
        return Response({"run": len(RUNS)}, status=201)


class Protected(Open):
    def post(self, request: Request) -> Response:
        RUNS.append("protected")
        return Response({"run": len(RUNS)}, status=201)


urlpatterns = [
    path("plain-stop/", plain_stop),
    path("decorated-stop/", decorated_stop),
    path("drf-stop/", DRFStop.as_view()),
    path("drf/", DRFCreate.as_view()),
    path("fn/", created),
    path("plain/", plain),
    path("current/", current),
    path("slow/", slow_then_raise),
    path("exempt-handler/", ExemptHandler.as_view()),
    path("exempt-class/", ExemptClass.as_view()),
    path("protected/", Protected.as_view()),
]


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    RUNS.clear()
    _activate(None)
    yield
    _activate(None)


@pytest.mark.parametrize("url", ["/plain-stop/", "/decorated-stop/", "/drf-stop/"])
def test_a_base_exception_frees_the_key_and_leaves_nothing_current(url: str) -> None:
    key = new_key()
    with pytest.raises(Stop):
        post(url, key=key)

    # The next request on this thread, without a key, sees no key.
    assert Client().get("/current/").json() == {"current": None}
    assert current_key() is None
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.RELEASED


@pytest.mark.parametrize("url", ["/drf/", "/fn/"])
def test_response_stored_waits_for_the_outer_commit(settings: Any, url: str) -> None:
    # ATOMIC_REQUESTS (warning W005) wraps the request in a transaction of its own:
    # the stored response is only durable when that commits.
    connection.settings_dict["ATOMIC_REQUESTS"] = True
    seen: list[bool] = []

    def on_stored(sender: Any, **kwargs: Any) -> None:
        seen.append(connection.in_atomic_block)

    signals.response_stored.connect(on_stored)
    try:
        response = post(url, key=new_key())
    finally:
        signals.response_stored.disconnect(on_stored)
        connection.settings_dict["ATOMIC_REQUESTS"] = False
    assert response.status_code == 201
    assert seen == [False]


def test_no_signal_when_the_outer_transaction_rolls_back() -> None:
    from django.db import transaction

    seen: list[str] = []

    def on_stored(sender: Any, key: str, **kwargs: Any) -> None:
        seen.append(key)

    signals.response_stored.connect(on_stored)
    try:
        with transaction.atomic():
            response = post("/fn/", key="rolled-back")
            assert response.status_code == 201
            assert seen == []  # not yet: nothing is durable
            transaction.set_rollback(True)
        committed = post("/fn/", key="committed")
    finally:
        signals.response_stored.disconnect(on_stored)
    assert committed.status_code == 201
    assert seen == ["committed"]
    assert not IdempotencyKey.objects.filter(key="rolled-back").exists()


class Failing(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise OSError("log shipper down")

    def handleError(self, record: logging.LogRecord) -> None:
        raise OSError("log shipper down")


class FailingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("broken filter")


@pytest.mark.parametrize("broken", [Failing(), FailingFilter()], ids=["handler", "filter"])
def test_a_failing_log_does_not_change_the_answer(broken: Any) -> None:
    logger = logging.getLogger("idempotency")
    level = logger.level
    logger.setLevel(logging.INFO)
    if isinstance(broken, logging.Filter):
        logger.addFilter(broken)
    else:
        logger.addHandler(broken)
    try:
        key = new_key()
        first = post("/plain/", key=key, client=Client(raise_request_exception=False))
        replay = post("/plain/", key=key, client=Client(raise_request_exception=False))
    finally:
        logger.removeFilter(broken)
        logger.removeHandler(broken)
        logger.setLevel(level)
    assert first.status_code == 201
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert RUNS == ["plain"]


def test_key_released_is_not_sent_for_a_key_taken_over(settings: Any) -> None:
    settings.IDEMPOTENCY = {"ATOMIC": False, "LOCK_TIMEOUT": 0.1}
    events: list[tuple[str, Any]] = []

    def on_released(sender: Any, reason: str, **kwargs: Any) -> None:
        events.append(("key_released", reason))

    def on_stored(sender: Any, status: int, **kwargs: Any) -> None:
        events.append(("response_stored", status))

    signals.key_released.connect(on_released)
    signals.response_stored.connect(on_stored)
    try:
        key = new_key()
        response = post("/slow/", key=key, client=Client(raise_request_exception=False))
    finally:
        signals.key_released.disconnect(on_released)
        signals.response_stored.disconnect(on_stored)
    assert response.status_code == 500
    assert RUNS == ["retry 201"]
    assert events == [("response_stored", 201)]
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.COMPLETED


@pytest.mark.parametrize(
    ("url", "protected"),
    [("/exempt-handler/", False), ("/exempt-class/", False), ("/protected/", True)],
)
def test_the_middleware_honours_exempt_handlers_of_class_based_views(
    url: str, protected: bool
) -> None:
    key = new_key()
    first = post(url, key=key)
    second = post(url, key=key)

    assert first.status_code == 201
    assert (second.headers.get("Idempotent-Replayed") == "true") is protected
    assert len(RUNS) == (1 if protected else 2)
    assert IdempotencyKey.objects.filter(key=key).exists() is protected
