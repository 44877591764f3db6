"""RFC 9457 problem details for every error the app answers itself."""

from __future__ import annotations

import json

from django.http import HttpResponse

from idempotency.conf import Resolved

DRAFT = "https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-idempotency-key-header"

DEFAULT_TYPES = {
    "idempotency_key_missing": f"{DRAFT}#section-2.1",
    "idempotency_key_invalid": f"{DRAFT}#section-2.1",
    "idempotency_key_mismatch": f"{DRAFT}#section-2.2",
    "idempotency_key_locked": f"{DRAFT}#section-2.6",
}

TITLES = {
    "idempotency_key_missing": "Idempotency-Key is missing",
    "idempotency_key_invalid": "Idempotency-Key is malformed",
    "idempotency_key_mismatch": "Idempotency-Key is already used for a different request",
    "idempotency_key_locked": "A request with this Idempotency-Key is still being processed",
    # These have no section in the draft, so their type is about:blank, and
    # RFC 9457 asks for the status phrase as the title.
    "idempotency_store_unavailable": "Service Unavailable",
    "idempotency_request_too_large": "Content Too Large",
    "idempotency_response_too_large": "Internal Server Error",
    "idempotency_response_not_kept": "Internal Server Error",
}

CONTENT_TYPE = "application/problem+json"


def problem(
    code: str,
    status: int,
    detail: str,
    settings: Resolved,
    *,
    retry_after: int | None = None,
) -> HttpResponse:
    """A problem+json response with ``type``, ``title``, ``status``, ``detail`` and ``code``."""
    body = {
        "type": settings.problem_types.get(code) or DEFAULT_TYPES.get(code, "about:blank"),
        "title": TITLES[code],
        "status": status,
        "detail": detail,
        "code": code,
    }
    response = HttpResponse(json.dumps(body).encode(), status=status, content_type=CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response
