"""Behaviour of ``IdempotencyMiddleware`` (SPEC sections 3 to 6).

Every behaviour test runs twice: through ``django.test.Client`` (WSGI handler, sync
middleware chain) and through ``django.test.AsyncClient`` (ASGI handler, async
middleware chain). The ``send`` fixture hides which one. Where the kind of view
matters, sync views and ``async def`` views (writing through the async ORM) are
both exercised. The rules every adapter shares (first run and replay, mismatch,
missing and malformed keys, what is never stored) are in ``tests/test_behaviour.py``;
this module tests the rest of the middleware's behaviour.

The views write ``Group`` rows as their business effect and append to ``CALLS``,
a side effect outside the database, so every test can tell whether a view ran.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, User
from django.core.exceptions import BadRequest, PermissionDenied
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError, connection, connections, transaction
from django.db.models import F
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
)
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import path
from django.utils import timezone
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from idempotency.conf import idempotency_settings
from idempotency.decorators import idempotency_exempt, idempotent
from idempotency.fingerprints import default_fingerprint
from idempotency.models import IdempotencyKey, IdempotencyResponse
from idempotency.rest_framework import IdempotencyMixin
from idempotency.store import BINARY_BODY_MIN
from tests import helpers
from tests.conftest import PREPARED_BY_DEFAULT
from tests.helpers import (
    JSON,
    Send,
    assert_problem,
    assert_replay_of,
    idem,
    in_thread,
    in_thread_restoring_connection,
    key_row,
    new_key,
    point_at_nowhere,
    with_unreachable_store,
)

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

BODY = b'{"item": "book", "quantity": 1}'
WAIT = 30  # seconds; an upper bound for hand-offs between threads, never reached when green


# ---------------------------------------------------------------------------- views

#: One entry per view run: "<METHOD> <full path> <X-Role>".
CALLS: list[str] = []
#: A callable a view runs while it holds the key (set by a test, used once).
HOOKS: dict[str, Callable[[HttpRequest], None]] = {}


#: The suffix of this test's group names (``_clean_state`` draws one per test). The
#: names are unique in the table: were they the same in every test, an INSERT could
#: meet the index entry that an earlier test's rolled-back INSERT left behind for
#: InnoDB to purge, and the lock that its duplicate check takes there can make a
#: concurrent request of the same test wait until its lock timeout.
_RUN = [""]


def row_name(n: int) -> str:
    return f"row-{n}.{_RUN[0]}"


def _note(request: HttpRequest) -> int:
    CALLS.append(f"{request.method} {request.get_full_path()} {request.headers.get('X-Role', '')}")
    return len(CALLS)


def _answer(request: HttpRequest, n: int, username: str, status: int) -> JsonResponse:
    body = {
        "call": n,
        "user": username,
        "method": request.method,
        "body": hashlib.sha256(request.body).hexdigest(),
    }
    response = JsonResponse(body, status=status)
    response.headers["X-Call"] = str(n)
    return response


def create(request: HttpRequest, status: int = 201) -> HttpResponse:
    n = _note(request)
    Group.objects.create(name=row_name(n))
    hook = HOOKS.pop("during", None)
    if hook is not None:
        hook(request)
    return _answer(request, n, request.user.get_username(), status)


async def acreate(request: HttpRequest, status: int = 201) -> HttpResponse:
    n = _note(request)
    await Group.objects.acreate(name=row_name(n))
    hook = HOOKS.pop("during", None)
    if hook is not None:
        await sync_to_async(hook)(request)
    user = await request.auser()
    return _answer(request, n, user.get_username(), status)


EXCEPTIONS: dict[str, type[Exception]] = {
    "runtime": RuntimeError,
    "http404": Http404,
    "permission": PermissionDenied,
    "bad_request": BadRequest,
}


def explode(request: HttpRequest, kind: str) -> HttpResponse:
    n = _note(request)
    Group.objects.create(name=row_name(n))
    raise EXCEPTIONS[kind](f"view {n} failed")


async def aexplode(request: HttpRequest, kind: str) -> HttpResponse:
    n = _note(request)
    await Group.objects.acreate(name=row_name(n))
    raise EXCEPTIONS[kind](f"view {n} failed")


def rollback_then_answer(request: HttpRequest) -> HttpResponse:
    # What DRF's exception handler does: undo the writes, answer with a 4xx.
    n = _note(request)
    Group.objects.create(name=row_name(n))
    transaction.set_rollback(True)
    return JsonResponse({"error": "invalid", "call": n}, status=400)


def headers_view(request: HttpRequest) -> HttpResponse:
    n = _note(request)
    response = HttpResponse(f"call {n}", status=201, content_type="text/plain; charset=utf-8")
    response.set_cookie("sessionish", "secret-value")
    response.headers["Set-Cookie"] = "raw=cookie"
    response.headers["Date"] = "Tue, 01 Jan 2030 00:00:00 GMT"
    response.headers["Connection"] = "close"
    response.headers["X-Custom"] = "kept"
    response.headers["Location"] = "/orders/42/"
    response.headers["ETag"] = '"v1"'
    return response


def binary(request: HttpRequest) -> HttpResponse:
    n = _note(request)
    payload = bytes(reversed(request.body)) + b"\x00\xff" + bytes([n])
    return HttpResponse(payload, status=201, content_type="application/octet-stream")


def json_view(request: HttpRequest) -> JsonResponse:
    n = _note(request)
    try:
        data = json.loads(request.body)
    except ValueError:
        return JsonResponse({"error": "malformed JSON", "call": n}, status=400)
    Group.objects.create(name=row_name(n))
    return JsonResponse({"received": data, "call": n}, status=201)


def form_view(request: HttpRequest) -> JsonResponse:
    n = _note(request)
    return JsonResponse({"post": request.POST.dict(), "call": n}, status=201)


def upload(request: HttpRequest) -> JsonResponse:
    n = _note(request)
    upload = request.FILES["file"]
    content = upload.read()
    Group.objects.create(name=row_name(n))
    return JsonResponse(
        {
            "call": n,
            "name": request.POST["name"],
            "filename": upload.name,
            "sha256": hashlib.sha256(content).hexdigest(),
        },
        status=201,
    )


def bump_fence(request: HttpRequest) -> HttpResponse:
    # A takeover while this request runs, on this request's own connection.
    n = _note(request)
    Group.objects.create(name=row_name(n))
    key = request.headers["Idempotency-Key"]
    IdempotencyKey.objects.filter(key=key).update(fence=F("fence") + 1)
    return HttpResponse(f"late call {n}", status=201)


def outlive_ttl(request: HttpRequest) -> HttpResponse:
    # A view that runs past its key's TTL, counted from the claim.
    n = _note(request)
    key = request.headers["Idempotency-Key"]
    IdempotencyKey.objects.filter(key=key).update(expires_at=timezone.now() - timedelta(seconds=1))
    return HttpResponse(f"slow call {n}", status=201)


def in_transaction(request: HttpRequest) -> JsonResponse:
    n = _note(request)
    return JsonResponse({"call": n, "atomic": connection.in_atomic_block}, status=201)


def break_own_connection(request: HttpRequest) -> HttpResponse:
    # The store's database goes away after the view wrote, before the response is stored.
    n = _note(request)
    Group.objects.create(name=row_name(n))
    point_at_nowhere(connection)
    return HttpResponse(f"call {n}", status=201)


def lose_database_midway(request: HttpRequest) -> HttpResponse:
    # A query of the view fails with the driver's error for a lost connection. With
    # X-Store: gone the database is really gone (the store cannot be reached either);
    # otherwise only this query failed and the store is fine.
    n = _note(request)
    Group.objects.create(name=row_name(n))
    if request.headers.get("X-Store") == "gone":
        point_at_nowhere(connection)
    raise OperationalError("server closed the connection unexpectedly")


class LoseDatabaseAPIView(IdempotencyMixin, APIView):
    """The same view under the DRF mixin (which the middleware leaves alone)."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def post(self, request: Any) -> HttpResponse:
        return lose_database_midway(request._request)


