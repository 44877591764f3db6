"""Transports for `HTTPX <https://www.python-httpx.org/>`_, sync and async (extra ``[httpx]``).

::

    from idempotency.client import Provider, acall
    from idempotency.client.httpx import AsyncHttpxTransport

    provider = Provider(AsyncHttpxTransport(client), header="X-Idempotency-Key")
    outcome = await acall(provider, "ship", f"order:{order.pk}", "POST", url, json=parcel)

``httpx`` is imported when a transport is first used, not with this module.
"""

from __future__ import annotations

from typing import Any

from idempotency.client.operations import OutgoingRequest, TransportError
from idempotency.client.policy import Answer

__all__ = ["AsyncHttpxTransport", "HttpxTransport"]


def _error(exc: Exception) -> TransportError:
    import httpx

    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return TransportError(f"{type(exc).__name__}: {exc}", sent=not never_sent)


def _transient() -> tuple[type[Exception], ...]:
    import httpx

    return (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def _options(request: OutgoingRequest, timeout: float) -> dict[str, Any]:
    """What both clients' ``request()`` is given besides the method and URL."""
    return {"headers": list(request.headers), "content": request.body, "timeout": timeout}


def _answer(response: Any) -> Answer:
    return Answer(response.status_code, list(response.headers.multi_items()), response.content)


class HttpxTransport:
    """Sends through an ``httpx.Client`` (one of its own when none is given).

    Redirects are not followed (HTTPX's default). Timeouts, network errors and a
    connection closed before the answer become :class:`~idempotency.client.TransportError`;
    a refused connection, a connect timeout and a pool timeout count as never sent.
    """

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.Client()
        return self._client

    def send(self, request: OutgoingRequest, *, timeout: float) -> tuple[Answer, Any]:
        try:
            response = self.client.request(
                request.method, request.url, **_options(request, timeout)
            )
        except _transient() as exc:
            raise _error(exc) from exc
        return _answer(response), response


class AsyncHttpxTransport:
    """Sends through an ``httpx.AsyncClient``; for :func:`~idempotency.client.acall`."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient()
        return self._client

    async def asend(self, request: OutgoingRequest, *, timeout: float) -> tuple[Answer, Any]:
        try:
            response = await self.client.request(
                request.method, request.url, **_options(request, timeout)
            )
        except _transient() as exc:
            raise _error(exc) from exc
        return _answer(response), response
