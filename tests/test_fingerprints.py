"""``idempotency.fingerprints``: what a request's fingerprint covers (SPEC section 4).

Multipart bodies are built by hand here, so that every detail of a part (a
filename that is absent or empty, a part without ``Content-Type``, the
boundary) is the test's choice. ``old_fingerprint`` is the formula of the
releases before form bodies were walked, written out again independently: the
bodies it still covers must keep their digest across the upgrade.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

pytest.importorskip(
    "hypothesis", reason="hypothesis is not installed (pip install -r requirements/property.txt)"
)

from django.contrib.auth.models import Group, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory
from django.test.client import encode_multipart
from django.urls import path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from idempotency import fingerprints
from idempotency.decorators import idempotent
from idempotency.fingerprints import default_fingerprint, request_body
from idempotency.rest_framework import IdempotencyMixin
from tests.helpers import assert_problem, new_key

CONTENT_TYPE = ("CONTENT_TYPE",)
PATH = "/upload/?b=2&a=1"
URLENCODED = "application/x-www-form-urlencoded"
FILE = b"\x00\x01 quarterly report \xff\r\n--not a delimiter\r\n" * 3
#: Boundaries as curl, requests, Chrome and Firefox pick them, and a quoted one.
BOUNDARIES = [
    "------------------------d74496d66958873e",
    "9b3e4a5f0c6d4e2f8a1b7c3d5e9f0a2b",
    "----WebKitFormBoundary7MA4YWxkTrZu0gW",
    "----geckoformboundary1d2c3b4a5f6e7d8c9b0a",
    "a quoted: boundary",
]


def old_fingerprint(method: str, full_path: str, headers: Sequence[str], body: bytes) -> str:
    """SHA-256 of method, path, each header value and the body, one per line."""
    lines = "\n".join([method, full_path, *headers]) + "\n"
    return hashlib.sha256(lines.encode() + body).hexdigest()


def part(
    name: str,
    value: bytes,
    *,
    filename: str | None = None,
    content_type: str | None = None,
    headers: Sequence[str] = (),
) -> bytes:
    """One part of a multipart body, headers and value, without the delimiters."""
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    lines = [f"Content-Disposition: {disposition}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.extend(headers)
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + value


def multipart(boundary: str, parts: Sequence[bytes], epilogue: bytes = b"\r\n") -> bytes:
    dash = b"--" + boundary.encode()
    return b"".join(dash + b"\r\n" + p + b"\r\n" for p in parts) + dash + b"--" + epilogue


def form_data(boundary: str, params: str = "") -> str:
    quoted = f'"{boundary}"' if " " in boundary else boundary
    return f"multipart/form-data; boundary={quoted}{params}"


def fp(
    body: bytes,
    content_type: str,
    *,
    method: str = "POST",
    path: str = PATH,
    headers: Sequence[str] = CONTENT_TYPE,
) -> str:
    # CONTENT_TYPE set even for an empty body, which the factory would leave without one.
    request = RequestFactory().generic(method, path, body, content_type, CONTENT_TYPE=content_type)
    return default_fingerprint(request, headers)


def fp_parts(parts: Sequence[bytes], boundary: str = BOUNDARIES[0], **kwargs: Any) -> str:
    return fp(multipart(boundary, parts), form_data(boundary), **kwargs)


BASE = [
    part("note", b"quarterly"),
    part("report", FILE, filename="report.bin", content_type="application/octet-stream"),
    part("tags", b"a"),
    part("tags", b"b"),
]


# -- multipart: what counts, what does not --------------------------------------------


def test_the_boundary_does_not_count() -> None:
    fingerprints_seen = {fp_parts(BASE, boundary) for boundary in BOUNDARIES}

    assert len(fingerprints_seen) == 1


def _edit(index: int, new: bytes) -> list[bytes]:
    return [new if i == index else p for i, p in enumerate(BASE)]


def _one_byte_changed(content: bytes) -> bytes:
    return content[:5] + bytes([content[5] ^ 0x01]) + content[6:]


VARIANTS = {
    "one byte of the file": _edit(
        1,
        part(
            "report",
            _one_byte_changed(FILE),
            filename="report.bin",
            content_type="application/octet-stream",
        ),
    ),
    "filename": _edit(
        1, part("report", FILE, filename="report.txt", content_type="application/octet-stream")
    ),
    "filename absent": _edit(1, part("report", FILE, content_type="application/octet-stream")),
    "filename empty": _edit(
        1, part("report", FILE, filename="", content_type="application/octet-stream")
    ),
    "part content type": _edit(
        1, part("report", FILE, filename="report.bin", content_type="text/plain")
    ),
    "part content type absent": _edit(1, part("report", FILE, filename="report.bin")),
    "part content type empty": _edit(
        1, part("report", FILE, filename="report.bin", content_type="")
    ),
    "other part header": _edit(
        1,
        part(
            "report",
            FILE,
            filename="report.bin",
            content_type="application/octet-stream",
            headers=["Content-Transfer-Encoding: binary"],
        ),
    ),
    "field order": [BASE[2], BASE[1], BASE[0], BASE[3]],
    "same name, other order": [BASE[0], BASE[1], BASE[3], BASE[2]],
    "a byte moved to the next field": [
        part("note", b"quarterl"),
        part("report", b"y" + FILE, filename="report.bin", content_type="application/octet-stream"),
        BASE[2],
        BASE[3],
    ],
    "a byte moved from the name to the value": [part("not", b"equarterly"), *BASE[1:]],
    "field name": [part("notes", b"quarterly"), *BASE[1:]],
    "a part more": [*BASE, part("extra", b"")],
    "a part less": BASE[:-1],
    "an empty value": [part("note", b""), *BASE[1:]],
}


@pytest.mark.parametrize("parts", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_part_detail_counts(parts: list[bytes]) -> None:
    # The variant is recognised whatever its boundary, and differs from the base.
    first, second = (fp_parts(parts, boundary) for boundary in BOUNDARIES[:2])

    assert first == second
    assert first != fp_parts(BASE)


def test_no_filename_and_an_empty_filename_differ() -> None:
    absent = [part("field", b"v")]
    empty = [part("field", b"v", filename="")]

    assert fp_parts(absent, BOUNDARIES[0]) == fp_parts(absent, BOUNDARIES[1])
    assert fp_parts(empty, BOUNDARIES[0]) == fp_parts(empty, BOUNDARIES[1])
    assert fp_parts(absent) != fp_parts(empty)


@pytest.mark.parametrize(
    ("changed", "kwargs"),
    [
        ("method", {"method": "PUT"}),
        ("query order", {"path": "/upload/?a=1&b=2"}),
        ("path", {"path": "/uploads/?b=2&a=1"}),
    ],
)
def test_method_and_path_still_count(changed: str, kwargs: dict[str, Any]) -> None:
    assert fp_parts(BASE, BOUNDARIES[0], **kwargs) == fp_parts(BASE, BOUNDARIES[1], **kwargs)
    assert fp_parts(BASE, **kwargs) != fp_parts(BASE)


def test_the_rest_of_the_content_type_still_counts() -> None:
    # Only the boundary parameter is left out: a charset is part of the request.
    with_charset = [
        fp(multipart(b, BASE), form_data(b, "; charset=iso-8859-1")) for b in BOUNDARIES[:2]
    ]
    without_the_header = [fp(multipart(b, BASE), form_data(b), headers=()) for b in BOUNDARIES[:2]]

    assert with_charset[0] == with_charset[1] != fp_parts(BASE)
    assert without_the_header[0] == without_the_header[1] != fp_parts(BASE)


def test_the_epilogue_counts() -> None:
    # Django reads a part from headers it finds after the close delimiter.
    late = b'\r\nContent-Disposition: form-data; name="late"\r\n\r\nvalue'
    with_late = [fp(multipart(b, BASE, late), form_data(b)) for b in BOUNDARIES[:2]]

    assert with_late[0] == with_late[1] != fp_parts(BASE)


def test_the_csrf_token_does_not_count_in_multipart() -> None:
    first = fp_parts([*BASE, part("csrfmiddlewaretoken", b"A" * 64)], BOUNDARIES[0])
    second = fp_parts([part("csrfmiddlewaretoken", b"B" * 64), *BASE], BOUNDARIES[1])
    without = fp_parts(BASE, BOUNDARIES[2])

    assert first == second == without


def test_a_file_named_like_the_csrf_token_counts() -> None:
    def upload(content: bytes) -> bytes:
        return part("csrfmiddlewaretoken", content, filename="token.txt")

    first = fp_parts([*BASE, upload(b"A")], BOUNDARIES[0])
    again = fp_parts([*BASE, upload(b"A")], BOUNDARIES[1])

    assert first == again
    assert first != fp_parts([*BASE, upload(b"B")])
    assert first != fp_parts(BASE)


# -- urlencoded -----------------------------------------------------------------------


def test_the_csrf_token_does_not_count_in_urlencoded_forms() -> None:
    first = fp(b"note=q3&csrfmiddlewaretoken=" + b"A" * 64 + b"&name=r%C3%A9sum%C3%A9", URLENCODED)
    second = fp(b"csrfmiddlewaretoken=" + b"B" * 64 + b"&note=q3&name=r%C3%A9sum%C3%A9", URLENCODED)
    reordered = fp(b"name=r%C3%A9sum%C3%A9&csrfmiddlewaretoken=A&note=q3", URLENCODED)
    reencoded = fp(b"note=q3&csrfmiddlewaretoken=A&name=r\xc3\xa9sum\xc3\xa9", URLENCODED)

    assert first == second
    # Everything else counts as sent, in order.
    assert reordered != first
    assert reencoded != first


@pytest.mark.parametrize(
    "body",
    [b"", b"note=q3", b"note=q3&name=x&note=q4", b"a=1&&b", b"csrfmiddlewaretokenx=1"],
)
def test_urlencoded_forms_without_a_token_keep_their_digest(body: bytes) -> None:
    assert fp(body, URLENCODED) == old_fingerprint("POST", PATH, [URLENCODED], body)


def test_an_urlencoded_token_counts_like_an_absent_one() -> None:
    body = b"note=q3&name=x"
    with_token = b"note=q3&csrfmiddlewaretoken=abc&name=x"

    assert fp(with_token, URLENCODED) == old_fingerprint("POST", PATH, [URLENCODED], body)


# -- bodies that are not forms --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "full_path", "content_type", "body"),
    [
        ("POST", "/payments/", "application/json", b'{"amount": "12.50", "currency": "EUR"}'),
        ("PUT", "/orders/7/?expand=items&x=%2F", "application/json; charset=utf-8", b"[1, 2]"),
        ("PATCH", "/r/", "application/merge-patch+json", '{"n": "Zürich"}'.encode()),
        ("DELETE", "/r/1/", "", b""),
        ("POST", "/raw/", "application/octet-stream", bytes(range(256))),
        ("POST", "/text/", "text/plain", b"--xyz\r\n\r\nnot a form\r\n--xyz--"),
        ("POST", "/text/", "text/plain", b"note=q3&csrfmiddlewaretoken=abc"),
        ("POST", "/mixed/", "multipart/mixed; boundary=xyz", b"--xyz\r\n\r\nx\r\n--xyz--\r\n"),
    ],
)
def test_other_bodies_keep_their_digest(
    method: str, full_path: str, content_type: str, body: bytes
) -> None:
    got = fp(body, content_type, method=method, path=full_path)
    other_headers = fp(
        body, content_type, method=method, path=full_path, headers=("CONTENT_TYPE", "HTTP_X_ONE")
    )

    assert got == old_fingerprint(method, full_path, [content_type], body)
    assert other_headers == old_fingerprint(method, full_path, [content_type, ""], body)


# -- malformed multipart --------------------------------------------------------------

B = BOUNDARIES[0]
GOOD = multipart(B, BASE)
MALFORMED = {
    "no boundary parameter": (GOOD, "multipart/form-data"),
    "empty boundary": (GOOD, "multipart/form-data; boundary="),
    "boundary Django refuses": (GOOD, "multipart/form-data; boundary=" + "x" * 201),
    "other boundary than the body's": (GOOD, form_data("another-boundary")),
    "no close delimiter": (GOOD[: GOOD.rindex(b"--" + B.encode())], form_data(B)),
    "cut in the middle of a part": (GOOD[: len(GOOD) // 2], form_data(B)),
    "close delimiter cut": (GOOD[:-4], form_data(B)),
    "empty body": (b"", form_data(B)),
    "garbage": (b"\x00\xffnot multipart at all\r\n\r\n", form_data(B)),
    "a preamble": (b"preamble\r\n" + GOOD, form_data(B)),
    "LF line ends": (GOOD.replace(b"\r\n", b"\n"), form_data(B)),
    "delimiter not after CRLF": (
        multipart(B, [part("a", b"x--" + B.encode() + b"\r\ny")]),
        form_data(B),
    ),
    "delimiter followed by padding": (
        GOOD.replace(B.encode() + b"\r\n", B.encode() + b" \r\n", 1),
        form_data(B),
    ),
    "headers never end": (b"--" + B.encode() + b"\r\nContent-Disposition: form-data", form_data(B)),
    "headers over Django's limit": (
        multipart(B, [part("a", b"x", headers=["X-Pad: " + "p" * 1100])]),
        form_data(B),
    ),
    "a part without a name": (
        multipart(B, [b"Content-Disposition: form-data\r\n\r\nx"]),
        form_data(B),
    ),
    "a part without headers": (multipart(B, [b"\r\nx"]), form_data(B)),
    "a header sent twice": (
        multipart(B, [part("a", b"x", headers=['Content-Disposition: form-data; name="b"'])]),
        form_data(B),
    ),
    "a header line without a colon": (
        multipart(B, [part("a", b"x", headers=["Oops"])]),
        form_data(B),
    ),
    "a header line that is not UTF-8": (
        multipart(B, [part("a", b"x").replace(b'"a"', b'"\xff"')]),
        form_data(B),
    ),
    "a header with an unknown RFC 2231 charset": (
        multipart(B, [b"Content-Disposition: form-data; name*=nope''x\r\n\r\nx"]),
        form_data(B),
    ),
    "a part after the close delimiter": (
        GOOD + b"--" + B.encode() + b"\r\n" + part("late", b"x") + b"\r\n--" + B.encode() + b"--",
        form_data(B),
    ),
    "non-ASCII content type": (GOOD, form_data(B) + "; x=é"),
    "upper-case media type": (GOOD, "Multipart/Form-Data; boundary=" + B),
}


@pytest.mark.parametrize(("body", "content_type"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_multipart_is_fingerprinted_as_sent(body: bytes, content_type: str) -> None:
    assert fp(body, content_type) == old_fingerprint("POST", PATH, [content_type], body)


@pytest.mark.parametrize(("body", "content_type"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_multipart_is_not_walked(body: bytes, content_type: str) -> None:
    boundary = fingerprints._boundary(content_type)
    if boundary is not None:
        assert fingerprints.form_data_digest([body], boundary) is None


# -- the walker over chunks -----------------------------------------------------------


def test_the_walker_takes_one_byte_at_a_time() -> None:
    body = multipart(B, [*BASE, part("csrfmiddlewaretoken", b"t" * 64)])
    whole = fingerprints.form_data_digest([body], B.encode())
    bytewise = fingerprints.form_data_digest(
        (body[i : i + 1] for i in range(len(body))), B.encode()
    )

    assert whole is not None
    assert bytewise == whole
    assert (
        fingerprints.form_data_digest([multipart(BOUNDARIES[1], BASE)], BOUNDARIES[1].encode())
        == whole
    )


def chunked(body: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted({min(c, len(body)) for c in cuts}):
        yield body[start:cut]
        start = cut
    yield body[start:]


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzéü_-.0123456789 ", min_size=1, max_size=12)
parts_strategy = st.lists(
    st.builds(
        lambda name, value, filename, content_type: part(
            name, value, filename=filename, content_type=content_type
        ),
        names,
        st.binary(max_size=300),
        st.one_of(st.none(), st.just(""), names),
        st.one_of(st.none(), st.sampled_from(["", "text/plain", "application/octet-stream"])),
    ),
    max_size=6,
)
boundary_strategy = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_'()+,./:=?", min_size=8, max_size=70
)
HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(
    parts=parts_strategy,
    boundaries=st.lists(boundary_strategy, min_size=2, max_size=2, unique=True),
    data=st.data(),
)
def test_any_chunking_and_any_boundary_give_the_same_digest(
    parts: list[bytes], boundaries: list[str], data: st.DataObject
) -> None:
    first, second = (multipart(b, parts) for b in boundaries)
    for boundary in boundaries:
        assert ("--" + boundary).encode() not in b"".join(parts)
    whole = fingerprints.form_data_digest([first], boundaries[0].encode())
    cuts = data.draw(st.lists(st.integers(0, len(first)), max_size=20))

    assert whole is not None
    assert fingerprints.form_data_digest(chunked(first, cuts), boundaries[0].encode()) == whole
    assert fingerprints.form_data_digest([second], boundaries[1].encode()) == whole


@HYPOTHESIS
@given(
    body=st.one_of(
        st.binary(max_size=400),
        st.builds(lambda parts: multipart(B, parts), parts_strategy),
    ),
    edits=st.lists(
        st.tuples(st.integers(0, 2000), st.binary(max_size=4), st.integers(0, 4)), max_size=4
    ),
    data=st.data(),
)
def test_damaged_bodies_never_raise_and_do_not_depend_on_chunking(
    body: bytes, edits: list[tuple[int, bytes, int]], data: st.DataObject
) -> None:
    for at, insert, drop in edits:
        at = at % (len(body) + 1)
        body = body[:at] + insert + body[at + drop :]
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=20))
    whole = fingerprints.form_data_digest([body], B.encode())

    assert fingerprints.form_data_digest(chunked(body, cuts), B.encode()) == whole
    assert len(fp(body, form_data(B))) == 64


def test_large_bodies_are_walked_in_linear_time() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB
    many = [part(f"field{i}", b"v" * 20) for i in range(5000)]
    bodies = [
        multipart(B, [*BASE, part("file", big, filename="big.bin")]),
        multipart(B, [*many, part("file", big, filename="big.bin")]),
    ]
    timings = []
    for body in bodies:
        start = time.perf_counter()
        digest = fingerprints.form_data_digest(
            (body[i : i + 65536] for i in range(0, len(body), 65536)), B.encode()
        )
        timings.append(time.perf_counter() - start)
        assert digest is not None

    # Measured: a few ms, and about 0.1 s for the 5000 parts' headers.
    assert timings[0] < 0.5
    assert timings[1] < 3


# -- a body the app sees only as parsed ------------------------------------------------


def _parsed(boundary: str, parts: Sequence[bytes]) -> HttpRequest:
    request = RequestFactory().post(
        PATH, multipart(boundary, parts), content_type=form_data(boundary)
    )
    assert request.POST  # Django's parser reads the stream: request.body is gone
    return request


def test_a_form_parsed_before_the_app_saw_it() -> None:
    first = _parsed(BOUNDARIES[0], [*BASE, part("csrfmiddlewaretoken", b"A" * 64)])
    retry = _parsed(BOUNDARIES[1], [part("csrfmiddlewaretoken", b"B" * 64), *BASE])
    other = _parsed(BOUNDARIES[0], VARIANTS["one byte of the file"])

    assert fp_of(first) == fp_of(retry) != fp_of(other)
    assert request_body(first) == request_body(retry) != request_body(other)
    # The files can still be read by the view.
    assert [f.read() for f in first.FILES.getlist("report")] == [FILE]


def fp_of(request: HttpRequest) -> str:
    return default_fingerprint(request, CONTENT_TYPE)


# -- through the middleware, the decorator and the DRF mixin ---------------------------

#: What each view run saw of the form: one entry per run.
SEEN: list[dict[str, Any]] = []


def _seen(data: Any, files: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if hasattr(value, "read"):
            return {"name": value.name, "type": value.content_type, "bytes": value.read().hex()}
        return value

    return {
        "data": {k: [plain(v) for v in data.getlist(k)] for k in data},
        "files": {k: [plain(f) for f in files.getlist(k)] for k in files},
    }


def _save(seen: dict[str, Any]) -> JsonResponse:
    SEEN.append(seen)
    group = Group.objects.create(name=f"run-{len(SEEN)}")
    return JsonResponse({"id": group.pk, "run": len(SEEN)}, status=201)


def by_middleware(request: HttpRequest) -> HttpResponse:
    return _save(_seen(request.POST, request.FILES))


@idempotent
def by_decorator(request: HttpRequest) -> HttpResponse:
    return _save(_seen(request.POST, request.FILES))


class ByMixin(IdempotencyMixin, APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [MultiPartParser, FormParser]

    def post(self, request: Request) -> HttpResponse:
        return _save(_seen(request.data, request.FILES))


def csrf(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"token": get_token(request)})


urlpatterns = [
    path("middleware/", by_middleware),
    path("decorator/", by_decorator),
    path("mixin/", ByMixin.as_view()),
    path("csrf/", csrf),
]


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    SEEN.clear()
    yield
    SEEN.clear()


def _form(token: str, content: bytes = FILE) -> dict[str, Any]:
    return {
        "note": "quarterly",
        "tags": ["a", "b"],
        "report": SimpleUploadedFile("report.bin", content, "application/octet-stream"),
        "csrfmiddlewaretoken": token,
    }


def _send(client: Client, url: str, boundary: str, form: dict[str, Any], key: str | None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.generic(
        "POST", url, encode_multipart(boundary, form), form_data(boundary), headers=headers
    )


def _run_a_retried_upload(client: Client, url: str) -> None:
    tokens = [json.loads(client.get("/csrf/").content)["token"] for _ in range(2)]
    assert tokens[0] != tokens[1]  # masked afresh, as in a re-rendered form
    key = new_key()

    plain = _send(client, url, BOUNDARIES[0], _form(tokens[0]), None)
    first = _send(client, url, BOUNDARIES[0], _form(tokens[0]), key)
    retry = _send(client, url, BOUNDARIES[1], _form(tokens[1]), key)
    changed = _send(client, url, BOUNDARIES[2], _form(tokens[1], _one_byte_changed(FILE)), key)

    assert (plain.status_code, first.status_code, retry.status_code) == (201, 201, 201)
    assert "Idempotent-Replayed" not in first
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert_problem(changed, 409, "idempotency_key_mismatch")
    # The view ran twice (without and with the key) and saw the same form both times.
    assert len(SEEN) == 2
    assert SEEN[0] == SEEN[1]
    assert SEEN[0]["files"] or SEEN[0]["data"]["report"]
    assert Group.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_middleware_replays_a_retried_upload() -> None:
    _run_a_retried_upload(Client(enforce_csrf_checks=True), "/middleware/")


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_decorator_replays_a_retried_upload(middleware: bool) -> None:
    # Without the middleware, the CSRF check parses the form before the decorator runs.
    _run_a_retried_upload(Client(enforce_csrf_checks=True), "/decorator/")


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_mixin_replays_a_retried_upload(middleware: bool) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_user("uploader"))
    _run_a_retried_upload(client, "/mixin/")