#: The lost-database view under each adapter.
LOSE_DATABASE = {
    "middleware": "/lose-database/",
    "decorator": "/lose-database/decorated/",
    "drf-mixin": "/lose-database/drf/",
}


@idempotency_exempt
def exempt(request: HttpRequest) -> HttpResponse:
    return create(request)


@idempotency_exempt
async def aexempt(request: HttpRequest) -> HttpResponse:
    return await acreate(request)


def tenant_scope(request: HttpRequest) -> str:
    """A SCOPE_FUNCTION: one namespace per tenant header."""
    return "tenant:" + request.headers.get("X-Tenant", "none")


urlpatterns = [
    path("sync/", create),
    path("async/", acreate),
    path("sync/status/<int:status>/", create),
    path("async/status/<int:status>/", acreate),
    path("sync/raise/<str:kind>/", explode),
    path("async/raise/<str:kind>/", aexplode),
    path("sync/exempt/", exempt),
    path("async/exempt/", aexempt),
    path("open/", create),
    path("rollback/", rollback_then_answer),
    path("headers/", headers_view),
    path("binary/", binary),
    path("json/", json_view),
    path("form/", form_view),
    path("upload/", upload),
    path("fence/", bump_fence),
    path("outlive-ttl/", outlive_ttl),
    path("in-transaction/", in_transaction),
    path("break/", break_own_connection),
    path("lose-database/", lose_database_midway),
    path("lose-database/decorated/", idempotent(lose_database_midway)),
    path("lose-database/drf/", LoseDatabaseAPIView.as_view()),
]


# ---------------------------------------------------------------------------- harness


@pytest.fixture(params=["wsgi", "asgi"])
def send(request: pytest.FixtureRequest) -> Send:
    return Send(request.param, BODY)


@pytest.fixture(params=["sync", "async"])
def view(request: pytest.FixtureRequest) -> str:
    """The URL prefix of a sync view or of an ``async def`` view."""
    return f"/{request.param}/"


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    CALLS.clear()
    HOOKS.clear()
    _RUN[0] = uuid.uuid4().hex[:12]
    yield
    HOOKS.clear()


def rows() -> list[str]:
    """The groups this test's views created, as ``row-N``."""
    return sorted(name.split(".")[0] for name in Group.objects.values_list("name", flat=True))


def stored(key: str) -> IdempotencyResponse | None:
    return IdempotencyResponse.objects.filter(idempotency_key__key=key).first()


def assert_fresh(response: Any, status: int, call: int) -> None:
    """The view ran (its ``call``-th run in this test) and this is its own answer."""
    helpers.assert_fresh(response, status)
    assert json.loads(response.content)["call"] == call


SQLITE_ATOMIC_SERIALISES = pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="SQLite has one writer: an ATOMIC view holds the write lock while it runs, so a "
    "concurrent request waits on the lock instead of seeing the running key",
)


# ---------------------------------------------------------------------------- first run, replay


@pytest.mark.parametrize(
    ("first", "second"),
    [("Key", "key"), ('"k "', "k"), ('"k  "', '"k "')],
    ids=["case", "trailing-space", "more-trailing-spaces"],
)
def test_keys_that_differ_in_case_or_trailing_spaces_are_two_operations(
    send: Send, first: str, second: str
) -> None:
    """Byte for byte on every database, also where the server's default collation is
    case-insensitive and pads spaces (the tests' MariaDB database is created with it)."""
    one = send("POST", "/sync/", headers=idem(first))
    two = send("POST", "/sync/", headers=idem(second))
    again = send("POST", "/sync/", headers=idem(first))

    assert_fresh(one, 201, call=1)
    assert_fresh(two, 201, call=2)
    assert_replay_of(one, again)
    assert IdempotencyKey.objects.count() == 2


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_every_default_method_is_protected(send: Send, method: str) -> None:
    key = new_key()
    first = send(method, "/sync/", headers=idem(key))
    second = send(method, "/sync/", headers=idem(key))

    assert_fresh(first, 201, call=1)
    assert_replay_of(first, second)
    assert key_row(key).method == method


def test_replay_across_wsgi_and_asgi() -> None:
    # One store shared by every app server, whatever its protocol.
    wsgi, asgi = Send("wsgi", BODY), Send("asgi", BODY)
    key = new_key()
    first = wsgi("POST", "/sync/", headers=idem(key))
    assert_replay_of(first, asgi("POST", "/sync/", headers=idem(key)))

    other = new_key()
    first = asgi("POST", "/async/", headers=idem(other))
    assert_replay_of(first, wsgi("POST", "/async/", headers=idem(other)))
    assert len(CALLS) == 2


# ---------------------------------------------------------------------------- mismatch


def test_problem_types_may_point_at_the_apis_own_docs(send: Send, settings: Any) -> None:
    own = "https://api.example.com/problems/idempotency-mismatch"
    settings.IDEMPOTENCY = {"PROBLEM_TYPES": {"idempotency_key_mismatch": own}}
    key = new_key()
    send("POST", "/sync/", headers=idem(key))

    conflict = send("POST", "/sync/", b"{}", headers=idem(key))
    invalid = send("POST", "/sync/", headers=idem("a,b"))

    assert_problem(conflict, 409, "idempotency_key_mismatch", type_uri=own)
    assert_problem(invalid, 400, "idempotency_key_invalid")


# ---------------------------------------------------------------------------- locked, waiting


