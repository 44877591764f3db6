"""Chunked request bodies (no ``Content-Length``) through real servers.

httpx sends a body given as a generator with ``Transfer-Encoding: chunked``.
gunicorn (WSGI) passes such a body in ``wsgi.input`` with no ``CONTENT_LENGTH``
and ``wsgi.input_terminated``, and Django reads none of it: to the view, the
body is empty. uvicorn (ASGI) passes the whole body, and Django's ``request.body``
has it, but Django's multipart parser and DRF's parsers read nothing without a
``Content-Length``. A keyed request must look to the view exactly as it does
without the key, and its fingerprint must still cover the bytes as sent: the
retry replays, and one byte changed is a mismatch, on both servers.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stress.harness import TOKEN, Database, Server, sqlite_database

TIMEOUT = 60  # seconds per request; never reached when green
CHUNK = 64 * 1024
JSON = "application/json"
BOUNDARY = "chunked-boundary-7d1f"
AUTH = {"Authorization": f"Token {TOKEN}"}


def chunks(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def flipped(body: bytes, at: int) -> bytes:
    """``body`` with one bit of the byte at ``at`` flipped."""
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


def multipart(content: bytes) -> bytes:
    return (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="note"\r\n\r\nscan\r\n'
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="scan.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def post(
    client: httpx.Client, path: str, body: bytes, headers: dict[str, str], size: int
) -> httpx.Response:
    request = client.build_request("POST", path, content=chunks(body, size), headers=headers)
    assert request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in request.headers
    return client.send(request)


def without_ids(response: httpx.Response) -> tuple[int, Any]:
    """Status and body, with the ids a second create gets left out."""
    try:
        data = response.json()
    except ValueError:
        return response.status_code, response.content
    if isinstance(data, dict):
        data.pop("id", None)
        data.pop("reference", None)
        data.pop("created_at", None)
    return response.status_code, data


# Each case: the path, the body, its Content-Type, and the size of the chunks sent.
CASES = {
    "plain JSON view": (
        "/payments/",
        b'{"amount": "12.50", "currency": "EUR", "reference": "chunked"}',
        JSON,
        7,
    ),
    "DRF JSON": ("/api/orders/", b'{"item": "book", "quantity": 1, "amount": "12.50"}', JSON, 5),
    "DRF multipart, 6 MiB": (
        "/api/uploads/",
        multipart(os.urandom(6 * 1024 * 1024)),
        f"multipart/form-data; boundary={BOUNDARY}",
        CHUNK,
    ),
}

#: What the view makes of the chunked body, the same with and without a key: under
#: ASGI the plain view reads it; everything else sees an empty body.
EXPECTED = {
    ("gunicorn", "plain JSON view"): 400,
    ("gunicorn", "DRF JSON"): 400,
    ("gunicorn", "DRF multipart, 6 MiB"): 400,
    ("uvicorn", "plain JSON view"): 201,
    ("uvicorn", "DRF JSON"): 400,
    ("uvicorn", "DRF multipart, 6 MiB"): 400,
}


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def served(
    request: pytest.FixtureRequest, work_dir: Path, sqlite_template: Path
) -> Iterator[tuple[str, Server]]:
    database: Database = sqlite_database(work_dir, sqlite_template, f"chunked_{request.param}")
    with Server(database, work_dir, kind=request.param, workers=2) as server:
        yield request.param, server


@pytest.mark.parametrize("case", list(CASES))
def test_a_chunked_body_runs_replays_and_mismatches(served: tuple[str, Server], case: str) -> None:
    kind, server = served
    path, body, content_type, size = CASES[case]
    changed = flipped(body, len(body) - 40)  # in the last part, past every header
    keyed = {**AUTH, "Content-Type": content_type, "Idempotency-Key": str(uuid.uuid4())}
    plain = {**AUTH, "Content-Type": content_type}
    base = f"http://127.0.0.1:{server.port}"

    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        first = post(client, path, body, keyed, size)
        replay = post(client, path, body, keyed, size)
        other = post(client, path, changed, keyed, size)
        unkeyed = post(client, path, body, plain, size)

    where = f"{kind} {case}: {first.status_code} {first.content[:200]!r}\n{server.log_tail()}"
    assert first.status_code == EXPECTED[kind, case], where
    assert "idempotent-replayed" not in first.headers, where
    # The view saw what it sees without the key.
    assert without_ids(first) == without_ids(unkeyed), where
    assert replay.status_code == first.status_code, where
    assert replay.headers.get("idempotent-replayed") == "true", where
    assert replay.content == first.content, where
    assert other.status_code == 409, f"{other.status_code} {other.content[:300]!r}\n{where}"
    assert other.headers["content-type"] == "application/problem+json"
    assert json.loads(other.content)["code"] == "idempotency_key_mismatch"
