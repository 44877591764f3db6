"""What the behaviour tests share: keys and requests, the two test clients, the
assertions on answers, and threads (one with the store out of reach).
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import connections
from django.http import HttpRequest
from django.test import AsyncClient, AsyncRequestFactory, Client, RequestFactory
from rest_framework.authtoken.models import Token

from idempotency.conf import idempotency_settings
from idempotency.fingerprints import default_fingerprint
from idempotency.models import IdempotencyKey

JSON = "application/json"
#: The body of a payment, as most views of the tests read it.
BODY = b'{"amount": "12.50"}'

# ---------------------------------------------------------------- keys and requests


def new_key() -> str:
    """A key no other test uses."""
    return str(uuid.uuid4())


def idem(key: str, **more: str) -> dict[str, str]:
    """The headers of a request with ``key``, and ``more``."""
    return {"Idempotency-Key": key, **more}


def key_row(key: str, **filters: Any) -> IdempotencyKey:
    """The one row of ``key`` (narrowed by ``filters`` when several scopes share it)."""
    return IdempotencyKey.objects.get(key=key, **filters)


def token_headers(user: User, **more: str) -> dict[str, str]:
    """The headers of a request authenticated with ``user``'s DRF token, and ``more``."""
    token, _ = Token.objects.get_or_create(user=user)
    return {"Authorization": f"Token {token.key}", **more}


def token_client(user: User) -> Client:
    """A client whose requests carry ``user``'s DRF token."""
    return Client(headers=token_headers(user))


def session_client(user: User, **kwargs: Any) -> Client:
    """A client logged in as ``user`` (``kwargs`` go to ``Client``)."""
    client = Client(**kwargs)
    client.force_login(user)
    return client


def post(
    url: str,
    body: bytes = BODY,
    key: str | None = None,
    *,
    client: Client | None = None,
    content_type: str = JSON,
    **headers: str,
) -> Any:
    """POST ``body`` with ``key`` (none when None) through ``client`` (a new ``Client``)."""
    if key is not None:
        headers["Idempotency-Key"] = key
    return (client or Client()).post(url, body, content_type=content_type, headers=headers)


def apost(url: str, body: bytes = BODY, key: str | None = None, **headers: str) -> Any:
    """:func:`post` through a new ``AsyncClient`` (the ASGI handler)."""
    if key is not None:
        headers["Idempotency-Key"] = key
    return async_to_sync(AsyncClient().post)(url, body, content_type=JSON, headers=headers)


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


# ---------------------------------------------------------------- assertions

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


def assert_fresh(response: Any, status: int = 201) -> None:
    """The view ran for this request: its own answer, not a replay."""
    assert response.status_code == status, response.content
    assert "Idempotent-Replayed" not in response.headers


#: Headers a replay does not repeat: its own marker, and what the server or outer
#: middleware set on each answer.
_NOT_REPLAYED = frozenset({"idempotent-replayed", "set-cookie", "date"})


def _replayable_headers(response: Any, session_vary: bool) -> dict[str, Any]:
    headers: dict[str, Any] = {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower() not in _NOT_REPLAYED
    }
    if session_vary and "vary" in headers:
        vary = {part.strip() for part in headers.pop("vary").split(",")} - {"Cookie"}
        if vary:
            headers["vary"] = vary
    return headers


def assert_replay_of(
    first: Any, replay: Any, *, session_vary: bool = False, cookie: str | None = None
) -> None:
    """``replay`` is the stored ``first`` sent again: status, body bytes and headers.

    Only ``replay`` carries ``Idempotent-Replayed: true``; ``Date`` and cookies are
    each answer's own. ``session_vary``: one of the two was authenticated by the
    session, so ``SessionMiddleware`` added ``Cookie`` to its ``Vary`` on the way out,
    after the store: ``Vary`` is compared without it. ``cookie``: a cookie that
    ``first`` set (a replay sets none of ``first``'s cookies).
    """
    assert replay.status_code == first.status_code
    assert replay.content == first.content
    assert replay["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert _replayable_headers(replay, session_vary) == _replayable_headers(first, session_vary)
    # Cookies belong to the response that set them: never stored, never replayed.
    if cookie is not None:
        assert cookie in first.cookies
    assert not set(first.cookies) & set(replay.cookies)
    assert "Set-Cookie" not in replay.headers


# ---------------------------------------------------------------- threads

#: Seconds; an upper bound for a helper thread, never reached when the tests pass.
THREAD_TIMEOUT = 60


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def point_at_nowhere(conn: Any) -> None:
    """Make ``conn`` (this thread's connection) unreachable: a closed port, a missing dir."""
    broken = dict(conn.settings_dict)
    if conn.vendor == "postgresql":
        broken["HOST"], broken["PORT"] = "127.0.0.1", closed_port()
    else:
        broken["NAME"] = f"/nonexistent-{uuid.uuid4().hex}/store.sqlite3"
    # Settings first: the SQLite backend ignores close() on an in-memory database.
    conn.settings_dict = broken
    conn.close()


def in_thread(target: Callable[[], Any]) -> Any:
    """Run ``target`` in a new thread (its own database connection) and return its result."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:
            result["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(THREAD_TIMEOUT)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    return result["value"]


def in_thread_restoring_connection(target: Callable[[], Any]) -> Any:
    """:func:`in_thread`, then put back the settings of that thread's connection.

    The thread's connection is its own (Django keeps one per thread), so whatever
    ``target`` does to it leaves the test's connection and an in-memory SQLite test
    database untouched.
    """

    def run() -> Any:
        conn = connections["default"]
        original = conn.settings_dict
        try:
            return target()
        finally:
            conn.close()
            conn.settings_dict = original
            conn.close()

    return in_thread(run)


def with_unreachable_store(target: Callable[[], Any]) -> Any:
    """Run ``target`` in a thread whose connection to the store's database points nowhere."""

    def run() -> Any:
        point_at_nowhere(connections["default"])
        return target()

    return in_thread_restoring_connection(run)