def test_duplicate_while_the_first_runs_is_locked(send: Send, view: str) -> None:
    key = new_key()
    inner: dict[str, Any] = {}

    def duplicate(request: HttpRequest) -> None:
        inner["response"] = send("POST", view, headers=idem(key))
        inner["other"] = send("POST", view, b'{"item": "pen"}', headers=idem(key))

    HOOKS["during"] = duplicate
    outer = send("POST", view, headers=idem(key))

    assert_problem(inner["response"], 409, "idempotency_key_locked")
    assert inner["response"].json()["type"].endswith("#section-2.6")
    # A different request with a running key is a misuse of the key, not a wait.
    assert_problem(inner["other"], 409, "idempotency_key_mismatch")
    assert_fresh(outer, 201, call=1)
    assert len(CALLS) == 1
    assert rows() == ["row-1"]
    assert_replay_of(outer, send("POST", view, headers=idem(key)))


def test_running_key_found_in_the_store_is_locked(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"RETRY_AFTER": 7}
    key = new_key()
    now = timezone.now()
    fingerprint = default_fingerprint(
        send.request("POST", "/sync/", BODY, JSON), idempotency_settings.get().fingerprint_meta
    )
    IdempotencyKey.objects.create(
        scope="anonymous",
        key=key,
        fingerprint=fingerprint,
        method="POST",
        path="/sync/",
        state=IdempotencyKey.State.RUNNING,
        lease_expires_at=now + timedelta(seconds=60),
        expires_at=now + timedelta(hours=1),
    )

    response = send("POST", "/sync/", headers=idem(key))

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_locked"
    assert response["Retry-After"] == "7"
    assert CALLS == []
    row = key_row(key)
    assert (row.state, row.fence) == (IdempotencyKey.State.RUNNING, 1)


