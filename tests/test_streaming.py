"""Keyed uploads larger than DATA_UPLOAD_MAX_MEMORY_SIZE stream, as Django's own do.

Django leaves file data out of ``DATA_UPLOAD_MAX_MEMORY_SIZE`` and spools large
files to disk. A keyed upload is accepted wherever the same upload without a key
is: the app hashes the body as it streams, keeps it where Django's parser reads
it, and the view sees the same ``request.FILES`` and ``request.POST``. These
tests check that under the middleware, the decorator, the DRF mixin and the
django-ninja decorator, over WSGI and ASGI, with a 6 MiB file and Django's default
limits, that the body is never read into ``request.body``, and that the
streamed fingerprint is the one the in-memory path computes for the same body.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import RequestFactory
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from ninja import File, Form, NinjaAPI, UploadedFile
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotency.conf import idempotency_settings
from idempotency.decorators import idempotent
from idempotency.fingerprints import default_fingerprint, keep_body
from idempotency.models import IdempotencyKey
from idempotency.ninja import idempotent as ninja_idempotent
from idempotency.rest_framework import IdempotencyMixin
from tests.helpers import Send, assert_problem, new_key

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

#: The file: past Django's default DATA_UPLOAD_MAX_MEMORY_SIZE and
#: FILE_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB each), which these tests keep.
SIZE = 6 * 1024 * 1024 + 7


def _describe(request: HttpRequest, files: Any, fields: Any) -> dict[str, Any]:
    upload = files["file"]
    content = upload.read()
    Group.objects.create(name=f"upload-{uuid.uuid4()}")
    return {
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "note": fields.get("note"),
        "on_disk": isinstance(upload, TemporaryUploadedFile),
        "body_read": "_body" in request.__dict__,
        "groups": Group.objects.count(),
    }


@csrf_exempt
def plain(request: HttpRequest) -> HttpResponse:
    """Protected by the middleware."""
    return JsonResponse(_describe(request, request.FILES, request.POST), status=201)


@csrf_exempt
@idempotent(required=True)
def decorated(request: HttpRequest) -> HttpResponse:
    return JsonResponse(_describe(request, request.FILES, request.POST), status=201)


class Upload(IdempotencyMixin, APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    parser_classes = [MultiPartParser]

    def post(self, request: Request) -> Response:
        return Response(_describe(request._request, request.FILES, request.data), status=201)


api = NinjaAPI(urls_namespace="idempotency-streaming-tests")


FILE_PART = File(...)
NOTE_FIELD = Form(...)


@api.post("/upload/", response={201: dict})
@ninja_idempotent(required=True)
def ninja_upload(
    request: HttpRequest, file: UploadedFile = FILE_PART, note: str = NOTE_FIELD
) -> dict[str, Any]:
    return _describe(request, {"file": file}, {"note": note})


urlpatterns = [
    path("plain/", plain),
    path("decorated/", decorated),
    path("drf/", Upload.as_view()),
    path("ninja/", api.urls),
]

ADAPTERS = ["/plain/", "/decorated/", "/drf/", "/ninja/upload/"]


def test_the_file_is_past_djangos_default_limits(settings: Any) -> None:
    assert SIZE > settings.DATA_UPLOAD_MAX_MEMORY_SIZE == 2_621_440
    assert SIZE > settings.FILE_UPLOAD_MAX_MEMORY_SIZE == 2_621_440


@pytest.fixture(params=["wsgi", "asgi"])
def send(request: pytest.FixtureRequest) -> Send:
    return Send(request.param)


def _body(content: bytes, note: str = "scan", boundary: str = BOUNDARY) -> bytes:
    return encode_multipart(
        boundary, {"note": note, "file": SimpleUploadedFile("scan.pdf", content, "application/pdf")}
    )


def _content_type(boundary: str = BOUNDARY) -> str:
    return f"multipart/form-data; boundary={boundary}"


def _file(seed: str) -> bytes:
    return (hashlib.sha256(seed.encode()).digest() * (SIZE // 32 + 1))[:SIZE]


@pytest.mark.parametrize("url", ADAPTERS)
def test_a_large_keyed_upload_runs_replays_and_mismatches(send: Send, url: str) -> None:
    key = new_key()
    content = _file("a")
    changed = content[:-1] + bytes([content[-1] ^ 1])

    first = send("POST", url, _body(content), _content_type(), headers={"Idempotency-Key": key})
    # A retry from another client library: another boundary, the same parts.
    replay = send(
        "POST",
        url,
        _body(content, boundary="x-retry"),
        _content_type("x-retry"),
        headers={"Idempotency-Key": key},
    )
    other = send("POST", url, _body(changed), _content_type(), headers={"Idempotency-Key": key})

    assert first.status_code == 201, first.content
    seen = json.loads(first.content)
    assert seen["sha256"] == hashlib.sha256(content).hexdigest()
    assert seen["size"] == SIZE
    assert seen["note"] == "scan"
    assert seen["on_disk"] is True  # spooled to a temporary file, as without the key
    assert seen["body_read"] is False  # never read into memory whole
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert_problem(other, 409, "idempotency_key_mismatch")
    assert Group.objects.count() == 1
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.COMPLETED


@pytest.mark.parametrize("url", ["/plain/", "/drf/"])
def test_the_same_large_upload_without_a_key_is_the_same_to_the_view(send: Send, url: str) -> None:
    content = _file("b")
    with_key = send(
        "POST", url, _body(content), _content_type(), headers={"Idempotency-Key": "k-1"}
    )
    without = send("POST", url, _body(content), _content_type())

    keyed, plain_seen = json.loads(with_key.content), json.loads(without.content)
    keyed.pop("groups")
    plain_seen.pop("groups")
    assert keyed == plain_seen


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_streamed_and_in_memory_fingerprints_are_one(mode: str, settings: Any) -> None:
    body = _body(_file("c"))
    meta = idempotency_settings.get().fingerprint_meta

    def fingerprint(*, stream: bool) -> str:
        request = Send(mode).request("POST", "/plain/", body, _content_type())
        if not stream:
            request.body  # noqa: B018 - in memory first: the walker runs over it whole
        return default_fingerprint(request, meta)

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = None
    assert fingerprint(stream=True) == fingerprint(stream=False)


def test_a_request_factory_upload_is_streamed_once() -> None:
    body = _body(_file("d"))
    request = RequestFactory().generic("POST", "/plain/", body, MULTIPART_CONTENT)
    meta = idempotency_settings.get().fingerprint_meta

    first = default_fingerprint(request, meta)
    again = default_fingerprint(request, meta)  # cached: the stream is not read twice

    assert first == again
    assert request.FILES["file"].read() == _file("d")


# -- a chunked body under WSGI ----------------------------------------------------------


def _chunked_wsgi_request(body: bytes, content_type: str = "application/json") -> HttpRequest:
    """A request as gunicorn passes a chunked body: no CONTENT_LENGTH, the body in
    ``wsgi.input`` and ``wsgi.input_terminated`` set."""
    environ = RequestFactory()._base_environ(  # the factory's defaults, then ours
        REQUEST_METHOD="POST",
        PATH_INFO="/plain/",
        CONTENT_TYPE=content_type,
    )
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.input_terminated"] = True
    return WSGIRequest(environ)


def test_a_chunked_wsgi_body_counts_as_sent_and_stays_unread_for_django() -> None:
    meta = idempotency_settings.get().fingerprint_meta
    body = b'{"amount": "12.50"}' * 1000

    request = _chunked_wsgi_request(body)
    fingerprint = default_fingerprint(request, meta)

    # The same bytes sent with a Content-Length fingerprint the same.
    with_length = RequestFactory().post("/plain/", body, content_type="application/json")
    assert fingerprint == default_fingerprint(with_length, meta)
    assert fingerprint != default_fingerprint(_chunked_wsgi_request(body[:-1] + b"!"), meta)
    assert fingerprint != default_fingerprint(_chunked_wsgi_request(b""), meta)
    # Django reads no body without CONTENT_LENGTH, as without the key; a view that
    # reads the WSGI input itself gets every byte.
    assert request.body == b""
    assert request.environ["wsgi.input"].read() == body


def test_a_chunked_wsgi_body_is_read_once_whatever_asks() -> None:
    meta = idempotency_settings.get().fingerprint_meta
    content = _file("e")
    request = _chunked_wsgi_request(_body(content), _content_type())

    # The middleware, then the DRF mixin, keep the body; then the claim fingerprints it.
    keep_body(request, meta)
    keep_body(request, meta)
    first = default_fingerprint(request, meta)
    fresh = default_fingerprint(_chunked_wsgi_request(_body(content), _content_type()), meta)
    other = _chunked_wsgi_request(_body(content[:-1] + bytes([content[-1] ^ 1])), _content_type())

    assert first == fresh
    assert first != default_fingerprint(other, meta)
    assert request.FILES == {} and dict(request.POST) == {}  # as Django parses it: nothing


def test_a_chunked_wsgi_body_is_hashed_again_for_other_headers() -> None:
    body = b"x" * 200_000
    request = _chunked_wsgi_request(body)
    by_type = default_fingerprint(request, ("CONTENT_TYPE",))
    by_nothing = default_fingerprint(request, ())

    assert by_type == default_fingerprint(_chunked_wsgi_request(body), ("CONTENT_TYPE",))
    assert by_nothing == default_fingerprint(_chunked_wsgi_request(body), ())
    assert by_type != by_nothing
    assert request.environ["wsgi.input"].read() == body  # rewound after the second pass
