"""Sending one request through Django's WSGI or ASGI test client, the same way."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpRequest
from django.test import AsyncClient, AsyncRequestFactory, Client, RequestFactory

from idempotency.conf import idempotency_settings
from idempotency.fingerprints import default_fingerprint

JSON = "application/json"


class Send:
    """``send(method, path, body, content_type, headers)`` through one of the two handlers.

    ``mode`` is ``"wsgi"`` (``Client``) or ``"asgi"`` (``AsyncClient``, so the async
    middleware chain); ``body`` and ``content_type`` are the defaults of every call.
    """

    def __init__(self, mode: str, body: bytes = b"", content_type: str = JSON) -> None:
        self.mode = mode
        self.body = body
        self.content_type = content_type

    def client(self, *, raise_request_exception: bool = True) -> Client | AsyncClient:
        if self.mode == "wsgi":
            return Client(raise_request_exception=raise_request_exception)
        return AsyncClient(raise_request_exception=raise_request_exception)

    def __call__(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        client: Client | AsyncClient | None = None,
        **extra: str,
    ) -> Any:
        body = self.body if body is None else body
        content_type = content_type or self.content_type
        client = client or self.client()
        if isinstance(client, AsyncClient):
            asgi_client = client

            async def request() -> Any:
                return await asgi_client.generic(
                    method, path, body, content_type, headers=headers, **extra
                )

            return async_to_sync(request)()
        return client.generic(method, path, body, content_type, headers=headers, **extra)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> HttpRequest:
        """The request as this handler builds it (for fingerprints of rows made by hand)."""
        factory = RequestFactory() if self.mode == "wsgi" else AsyncRequestFactory()
        return factory.generic(
            method,
            path,
            self.body if body is None else body,
            content_type or self.content_type,
        )

    def fingerprint(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> str:
        """The fingerprint the app computes for this request."""
        return default_fingerprint(
            self.request(method, path, body, content_type),
            idempotency_settings.get().fingerprint_meta,
        )