def test_running_request_holds_a_lease_of_lock_timeout(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"LOCK_TIMEOUT": 90}
    key = new_key()
    seen: dict[str, Any] = {}

    def look(request: HttpRequest) -> None:
        row = key_row(key)
        seen.update(state=row.state, fence=row.fence, lease=row.lease_expires_at - row.created_at)

    HOOKS["during"] = look
    send("POST", "/sync/", headers=idem(key))

    assert seen == {"state": "running", "fence": 1, "lease": timedelta(seconds=90)}
    assert key_row(key).lease_expires_at is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "atomic", [pytest.param(True, marks=SQLITE_ATOMIC_SERIALISES, id="atomic"), False]
)
def test_concurrent_wait_replays_the_first_response(
    send: Send, settings: Any, atomic: bool
) -> None:
    settings.IDEMPOTENCY = {"CONCURRENT_WAIT": WAIT, "ATOMIC": atomic}
    key = new_key()
    # Every claim attempt reads the key table (PostgreSQL: in the claim function).
    table = "FROM " + connection.ops.quote_name(IdempotencyKey._meta.db_table)
    claim_sql = "idempotency_claim(" if connection.vendor == "postgresql" else table
    second_polled, first_done = threading.Event(), threading.Event()
    result: dict[str, Any] = {}

    def second() -> None:
        claims = 0

        def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            nonlocal claims
            if claim_sql in sql:
                claims += 1
                if claims == 2:
                    # It found the key running, slept, and is polling again: let the
                    # first request finish before this poll reads the row.
                    second_polled.set()
                    first_done.wait(WAIT)
            return execute(sql, params, many, context)

        try:
            with connections["default"].execute_wrapper(watch):
                result["response"] = send(
                    "POST", "/sync/", headers=idem(key, **{"X-Role": "second"})
                )
        except BaseException as exc:
            result["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=second)

    def start_second_and_wait_for_its_poll(request: HttpRequest) -> None:
        thread.start()
        second_polled.wait(WAIT)

    HOOKS["during"] = start_second_and_wait_for_its_poll
    try:
        first = send("POST", "/sync/", headers=idem(key, **{"X-Role": "first"}))
    finally:
        first_done.set()
        thread.join(WAIT * 2)

    assert "error" not in result
    assert second_polled.is_set()
    assert_fresh(first, 201, call=1)
    assert_replay_of(first, result["response"])
    assert CALLS == ["POST /sync/ first"]
    assert rows() == ["row-1"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "atomic", [pytest.param(True, marks=SQLITE_ATOMIC_SERIALISES, id="atomic"), False]
)
def test_concurrent_duplicate_from_another_connection_is_locked(
    send: Send, settings: Any, atomic: bool
) -> None:
    settings.IDEMPOTENCY = {"ATOMIC": atomic}
    key = new_key()
    seen: dict[str, Any] = {}

    def duplicate(request: HttpRequest) -> None:
        seen["response"] = in_thread(lambda: send("POST", "/sync/", headers=idem(key)))

    HOOKS["during"] = duplicate
    first = send("POST", "/sync/", headers=idem(key))

    assert_problem(seen["response"], 409, "idempotency_key_locked")
    assert_fresh(first, 201, call=1)
    assert rows() == ["row-1"]


# ---------------------------------------------------------------------------- missing key


def test_required_key_is_not_asked_of_safe_methods(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"REQUIRED": True}
    response = send("GET", "/sync/", b"")

    assert_fresh(response, 201, call=1)


# ---------------------------------------------------------------------------- malformed keys


def test_header_sent_twice_is_400(send: Send) -> None:
    # WSGI servers join a repeated header with commas; the ASGI handler joins the
    # scope's repeated entries the same way. Both arrive as one comma list.
    key = new_key()
    if send.mode == "wsgi":
        response = send("POST", "/sync/", HTTP_IDEMPOTENCY_KEY=f"{key}, {key}")
    else:
        # Two entries named idempotency-key in the ASGI scope's header list.
        response = send("POST", "/sync/", headers=idem(key), **{"idempotency-key": key})
    assert_problem(response, 400, "idempotency_key_invalid")
    assert CALLS == []


def test_key_longer_than_max_key_length_setting(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"MAX_KEY_LENGTH": 10}
    assert_problem(send("POST", "/sync/", headers=idem("a" * 11)), 400, "idempotency_key_invalid")
    assert_problem(
        send("POST", "/sync/", headers=idem('"' + "a" * 11 + '"')), 400, "idempotency_key_invalid"
    )
    assert_fresh(send("POST", "/sync/", headers=idem("a" * 10)), 201, call=1)
    assert key_row("a" * 10).state == "completed"


@pytest.mark.parametrize(
    ("sent", "same_as", "key"),
    [
        pytest.param('"abc"', "abc", "abc", id="sf-string-equals-token"),
        pytest.param("abc", '"abc"', "abc", id="token-equals-sf-string"),
        pytest.param('"a\\"b"', 'a"b', 'a"b', id="escaped-quote"),
        pytest.param('"a\\\\b"', "a\\b", "a\\b", id="escaped-backslash"),
        pytest.param('"a,b"', '"a,b"', "a,b", id="quoted-comma"),
        pytest.param(" abc ", "abc", "abc", id="surrounding-spaces"),
        pytest.param(
            "with inner space", '"with inner space"', "with inner space", id="inner-space"
        ),
        pytest.param("a" * 255, "a" * 255, "a" * 255, id="max-length"),
        pytest.param(
            '"' + '\\"' * 255 + '"',
            '"' + '\\"' * 255 + '"',
            '"' * 255,
            id="escapes-count-once-toward-the-limit",
        ),
        pytest.param(
            "!#$%&'()*+-./:;<=>?@[]^_`{|}~",
            '"!#$%&\'()*+-./:;<=>?@[]^_`{|}~"',
            "!#$%&'()*+-./:;<=>?@[]^_`{|}~",
            id="punctuation",
        ),
    ],
)
def test_key_forms_that_name_the_same_key(send: Send, sent: str, same_as: str, key: str) -> None:
    first = send("POST", "/sync/", headers=idem(sent))
    second = send("POST", "/sync/", headers=idem(same_as))

    assert_fresh(first, 201, call=1)
    assert_replay_of(first, second)
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == [key]


def test_header_setting_names_another_header(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"HEADER": "X-Request-Key"}
    key = new_key()

    first = send("POST", "/sync/", headers={"X-Request-Key": key})
    replay = send("POST", "/sync/", headers={"X-Request-Key": key})
    ignored = [send("POST", "/sync/", headers=idem(key)) for _ in range(2)]
    invalid = send("POST", "/sync/", headers={"X-Request-Key": "a,b"})

    assert_replay_of(first, replay)
    assert_fresh(ignored[0], 201, call=2)
    assert_fresh(ignored[1], 201, call=3)
    assert_problem(invalid, 400, "idempotency_key_invalid")
    assert IdempotencyKey.objects.count() == 1


# ---------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("value", ["valid-key", "a,b"], ids=["valid", "malformed"])
def test_safe_methods_ignore_the_header(send: Send, method: str, value: str) -> None:
    first = send(method, "/sync/", b"", headers=idem(value))
    second = send(method, "/sync/", b"", headers=idem(value))

    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert len(CALLS) == 2
    assert IdempotencyKey.objects.count() == 0


def test_methods_setting_limits_what_is_protected(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"METHODS": ["POST"]}
    key = new_key()

    deletes = [send("DELETE", "/sync/", headers=idem(key)) for _ in range(2)]
    malformed = send("PUT", "/sync/", headers=idem("a,b"))
    first = send("POST", "/sync/", headers=idem(key))
    replay = send("POST", "/sync/", headers=idem(key))

    assert_fresh(deletes[0], 201, call=1)
    assert_fresh(deletes[1], 201, call=2)
    assert_fresh(malformed, 201, call=3)
    assert_fresh(first, 201, call=4)
    assert_replay_of(first, replay)
    assert list(IdempotencyKey.objects.values_list("method", flat=True)) == ["POST"]


# ---------------------------------------------------------------------------- storable statuses


@pytest.mark.parametrize("status", [200, 201, 202, 204, 301, 302, 400, 404, 409, 410, 422])
def test_storable_status_is_stored_and_replayed(send: Send, view: str, status: int) -> None:
    key = new_key()
    url = f"{view}status/{status}/"
    first = send("POST", url, headers=idem(key))
    replay = send("POST", url, headers=idem(key))

    assert first.status_code == status
    assert_replay_of(first, replay)
    assert len(CALLS) == 1
    assert rows() == ["row-1"]
    assert stored(key).status == status  # type: ignore[union-attr]


def test_a_released_key_still_refuses_another_request(send: Send) -> None:
    key = new_key()
    url = "/sync/status/500/"
    assert_fresh(send("POST", url, headers=idem(key)), 500, call=1)
    assert key_row(key).state == IdempotencyKey.State.RELEASED

    other = send("POST", url, b'{"amount": "99.00"}', headers=idem(key))

    assert_problem(other, 409, "idempotency_key_mismatch")
    assert len(CALLS) == 1
    assert key_row(key).fence == 1
    # The request the key was first used for still runs again.
    assert_fresh(send("POST", url, headers=idem(key)), 500, call=2)


def test_a_released_key_is_free_for_any_request_after_its_ttl(send: Send) -> None:
    key = new_key()
    url = "/sync/status/500/"
    send("POST", url, headers=idem(key))
    IdempotencyKey.objects.filter(key=key).update(expires_at=timezone.now() - timedelta(seconds=1))

    other = send("POST", url, b'{"amount": "99.00"}', headers=idem(key))

    assert_fresh(other, 500, call=2)
    assert key_row(key).fence == 2


def test_non_storable_statuses_setting(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"NON_STORABLE_STATUSES": [409]}
    conflict, error = new_key(), new_key()

    send("POST", "/sync/status/409/", headers=idem(conflict))
    assert_fresh(send("POST", "/sync/status/409/", headers=idem(conflict)), 409, call=2)
    assert key_row(conflict).state == "released"

    first = send("POST", "/sync/status/500/", headers=idem(error))
    assert_replay_of(first, send("POST", "/sync/status/500/", headers=idem(error)))
    assert stored(error).status == 500  # type: ignore[union-attr]
    assert len(CALLS) == 3


def test_view_that_undoes_its_writes_and_answers_4xx(send: Send) -> None:
    key = new_key()
    first = send("POST", "/rollback/", headers=idem(key))
    replay = send("POST", "/rollback/", headers=idem(key))

    assert first.status_code == 400
    assert_replay_of(first, replay)
    assert rows() == []
    assert len(CALLS) == 1


# ---------------------------------------------------------------------------- exceptions, ATOMIC


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("kind", "status"),
    [("runtime", 500), ("http404", 404), ("permission", 403), ("bad_request", 400)],
)
def test_view_that_raises_releases_the_key_and_rolls_back(
    send: Send, view: str, kind: str, status: int
) -> None:
    key = new_key()
    client = send.client(raise_request_exception=False)
    url = f"{view}raise/{kind}/"

    first = send("POST", url, headers=idem(key), client=client)

    assert first.status_code == status
    assert "Idempotent-Replayed" not in first
    assert rows() == []
    row = key_row(key)
    assert row.state == IdempotencyKey.State.RELEASED
    assert stored(key) is None

    retry = send("POST", url, headers=idem(key), client=client)

    assert retry.status_code == status
    assert "Idempotent-Replayed" not in retry
    assert len(CALLS) == 2
    assert key_row(key).fence == 2


@pytest.mark.django_db(transaction=True)
def test_view_exception_reaches_the_caller(send: Send) -> None:
    key = new_key()
    with pytest.raises(RuntimeError, match="view 1 failed"):
        send("POST", "/sync/raise/runtime/", headers=idem(key))
    assert key_row(key).state == IdempotencyKey.State.RELEASED
    assert rows() == []


