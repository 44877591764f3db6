"""Assertions shared by the behaviour tests."""

from __future__ import annotations

import json
from typing import Any

DRAFT = "https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-idempotency-key-header"

#: The default problem ``type`` of each error code.
TYPES = {
    "idempotency_key_missing": f"{DRAFT}#section-2.1",
    "idempotency_key_invalid": f"{DRAFT}#section-2.1",
    "idempotency_key_mismatch": f"{DRAFT}#section-2.2",
    "idempotency_key_locked": f"{DRAFT}#section-2.6",
    "idempotency_store_unavailable": "about:blank",
    "idempotency_request_too_large": "about:blank",
    "idempotency_response_too_large": "about:blank",
    "idempotency_response_not_kept": "about:blank",
}


def assert_problem(
    response: Any,
    status: int,
    code: str,
    *,
    type_uri: str | None = None,
    replayed: bool = False,
) -> dict[str, Any]:
    """An RFC 9457 problem+json answer with exactly the app's fields; returns the body.

    ``replayed``: a stored problem sent again, with ``Idempotent-Replayed: true``.
    """
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    assert response["Cache-Control"] == "no-store"
    if replayed:
        assert response["Idempotent-Replayed"] == "true"
    else:
        assert "Idempotent-Replayed" not in response
    body = json.loads(response.content)
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert body["type"] == (type_uri or TYPES[code])
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if code in ("idempotency_key_locked", "idempotency_store_unavailable"):
        assert response["Retry-After"] == "1"
    else:
        assert "Retry-After" not in response
    return body
