"""How a request is fingerprinted, and helpers for views that want another way."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from django.http import HttpRequest
from django.http.request import RawPostDataException


class BodyTooLarge(Exception):
    """The body is larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE`` and cannot be read whole."""


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def request_body(request: HttpRequest) -> bytes:
    """The raw body, or a stable digest of the parsed form when the raw bytes were
    already consumed by a multipart parser before the app saw the request."""
    from django.core.exceptions import RequestDataTooBig

    try:
        return request.body
    except RequestDataTooBig as exc:
        raise BodyTooLarge(str(exc)) from exc
    except RawPostDataException:
        digest = hashlib.sha256(b"form\n")
        for name in sorted(request.POST):
            for value in request.POST.getlist(name):
                digest.update(_text(name) + b"=" + _text(value) + b"\n")
        for name in sorted(request.FILES):
            for upload in request.FILES.getlist(name):
                digest.update(_text(name) + b":" + _text(upload.name or "") + b"\n")
                for chunk in upload.chunks():
                    digest.update(chunk)
                upload.seek(0)
        return digest.digest()


def default_fingerprint(request: HttpRequest, header_meta: Iterable[str]) -> str:
    """SHA-256 over the method, the full path with its query string as sent, the
    values of ``FINGERPRINT_HEADERS`` and the body bytes."""
    digest = hashlib.sha256()
    digest.update(_text(request.method or ""))
    digest.update(b"\n")
    digest.update(_text(request.get_full_path()))
    for name in header_meta:
        digest.update(b"\n")
        digest.update(_text(request.META.get(name, "")))
    digest.update(b"\n")
    digest.update(request_body(request))
    return digest.hexdigest()


def canonical_json(fields: Iterable[str] | None = None) -> Callable[[Any], str]:
    """A ``fingerprint_func`` that compares JSON bodies by meaning, not by bytes.

    Key order and whitespace no longer matter; with ``fields``, only those
    top-level fields count. A body that is not a JSON object is fingerprinted
    by its bytes. Method and path always count.
    """
    wanted = None if fields is None else frozenset(fields)

    def fingerprint(request: Any) -> str:
        http_request: HttpRequest = getattr(request, "_request", request)
        body = request_body(http_request)
        digest = hashlib.sha256()
        digest.update(_text(http_request.method or "") + b"\n")
        digest.update(_text(http_request.get_full_path()) + b"\n")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict):
            if wanted is not None:
                data = {k: v for k, v in data.items() if k in wanted}
            digest.update(b"json\n")
            digest.update(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
        else:
            digest.update(b"raw\n")
            digest.update(body)
        return digest.hexdigest()

    return fingerprint