@pytest.mark.django_db(transaction=True)
def test_atomic_commits_the_views_writes_with_the_response(send: Send, view: str) -> None:
    key = new_key()
    send("POST", view, headers=idem(key))

    assert rows() == ["row-1"]
    assert key_row(key).state == IdempotencyKey.State.COMPLETED
    assert stored(key) is not None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("atomic", "inside"), [(True, True), (False, False)])
def test_atomic_setting_runs_the_view_in_a_transaction(
    send: Send, settings: Any, atomic: bool, inside: bool
) -> None:
    settings.IDEMPOTENCY = {"ATOMIC": atomic}
    protected = send("POST", "/in-transaction/", headers=idem(new_key()))
    unprotected = send("POST", "/in-transaction/")

    assert protected.json() == {"call": 1, "atomic": inside}
    assert unprotected.json() == {"call": 2, "atomic": False}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("url", ["status/500/", "status/503/", "raise/runtime/"])
def test_atomic_false_keeps_the_views_writes_but_still_releases(
    send: Send, view: str, settings: Any, url: str
) -> None:
    settings.IDEMPOTENCY = {"ATOMIC": False}
    key = new_key()
    client = send.client(raise_request_exception=False)

    first = send("POST", view + url, headers=idem(key), client=client)
    retry = send("POST", view + url, headers=idem(key), client=client)

    assert first.status_code == retry.status_code >= 500
    assert rows() == ["row-1", "row-2"]
    assert key_row(key).state == IdempotencyKey.State.RELEASED
    assert stored(key) is None


# ---------------------------------------------------------------------------- streaming, headers


def test_set_cookie_date_and_hop_by_hop_headers_are_never_stored_or_replayed(send: Send) -> None:
    key = new_key()
    first = send("POST", "/headers/", headers=idem(key))

    assert first.cookies["sessionish"].value == "secret-value"
    assert first["Date"] == "Tue, 01 Jan 2030 00:00:00 GMT"
    names = {name.lower(): value for name, value in stored(key).headers}  # type: ignore[union-attr]
    assert names == {
        "content-type": "text/plain; charset=utf-8",
        "x-custom": "kept",
        "location": "/orders/42/",
        "etag": '"v1"',
        "x-frame-options": "DENY",
    }

    replay = send("POST", "/headers/", headers=idem(key))

    assert replay["Idempotent-Replayed"] == "true"
    assert replay.status_code == 201
    assert replay.content == b"call 1"
    assert replay["Content-Type"] == "text/plain; charset=utf-8"
    assert replay["X-Custom"] == "kept"
    assert replay["Location"] == "/orders/42/"
    assert replay["ETag"] == '"v1"'
    assert "Set-Cookie" not in replay
    assert "Date" not in replay
    assert "Connection" not in replay
    assert "sessionish" not in replay.cookies
    assert "raw" not in replay.cookies
    assert len(CALLS) == 1


# ---------------------------------------------------------------------------- TTL, leases


def test_expired_response_counts_as_new(send: Send, view: str) -> None:
    key = new_key()
    first = send("POST", view, headers=idem(key))
    IdempotencyKey.objects.filter(key=key).update(expires_at=timezone.now() - timedelta(seconds=1))

    again = send("POST", view, headers=idem(key))
    replay = send("POST", view, headers=idem(key))

    assert_fresh(first, 201, call=1)
    assert_fresh(again, 201, call=2)
    assert_replay_of(again, replay)
    row = key_row(key)
    assert (row.state, row.fence) == ("completed", 2)
    assert json.loads(bytes(stored(key).body))["call"] == 2  # type: ignore[union-attr]
    assert rows() == ["row-1", "row-2"]


def test_expired_key_may_be_used_for_another_request(send: Send) -> None:
    key = new_key()
    send("POST", "/sync/", headers=idem(key))
    IdempotencyKey.objects.filter(key=key).update(expires_at=timezone.now() - timedelta(seconds=1))

    other = send("POST", "/sync/", b'{"item": "pen"}', headers=idem(key))

    assert_fresh(other, 201, call=2)
    assert key_row(key).fingerprint != ""


@pytest.mark.parametrize("ttl", [120, 0.5, timedelta(minutes=5)], ids=["int", "float", "timedelta"])
def test_ttl_setting_sets_the_expiry(send: Send, settings: Any, ttl: Any) -> None:
    settings.IDEMPOTENCY = {"TTL": ttl}
    key = new_key()
    send("POST", "/sync/", headers=idem(key))

    row = key_row(key)
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    assert row.expires_at - row.created_at == timedelta(seconds=seconds)


def test_the_completion_keeps_the_expiry_of_the_claim(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"TTL": 600}
    key = new_key()
    send("POST", "/sync/", headers=idem(key))

    row = key_row(key)
    assert row.completed_at is not None and row.completed_at > row.created_at
    assert row.expires_at == row.created_at + timedelta(seconds=600)


def test_a_view_that_outlives_its_ttl_still_stores_a_live_response(
    send: Send, settings: Any
) -> None:
    settings.IDEMPOTENCY = {"TTL": 600}
    key = new_key()
    first = send("POST", "/outlive-ttl/", headers=idem(key))

    row = key_row(key)
    assert row.completed_at is not None
    assert row.expires_at == row.completed_at + timedelta(seconds=600)
    replay = send("POST", "/outlive-ttl/", headers=idem(key))
    assert_replay_of(first, replay)
    assert len(CALLS) == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="HOT updates are PostgreSQL's")
def test_the_completion_is_a_hot_update_on_postgresql(send: Send) -> None:
    # pg_stat_xact_user_tables counts this connection's updates of the key table not
    # yet flushed to the statistics, and how many of them PostgreSQL made HOT (no new
    # index entries), which it can only when no indexed column changed.
    def counts() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = %s",
                [IdempotencyKey._meta.db_table],
            )
            updates, hot = cursor.fetchone()
        return int(updates), int(hot)

    before = counts()
    for _ in range(5):
        assert send("POST", "/sync/", headers=idem(new_key())).status_code == 201
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (5, 5)


def _running_row(send: Send, key: str, *, lease: timedelta, body: bytes = BODY) -> IdempotencyKey:
    """The row a worker leaves behind when it dies while running this request."""
    now = timezone.now()
    return IdempotencyKey.objects.create(
        scope="anonymous",
        key=key,
        fingerprint=default_fingerprint(
            send.request("POST", "/sync/", body, JSON), idempotency_settings.get().fingerprint_meta
        ),
        method="POST",
        path="/sync/",
        state=IdempotencyKey.State.RUNNING,
        created_at=now - timedelta(minutes=5),
        lease_expires_at=now + lease,
        expires_at=now + timedelta(hours=1),
    )


