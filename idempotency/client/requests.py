"""A transport for `requests <https://requests.readthedocs.io/>`_ (extra ``[requests]``).

::

    from idempotency.client import Provider, call
    from idempotency.client.requests import RequestsTransport

    provider = Provider(RequestsTransport(), header="Idempotency-Key")
    outcome = call(provider, "charge", f"pool-tx:{intent.pk}", "POST", url, json=payload)

``requests`` is imported when the transport is first used, not with this module.
"""

from __future__ import annotations

from typing import Any

from idempotency.client.operations import OutgoingRequest, TransportError
from idempotency.client.policy import Answer

__all__ = ["RequestsTransport"]


def _never_connected(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the connection was never opened."""
    from urllib3.exceptions import NewConnectionError

    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, NewConnectionError):
            return True
        if isinstance(item, BaseException):
            stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
            stack.extend(arg for arg in item.args if isinstance(arg, BaseException))
    return False


class RequestsTransport:
    """Sends through a ``requests.Session`` (one of its own when none is given).

    Redirects are not followed; ``request_kwargs`` (``verify``, ``cert``,
    ``proxies``...) go to every ``session.request()``. Connection errors and
    timeouts become :class:`~idempotency.client.TransportError`; a refused
    connection or a connect timeout counts as never sent.
    """

    def __init__(self, session: Any = None, **request_kwargs: Any) -> None:
        self._session = session
        self.request_kwargs = request_kwargs

    @property
    def session(self) -> Any:
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    def send(self, request: OutgoingRequest, *, timeout: float) -> tuple[Answer, Any]:
        import requests

        try:
            response = self.session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                timeout=timeout,
                allow_redirects=False,
                **self.request_kwargs,
            )
            body = response.content
        except requests.ConnectTimeout as exc:
            raise TransportError(str(exc), sent=False) from exc
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            raise TransportError(str(exc), sent=not _never_connected(exc)) from exc
        answer = Answer(response.status_code, list(response.headers.items()), body)
        return answer, response
