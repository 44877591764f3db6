"""Retried uploads from real clients over real HTTP (SPEC section 4).

The testproject is served on 127.0.0.1 by pytest-django's ``live_server`` (a
threaded WSGI server sharing the test database). ``requests`` and the ``curl``
binary pick a fresh multipart boundary on every send, and a form fetched again
before the retry carries a new masked CSRF token: the retry must still get the
stored response, and the view must have run once.

``/uploads/`` is a plain Django view, CSRF-protected and protected by the
middleware; ``/api/uploads/`` is a DRF view with ``IdempotencyMixin`` and DRF's
multipart parser.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from shop.models import Upload

# The demo's upload form and API, as the demo serves them.
pytestmark = pytest.mark.urls("testproject.urls")

TIMEOUT = 30  # seconds, per request; never reached when green
CONTENT = b"\x00\x01 quarterly report \xff\r\n" * 64
TOKEN_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
BOUNDARY_RE = re.compile(r"boundary=(\S+)")


def changed(content: bytes) -> bytes:
    """The same file with one bit of one byte flipped."""
    return content[:10] + bytes([content[10] ^ 0x01]) + content[11:]


def boundary_of(content_type: str | bytes) -> str:
    text = content_type if isinstance(content_type, str) else content_type.decode("latin-1")
    match = BOUNDARY_RE.search(text)
    assert match is not None, content_type
    return match.group(1)


def assert_mismatch(status: int, content_type: str, body: bytes) -> None:
    assert status == 409
    assert content_type == "application/problem+json"
    assert json.loads(body)["code"] == "idempotency_key_mismatch"


# -- requests ---------------------------------------------------------------------------


def form_token(session: requests.Session, url: str) -> str:
    """Fetch the upload form, as a browser would before each send."""
    response = session.get(url, timeout=TIMEOUT)
    assert response.status_code == 200
    match = TOKEN_RE.search(response.text)
    assert match is not None
    return match.group(1)


def test_requests_retries_a_multipart_upload(live_server: Any) -> None:
    url = f"{live_server.url}/uploads/"
    session = requests.Session()
    key = str(uuid.uuid4())
    tokens: list[str] = []

    def send(content: bytes) -> requests.Response:
        tokens.append(form_token(session, url))
        return session.post(
            url,
            data={"note": "q3", "csrfmiddlewaretoken": tokens[-1]},
            files={"file": ("report.bin", content, "application/octet-stream")},
            headers={"Idempotency-Key": key},
            timeout=TIMEOUT,
        )

    first = send(CONTENT)
    retry = send(CONTENT)
    other = send(changed(CONTENT))

    sent = [r.request.headers["Content-Type"] for r in (first, retry)]
    assert boundary_of(sent[0]) != boundary_of(sent[1])
    assert tokens[0] != tokens[1]
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert_mismatch(other.status_code, other.headers["Content-Type"], other.content)
    upload = Upload.objects.get()
    assert first.json() == {
        "id": upload.pk,
        "name": "report.bin",
        "size": len(CONTENT),
        "sha256": hashlib.sha256(CONTENT).hexdigest(),
        "note": "q3",
    }


def test_requests_resends_a_form_with_a_new_csrf_token(live_server: Any) -> None:
    url = f"{live_server.url}/uploads/"
    session = requests.Session()
    key = str(uuid.uuid4())
    tokens = [form_token(session, url) for _ in range(2)]
    assert tokens[0] != tokens[1]

    def send(token: str, content: str) -> requests.Response:
        return session.post(
            url,
            data={"name": "pasted.txt", "content": content, "csrfmiddlewaretoken": token},
            headers={"Idempotency-Key": key},
            timeout=TIMEOUT,
        )

    first = send(tokens[0], "hello")
    retry = send(tokens[1], "hello")
    other = send(tokens[1], "hellp")

    assert first.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert first.status_code == 201, first.text
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert_mismatch(other.status_code, other.headers["Content-Type"], other.content)
    assert list(Upload.objects.values_list("name", "size")) == [("pasted.txt", 5)]


def test_requests_retries_an_upload_to_a_drf_view(live_server: Any) -> None:
    user = User.objects.create_user("uploader")
    token = Token.objects.create(user=user)
    url = f"{live_server.url}/api/uploads/"
    key = str(uuid.uuid4())

    def send(content: bytes) -> requests.Response:
        return requests.post(
            url,
            data={"note": "via DRF"},
            files={"file": ("report.bin", content, "application/octet-stream")},
            headers={"Idempotency-Key": key, "Authorization": f"Token {token.key}"},
            timeout=TIMEOUT,
        )

    first = send(CONTENT)
    retry = send(CONTENT)
    other = send(changed(CONTENT))

    assert boundary_of(first.request.headers["Content-Type"]) != boundary_of(
        retry.request.headers["Content-Type"]
    )
    assert first.status_code == 201, first.text
    assert first.json()["sha256"] == hashlib.sha256(CONTENT).hexdigest()
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert_mismatch(other.status_code, other.headers["Content-Type"], other.content)
    assert Upload.objects.count() == 1


# -- curl -------------------------------------------------------------------------------

CURL = shutil.which("curl")


class Curl:
    """The curl binary with a cookie jar, as a script would drive it."""

    def __init__(self, workdir: Path) -> None:
        assert CURL is not None
        self.binary = CURL
        self.workdir = workdir
        self.jar = workdir / "cookies.txt"
        self.sent = 0

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                self.binary,
                *("--silent", "--show-error", "--verbose"),
                *("--cookie", str(self.jar), "--cookie-jar", str(self.jar)),
                *args,
            ],
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
        )

    def token(self, url: str) -> str:
        match = TOKEN_RE.search(self.run(url).stdout.decode())
        assert match is not None
        return match.group(1)

    def upload(self, url: str, key: str, content: bytes) -> dict[str, Any]:
        """Send ``content`` as the file of a fresh form, with ``-F`` fields."""
        self.sent += 1
        path = self.workdir / f"report-{self.sent}.bin"
        path.write_bytes(content)
        headers, body = self.workdir / "headers.txt", self.workdir / "body.txt"
        token = self.token(url)
        done = self.run(
            "--header",
            f"Idempotency-Key: {key}",
            # No 100-continue round trip: the test server does not answer one.
            "--header",
            "Expect:",
            "--form",
            f"file=@{path};filename=report.bin;type=application/octet-stream",
            "--form",
            "note=q3",
            "--form",
            f"csrfmiddlewaretoken={token}",
            "--dump-header",
            str(headers),
            "--output",
            str(body),
            url,
        )
        lines = headers.read_text("latin-1").splitlines()
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                fields[name.strip().lower()] = value.strip()
        sent_type = next(
            line
            for line in done.stderr.decode("latin-1").splitlines()
            if line.lower().startswith("> content-type:")
        )
        return {
            "status": int(lines[0].split()[1]),
            "headers": fields,
            "body": body.read_bytes(),
            "boundary": boundary_of(sent_type),
        }


@pytest.mark.skipif(CURL is None, reason="the curl binary is not installed")
def test_curl_retries_a_multipart_upload(live_server: Any, tmp_path: Path) -> None:
    url = f"{live_server.url}/uploads/"
    curl = Curl(tmp_path)
    key = str(uuid.uuid4())

    first = curl.upload(url, key, CONTENT)
    retry = curl.upload(url, key, CONTENT)
    other = curl.upload(url, key, changed(CONTENT))

    assert first["boundary"] != retry["boundary"]
    assert first["status"] == 201, first["body"]
    assert "idempotent-replayed" not in first["headers"]
    assert retry["status"] == 201
    assert retry["headers"]["idempotent-replayed"] == "true"
    assert retry["body"] == first["body"]
    assert_mismatch(other["status"], other["headers"]["content-type"], other["body"])
    upload = Upload.objects.get()
    assert (upload.name, upload.size, upload.sha256, upload.note) == (
        "report.bin",
        len(CONTENT),
        hashlib.sha256(CONTENT).hexdigest(),
        "q3",
    )