def test_retry_takes_over_a_key_whose_lease_ran_out(send: Send) -> None:
    key = new_key()
    _running_row(send, key, lease=timedelta(seconds=-1))

    response = send("POST", "/sync/", headers=idem(key))

    assert_fresh(response, 201, call=1)
    row = key_row(key)
    assert (row.state, row.fence) == ("completed", 2)
    assert stored(key).status == 201  # type: ignore[union-attr]
    assert_replay_of(response, send("POST", "/sync/", headers=idem(key)))


def test_other_request_cannot_take_over_an_abandoned_key(send: Send) -> None:
    key = new_key()
    _running_row(send, key, lease=timedelta(seconds=-1), body=b'{"item": "pen"}')

    response = send("POST", "/sync/", headers=idem(key))

    assert_problem(response, 409, "idempotency_key_mismatch")
    assert CALLS == []
    assert key_row(key).fence == 1


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "not-atomic"])
def test_completion_is_fenced_when_the_key_was_taken_over_meanwhile(
    send: Send, settings: Any, atomic: bool
) -> None:
    # The view raises the fence on its own connection, as a takeover would.
    settings.IDEMPOTENCY = {"ATOMIC": atomic}
    key = new_key()
    response = send("POST", "/fence/", headers=idem(key))

    assert stored(key) is None
    assert len(CALLS) == 1
    if atomic:
        # Its writes (the takeover included) roll back; the key is not its to store.
        assert_problem(response, 409, "idempotency_key_locked")
        assert rows() == []
    else:
        # The effects happened and cannot be undone: its answer is sent, never stored.
        assert response.status_code == 201
        assert response.content == b"late call 1"
        assert "Idempotent-Replayed" not in response
        assert rows() == ["row-1"]
        row = key_row(key)
        assert (row.state, row.fence) == ("running", 2)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "atomic", [pytest.param(True, marks=SQLITE_ATOMIC_SERIALISES, id="atomic"), False]
)
def test_late_request_loses_to_a_real_takeover(send: Send, settings: Any, atomic: bool) -> None:
    # The first request stalls past its lease; a retry on another connection takes the
    # key over, runs and stores. The late request must not also commit.
    settings.IDEMPOTENCY = {"ATOMIC": atomic}
    key = new_key()
    seen: dict[str, Any] = {}

    def retry_takes_over() -> Any:
        IdempotencyKey.objects.filter(key=key).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        return send("POST", "/sync/", headers=idem(key, **{"X-Role": "retry"}))

    def stall(request: HttpRequest) -> None:
        seen["retry"] = in_thread(retry_takes_over)

    HOOKS["during"] = stall
    late = send("POST", "/sync/", headers=idem(key, **{"X-Role": "late"}))

    retry = seen["retry"]
    assert_fresh(retry, 201, call=2)
    assert CALLS == ["POST /sync/ late", "POST /sync/ retry"]
    row = key_row(key)
    assert (row.state, row.fence) == ("completed", 2)
    assert bytes(stored(key).body) == retry.content  # type: ignore[union-attr]
    if atomic:
        assert_replay_of(retry, late)
        assert rows() == ["row-2"]
    else:
        assert_fresh(late, 201, call=1)
        assert rows() == ["row-1", "row-2"]


# ---------------------------------------------------------------------------- scope


def test_users_never_see_each_others_responses(send: Send, view: str) -> None:
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    as_alice, as_bob = send.client(), send.client()
    as_alice.force_login(alice)
    as_bob.force_login(bob)
    key = new_key()

    for_alice = send("POST", view, headers=idem(key), client=as_alice)
    for_bob = send("POST", view, headers=idem(key), client=as_bob)
    for_anonymous = send("POST", view, headers=idem(key))

    assert for_alice.json()["user"] == "alice"
    assert for_bob.json()["user"] == "bob"
    assert for_anonymous.json()["user"] == ""
    assert len(CALLS) == 3
    assert_replay_of(for_alice, send("POST", view, headers=idem(key), client=as_alice))
    assert_replay_of(for_bob, send("POST", view, headers=idem(key), client=as_bob))
    assert len(CALLS) == 3
    scopes = set(IdempotencyKey.objects.filter(key=key).values_list("scope", flat=True))
    assert scopes == {f"user:{alice.pk}", f"user:{bob.pk}", "anonymous"}


def test_a_different_body_from_another_user_is_not_a_mismatch(send: Send) -> None:
    alice = User.objects.create_user("alice")
    as_alice = send.client()
    as_alice.force_login(alice)
    key = new_key()

    send("POST", "/sync/", headers=idem(key), client=as_alice)
    other = send("POST", "/sync/", b'{"item": "pen"}', headers=idem(key))

    assert_fresh(other, 201, call=2)


def test_anonymous_requests_are_scoped_by_their_authorization_header(send: Send) -> None:
    key = new_key()
    token_a = send("POST", "/sync/", headers=idem(key, Authorization="Bearer token-a"))
    token_b = send("POST", "/sync/", headers=idem(key, Authorization="Bearer token-b"))
    none = send("POST", "/sync/", headers=idem(key))
    again_a = send("POST", "/sync/", headers=idem(key, Authorization="Bearer token-a"))

    assert_fresh(token_a, 201, call=1)
    assert_fresh(token_b, 201, call=2)
    assert_fresh(none, 201, call=3)
    assert_replay_of(token_a, again_a)
    scopes = list(IdempotencyKey.objects.filter(key=key).values_list("scope", flat=True))
    assert len(set(scopes)) == 3
    assert "anonymous" in scopes
    # The credential itself is never written to the store.
    assert not any("token" in scope for scope in scopes)


def test_scope_function_setting(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"SCOPE_FUNCTION": f"{__name__}.tenant_scope"}
    alice = User.objects.create_user("alice")
    as_alice = send.client()
    as_alice.force_login(alice)
    key = new_key()

    acme = send("POST", "/sync/", headers=idem(key, **{"X-Tenant": "acme"}))
    globex = send("POST", "/sync/", headers=idem(key, **{"X-Tenant": "globex"}))
    # Same tenant, another user: the function says it is the same namespace.
    acme_again = send("POST", "/sync/", headers=idem(key, **{"X-Tenant": "acme"}), client=as_alice)

    assert_fresh(acme, 201, call=1)
    assert_fresh(globex, 201, call=2)
    # The view read request.user for the first answer (SessionMiddleware added Vary);
    # the replay never reads the session, as SCOPE_FUNCTION does not either.
    assert_replay_of(acme, acme_again, session_vary=True)
    scopes = set(IdempotencyKey.objects.filter(key=key).values_list("scope", flat=True))
    assert scopes == {"tenant:acme", "tenant:globex"}


# ---------------------------------------------------------------------------- fingerprint headers


def test_only_fingerprint_headers_count(send: Send) -> None:
    key = new_key()
    first = send("POST", "/sync/", headers=idem(key, **{"X-Api-Version": "1", "X-Trace": "a"}))
    other_headers = send("POST", "/sync/", headers=idem(key, **{"X-Api-Version": "2"}))

    assert_replay_of(first, other_headers)


def test_fingerprint_headers_setting(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"FINGERPRINT_HEADERS": ["Content-Type", "X-Api-Version"]}
    key = new_key()
    first = send("POST", "/sync/", headers=idem(key, **{"X-Api-Version": "1"}))
    other_version = send("POST", "/sync/", headers=idem(key, **{"X-Api-Version": "2"}))
    no_version = send("POST", "/sync/", headers=idem(key))
    same = send("POST", "/sync/", headers=idem(key, **{"X-Api-Version": "1"}))

    assert_problem(other_version, 409, "idempotency_key_mismatch")
    assert_problem(no_version, 409, "idempotency_key_mismatch")
    assert_replay_of(first, same)


def test_empty_fingerprint_headers_ignore_the_content_type(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"FINGERPRINT_HEADERS": []}
    key = new_key()
    first = send("POST", "/sync/", BODY, JSON, headers=idem(key))
    replay = send("POST", "/sync/", BODY, "text/plain", headers=idem(key))

    assert_replay_of(first, replay)


# ---------------------------------------------------------------------------- exemptions


def test_exempt_paths_setting(send: Send, settings: Any) -> None:
    settings.IDEMPOTENCY = {"EXEMPT_PATHS": [r"^/open/"], "REQUIRED": True}
    key = new_key()

    runs = [send("POST", "/open/", headers=idem(key)) for _ in range(2)]
    malformed = send("POST", "/open/", headers=idem("a,b"))
    missing = send("POST", "/open/")
    protected = send("POST", "/sync/")

    assert [r.status_code for r in [*runs, malformed, missing]] == [201] * 4
    assert len(CALLS) == 4
    assert_problem(protected, 400, "idempotency_key_missing")
    assert IdempotencyKey.objects.count() == 0


def test_exempt_view_is_left_alone(send: Send, view: str, settings: Any) -> None:
    settings.IDEMPOTENCY = {"REQUIRED": True}
    key = new_key()
    url = f"{view}exempt/"

    runs = [send("POST", url, headers=idem(key)) for _ in range(2)]
    malformed = send("POST", url, headers=idem("a,b"))
    missing = send("POST", url)

    assert [json.loads(r.content)["call"] for r in [*runs, malformed, missing]] == [1, 2, 3, 4]
    assert all("Idempotent-Replayed" not in r for r in runs)
    assert IdempotencyKey.objects.count() == 0
    assert rows() == ["row-1", "row-2", "row-3", "row-4"]


# ---------------------------------------------------------------------------- fail closed


@pytest.mark.django_db(transaction=True)
def test_unreachable_store_fails_closed(send: Send, view: str) -> None:
    key = new_key()
    response = with_unreachable_store(lambda: send("POST", view, headers=idem(key)))

    assert_problem(response, 503, "idempotency_store_unavailable")
    assert CALLS == []
    assert IdempotencyKey.objects.count() == 0
    assert rows() == []
    # Once the database is back, the same key runs normally.
    assert_fresh(send("POST", view, headers=idem(key)), 201, call=1)


@pytest.mark.django_db(transaction=True)
def test_unreachable_store_fails_closed_for_a_logged_in_user(send: Send) -> None:
    alice = User.objects.create_user("alice")
    client = send.client(raise_request_exception=False)
    client.force_login(alice)
    key = new_key()

    response = with_unreachable_store(
        lambda: send("POST", "/sync/", headers=idem(key), client=client)
    )

    assert_problem(response, 503, "idempotency_store_unavailable")
    assert CALLS == []
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_unreachable_store_does_not_touch_unprotected_requests(send: Send) -> None:
    # /in-transaction/ needs no database: only the app could reach for it here.
    def run() -> list[Any]:
        return [
            send("GET", "/in-transaction/", b"", headers=idem(new_key())),
            send("POST", "/in-transaction/"),
        ]

    responses = with_unreachable_store(run)

    assert [r.status_code for r in responses] == [201, 201]
    assert len(CALLS) == 2


@pytest.mark.django_db(transaction=True)
def test_store_lost_after_the_view_ran(send: Send) -> None:
    key = new_key()
    client = send.client(raise_request_exception=False)

    response = in_thread_restoring_connection(
        lambda: send("POST", "/break/", headers=idem(key), client=client)
    )

    assert_problem(response, 503, "idempotency_store_unavailable")
    assert len(CALLS) == 1
    assert rows() == []  # ATOMIC: the view's write was never committed
    assert stored(key) is None
    # The release could not reach the database either: the lease frees the key.
    assert key_row(key).state == IdempotencyKey.State.RUNNING


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("adapter", list(LOSE_DATABASE))
def test_database_lost_while_the_view_runs_is_503(send: Send, adapter: str) -> None:
    key = new_key()
    client = send.client(raise_request_exception=False)
    url = LOSE_DATABASE[adapter]

    response = in_thread_restoring_connection(
        lambda: send("POST", url, headers={**idem(key), "X-Store": "gone"}, client=client)
    )

    # Not Django's 500: the view's transaction died with the connection, so the
    # client may safely retry, as when the store is down before the view runs.
    assert_problem(response, 503, "idempotency_store_unavailable")
    assert len(CALLS) == 1
    assert rows() == []
    assert stored(key) is None
    assert key_row(key).state == IdempotencyKey.State.RUNNING


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("adapter", list(LOSE_DATABASE))
def test_database_error_with_the_store_still_reachable_stays_the_views_error(
    send: Send, adapter: str
) -> None:
    key = new_key()
    client = send.client(raise_request_exception=False)

    response = send("POST", LOSE_DATABASE[adapter], headers=idem(key), client=client)

    assert response.status_code == 500
    assert rows() == []
    assert key_row(key).state == IdempotencyKey.State.RELEASED


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "size",
    [1024, BINARY_BODY_MIN, 2 * 1024 * 1024],
    ids=["1-kib", "binary-bound-threshold", "2-mib"],
)
def test_binary_body_round_trips(send: Send, size: int) -> None:
    # From BINARY_BODY_MIN on, PostgreSQL gets the body as a binary parameter.
    key = new_key()
    body = (bytes(range(256)) * (size // 256 + 1))[:size]
    first = send("POST", "/binary/", body, "application/octet-stream", headers=idem(key))
    replay = send("POST", "/binary/", body, "application/octet-stream", headers=idem(key))
    other = send(
        "POST", "/binary/", body[:-1] + b"\x00", "application/octet-stream", headers=idem(key)
    )

    assert first.status_code == 201
    assert first.content == bytes(reversed(body)) + b"\x00\xff\x01"
    assert_replay_of(first, replay)
    assert_problem(other, 409, "idempotency_key_mismatch")
    assert bytes(stored(key).body) == first.content  # type: ignore[union-attr]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's prepared statements")
def test_binary_body_is_never_a_prepared_statement() -> None:
    # With psycopg's prepare_threshold at 0 every server-bound statement would be
    # prepared at once: behind PgBouncer in transaction mode, a later transaction
    # may then meet "prepared statement does not exist" on another server connection.
    connection.ensure_connection()
    raw = connection.connection
    saved = raw.prepare_threshold
    raw.prepare_threshold = 0
    try:
        body = bytes(BINARY_BODY_MIN)
        response = Send("wsgi")(
            "POST", "/binary/", body, "application/octet-stream", headers=idem(new_key())
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [row[0] for row in cursor.fetchall()]
    finally:
        raw.prepare_threshold = saved
    assert response.status_code == 201
    bodies = [bytes(b) for b in IdempotencyResponse.objects.values_list("body", flat=True)]
    assert bodies == [response.content]
    assert len(response.content) >= BINARY_BODY_MIN
    ours = [s for s in prepared if "idempotency" in s]
    if PREPARED_BY_DEFAULT:
        # The claim is prepared (PREPARED_STATEMENTS), the binary completion never.
        assert [s.split()[0] for s in ours] == ["SELECT"]
        assert "idempotency_claim(" in ours[0]  # the claim, not the completion
    else:
        assert ours == []


@pytest.mark.parametrize(
    "body",
    [b'{"item": "\xff\xfe"}', b'{"item": ', b"\x00\x01\x02", b"not json at all"],
    ids=["non-utf8", "truncated", "binary", "text"],
)
def test_malformed_json_gets_the_views_own_answer(send: Send, body: bytes) -> None:
    key = new_key()
    first = send("POST", "/json/", body, JSON, headers=idem(key))
    replay = send("POST", "/json/", body, JSON, headers=idem(key))

    assert first.status_code == 400
    assert first.json() == {"error": "malformed JSON", "call": 1}
    assert_replay_of(first, replay)
    assert len(CALLS) == 1


def test_non_utf8_form_body(send: Send) -> None:
    key = new_key()
    body = b"name=caf\xe9&note=\xff\xfe"
    first = send("POST", "/form/", body, "application/x-www-form-urlencoded", headers=idem(key))
    replay = send("POST", "/form/", body, "application/x-www-form-urlencoded", headers=idem(key))

    assert first.status_code == 201
    assert set(first.json()["post"]) == {"name", "note"}
    assert_replay_of(first, replay)


def test_body_larger_than_data_upload_max_memory_size_is_413(send: Send, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"blob": "x" * 4096}).encode()

    response = send("POST", "/json/", body, JSON, headers=idem(new_key()))

    assert_problem(response, 413, "idempotency_request_too_large")
    assert CALLS == []
    assert IdempotencyKey.objects.count() == 0


def test_large_body_without_a_key_is_djangos_400(send: Send, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"blob": "x" * 4096}).encode()
    client = send.client(raise_request_exception=False)

    response = send("POST", "/json/", body, JSON, client=client)

    assert response.status_code == 400
    assert response["Content-Type"] != "application/problem+json"
    assert IdempotencyKey.objects.count() == 0


def test_large_body_with_required_key_missing_is_400_missing(send: Send, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    settings.IDEMPOTENCY = {"REQUIRED": True}
    body = json.dumps({"blob": "x" * 4096}).encode()

    assert_problem(send("POST", "/json/", body, JSON), 400, "idempotency_key_missing")
    assert CALLS == []


def _multipart(content: bytes, name: str = "report") -> bytes:
    return encode_multipart(
        BOUNDARY, {"name": name, "file": SimpleUploadedFile("report.bin", content)}
    )


def test_multipart_upload_is_fingerprinted_and_replayed(send: Send) -> None:
    key = new_key()
    body = _multipart(b"\x00\x01binary payload\xff")

    first = send("POST", "/upload/", body, MULTIPART_CONTENT, headers=idem(key))
    replay = send("POST", "/upload/", body, MULTIPART_CONTENT, headers=idem(key))
    other_file = send(
        "POST", "/upload/", _multipart(b"another file"), MULTIPART_CONTENT, headers=idem(key)
    )

    assert first.status_code == 201
    assert first.json() == {
        "call": 1,
        "name": "report",
        "filename": "report.bin",
        "sha256": hashlib.sha256(b"\x00\x01binary payload\xff").hexdigest(),
    }
    assert_replay_of(first, replay)
    assert_problem(other_file, 409, "idempotency_key_mismatch")
    assert rows() == ["row-1"]


def test_multipart_upload_larger_than_the_memory_limit_runs_and_replays(
    send: Send, settings: Any
) -> None:
    # Django leaves file data out of DATA_UPLOAD_MAX_MEMORY_SIZE: so does the app,
    # which fingerprints the upload as it streams.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 2048  # the file goes to disk, as without the key
    key = new_key()
    content = b"z" * 4096 + b"\x00end"
    changed = b"z" * 4096 + b"\x01end"

    first = send("POST", "/upload/", _multipart(content), MULTIPART_CONTENT, headers=idem(key))
    replay = send("POST", "/upload/", _multipart(content), MULTIPART_CONTENT, headers=idem(key))
    other = send("POST", "/upload/", _multipart(changed), MULTIPART_CONTENT, headers=idem(key))

    assert first.status_code == 201
    assert first.json()["sha256"] == hashlib.sha256(content).hexdigest()
    assert_replay_of(first, replay)
    assert_problem(other, 409, "idempotency_key_mismatch")
    assert rows() == ["row-1"]


def test_multipart_fields_past_the_memory_limit_are_djangos_own_refusal(
    send: Send, settings: Any
) -> None:
    # What Django refuses without the key (non-file data past the limit), it refuses
    # with the key: its 400, never stored.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    client = send.client(raise_request_exception=False)
    key = new_key()
    body = _multipart(b"small", name="n" * 4096)

    first = send("POST", "/upload/", body, MULTIPART_CONTENT, headers=idem(key), client=client)

    assert first.status_code == 400  # Django's, raised when the view reads request.POST
    assert len(CALLS) == 1
    assert rows() == []
    assert stored(key) is None
    assert key_row(key).state == IdempotencyKey.State.RELEASED


def test_malformed_multipart_is_djangos_400_and_not_stored(send: Send) -> None:
    key = new_key()
    client = send.client(raise_request_exception=False)
    body = b"--nope\r\nContent-Disposition: form-data; broken\r\n\r\n"
    content_type = "multipart/form-data; boundary="  # no boundary at all

    first = send("POST", "/upload/", body, content_type, headers=idem(key), client=client)
    retry = send("POST", "/upload/", body, content_type, headers=idem(key), client=client)

    assert first.status_code == retry.status_code == 400
    assert "Idempotent-Replayed" not in retry
    assert len(CALLS) == 2
    assert stored(key) is None
    assert rows() == []
