"""The one place that decides: claim, replay, conflict, complete, release.

The middleware, the DRF mixin and the decorators only find the key's options
and call :func:`start`; when it returns a :class:`Claim`, they run the view
inside it (``with claim:``), which stores the response or frees the key.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

from asgiref.sync import sync_to_async
from django.db import Error as DatabaseError
from django.db import InterfaceError, OperationalError, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone

from idempotency import signals
from idempotency import store as store_module
from idempotency.conf import Resolved, idempotency_settings
from idempotency.context import CurrentKey, _activate
from idempotency.fingerprints import BodyTooLarge, default_fingerprint
from idempotency.keys import InvalidKey, parse_header, validate_key
from idempotency.problems import problem
from idempotency.store import COMPLETED, RELEASED, RUNNING

logger = logging.getLogger("idempotency")

#: Set on the ``HttpRequest`` once an adapter has taken charge of it, so that a
#: second adapter (middleware around a decorated view) never claims it again.
HANDLED_ATTR = "_idempotency_handled"

REPLAYED_HEADER = "Idempotent-Replayed"

#: Never stored, never replayed: cookies and dates belong to the response that
#: carried them, hop-by-hop headers to the connection.
UNSTORED_HEADERS = frozenset(
    {
        "set-cookie",
        "date",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        REPLAYED_HEADER.lower(),
    }
)

_POLL_FIRST = 0.02
_POLL_MAX = 0.5


@dataclass(frozen=True, slots=True)
class Options:
    """Per-view options; ``None`` means "use the ``IDEMPOTENCY`` setting"."""

    required: bool | None = None
    ttl: float | timedelta | None = None
    atomic: bool | None = None
    lock_timeout: float | timedelta | None = None
    concurrent_wait: float | timedelta | None = None
    key_func: Callable[[Any], str | int | None] | None = None
    fingerprint_func: Callable[[Any], str] | None = None
    scope_func: Callable[[Any], str] | None = None


DEFAULT_OPTIONS = Options()


def _seconds(value: float | timedelta | None, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


#: The scope of a request that carries no credentials the app can see.
ANONYMOUS = "anonymous"

#: Answers about the caller, not about the operation: never stored, by any adapter.
ACCESS_DENIED = frozenset({401, 403})


def default_scope(request: Any, http_request: HttpRequest) -> str:
    """The authenticated user's pk; else a hash of the credentials the request carries
    (``CREDENTIAL_HEADERS``, ``CREDENTIAL_COOKIES``); else anonymous."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return credentials_scope(http_request)


def credentials_scope(http_request: HttpRequest) -> str:
    """``authorization:<sha256>`` when ``Authorization`` is the only credential sent;
    ``credentials:<sha256>`` over every credential header and cookie sent; else
    ``anonymous``."""
    settings = idempotency_settings.get()
    meta = http_request.META
    sent: list[str] = []
    for header, name in zip(settings.credential_headers, settings.credential_meta, strict=True):
        value = meta.get(name)
        if value:
            sent.append(f"header:{header.lower()}\x00{value}")
    if settings.credential_cookies:
        cookies = http_request.COOKIES
        for cookie in settings.credential_cookies:
            value = cookies.get(cookie)
            if value:
                sent.append(f"cookie:{cookie}\x00{value}")
    if not sent:
        return ANONYMOUS
    if len(sent) == 1 and sent[0].startswith("header:authorization\x00"):
        # The form of the Authorization-only scope since the first release.
        return "authorization:" + _hash(meta["HTTP_AUTHORIZATION"])
    return "credentials:" + _hash("\n".join(sent))


def _principal_appeared(http_request: HttpRequest) -> bool:
    """Whether the view authenticated the caller itself (django-ninja's ``request.auth``,
    DRF's user on a view without the mixin, a login)."""
    if getattr(http_request, "auth", None) is not None:
        return True
    user = http_request.__dict__.get("user")
    return bool(user is not None and getattr(user, "is_authenticated", False))


def view_name(view: Any) -> str:
    """``module.qualname`` of a view function or class, for messages."""
    if view is None:
        return "the view"
    target = view if isinstance(view, type) else getattr(view, "__wrapped__", view)
    module = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}" if module else str(name)


def storable_headers(response: HttpResponseBase) -> list[list[str]]:
    return [
        [name, value]
        for name, value in response.headers.items()
        if name.lower() not in UNSTORED_HEADERS
    ]


def replay(status: int, headers: list[list[str]], body: bytes) -> HttpResponse:
    response = HttpResponse(body, status=status)
    response_headers = response.headers
    del response_headers["Content-Type"]
    for name, value in headers:
        response_headers[name] = value
    response_headers[REPLAYED_HEADER] = "true"
    return response


def _emit(
    signal: Any,
    event: str,
    *,
    sender: Any,
    request: HttpRequest,
    key: str,
    scope: str | None,
    **fields: Any,
) -> None:
    """Send ``signal`` and log the event under the ``idempotency`` logger."""
    try:
        _log(event, request, key, scope, fields)
    except Exception:
        # A failing log filter must not change an answer that is already decided
        # (and, for a stored response, committed).
        pass
    if not signal.receivers:
        return
    for receiver, result in signal.send_robust(
        sender, request=request, key=key, scope=scope, **fields
    ):
        if isinstance(result, Exception):
            logger.error(
                "A receiver of the idempotency %s signal raised: %r",
                event,
                receiver,
                exc_info=result,
            )


def _log(
    event: str, request: HttpRequest, key: str, scope: str | None, fields: dict[str, Any]
) -> None:
    if logger.isEnabledFor(logging.INFO):
        data: dict[str, Any] = {
            "event": event,
            "key": key,
            "scope": scope,
            "method": request.method,
            "path": request.path,
        }
        for name, value in fields.items():
            data[name] = type(value).__name__ if isinstance(value, BaseException) else value
        details = " ".join(
            f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}"
            for name, value in ((name, data[name]) for name in fields)
        )
        logger.info(
            "idempotency %s: %s %s key=%r scope=%s %s",
            event,
            request.method,
            request.path,
            key,
            scope,
            details,
            extra={"idempotency": data},
        )


def _store_unavailable(settings: Resolved) -> HttpResponse:
    return problem(
        "idempotency_store_unavailable",
        503,
        "The idempotency store could not be reached, so the request was not processed. "
        "It is safe to retry with the same key.",
        settings,
        retry_after=settings.retry_after,
    )


def _locked(settings: Resolved) -> HttpResponse:
    return problem(
        "idempotency_key_locked",
        409,
        "A request with this key is still being processed. Retry after it completes.",
        settings,
        retry_after=settings.retry_after,
    )


def _mismatch(settings: Resolved) -> HttpResponse:
    return problem(
        "idempotency_key_mismatch",
        settings.mismatch_status,
        "This key was already used with a different request (method, path, headers or body).",
        settings,
    )


class _HeldKey:
    """The key this request holds while its view runs: who holds it, its signals, the
    key the view can read, the view's transaction, and giving the key back."""

    __slots__ = (
        "_atomic",
        "_ended",
        "_outer",
        "anonymous",
        "atomic",
        "began",
        "fence",
        "fingerprint",
        "id",
        "key",
        "rejected",
        "request",
        "response",
        "scope",
        "settings",
        "started",
        "store",
        "ttl",
        "view",
    )

    def __init__(
        self,
        *,
        key_id: int,
        fence: int,
        scope: str,
        key: str,
        fingerprint: str,
        settings: Resolved,
        ttl: float,
        atomic: bool,
        request: HttpRequest,
        view: Any = None,
        anonymous: bool = False,
    ) -> None:
        self.id = key_id
        self.fence = fence
        self.scope = scope
        self.key = key
        self.fingerprint = fingerprint
        self.settings = settings
        self.ttl = ttl
        self.atomic = atomic
        self.store = store_module.Store(settings.database)
        self.request = request
        self.view = view
        self.started = time.monotonic()
        self._atomic: transaction.Atomic | None = None
        self._outer: CurrentKey | None = None
        #: The default scope found no principal: a view that authenticates the caller
        #: itself must not have its response stored under the shared anonymous scope.
        self.anonymous = anonymous
        #: Set once the key is completed or freed: later failures change nothing.
        self._ended = False
        #: Whether the view may run: False when its transaction could not begin, and
        #: ``response`` is then the 503 to send.
        self.began = False
        #: What the view answered, handed in by the adapter; once the claim is closed,
        #: the response to send.
        self.response: Any = None
        #: The answer is about the caller (DRF's access errors), not about the
        #: operation: send it without storing it.
        self.rejected = False

    def _emit(self, signal: Any, event: str, **fields: Any) -> None:
        _emit(
            signal,
            event,
            sender=self.view,
            request=self.request,
            key=self.key,
            scope=self.scope,
            **fields,
        )

    def _emit_on_commit(self, signal: Any, event: str, **fields: Any) -> None:
        """Emit once the write is durable: at once in autocommit; after the outer
        transaction under ``ATOMIC_REQUESTS`` or a request nested in an atomic view,
        and never if that rolls back."""
        if not signal.receivers and not logger.isEnabledFor(logging.INFO):
            return  # nobody listens: no callback on the hot path
        transaction.on_commit(
            lambda: self._emit(signal, event, **fields), using=self.settings.database
        )

    # -- the key the view can read (idempotency.current_key, idempotency.derive) ----

    def activate(self) -> None:
        """Make this key current for the view: :func:`idempotency.current_key`."""
        self._outer = _activate(CurrentKey(self.key, self.scope, self.fingerprint))

    def deactivate(self) -> None:
        """Give back the key that was current before, if any (a request made from
        inside another protected view)."""
        _activate(self._outer)

    # -- the view's transaction -------------------------------------------------------

    def _open_atomic(self) -> None:
        """Open the transaction the view and the stored response share (``ATOMIC``)."""
        if self.atomic and self._atomic is None:
            block = transaction.atomic(using=self.settings.database)
            block.__enter__()
            self._atomic = block  # only once it is open: a failed BEGIN has nothing to close

    def _close_atomic(self, *, commit: bool) -> None:
        block, self._atomic = self._atomic, None
        if block is None:
            return
        if commit:
            block.__exit__(None, None, None)
            return
        transaction.set_rollback(True, using=self.settings.database)
        try:
            block.__exit__(None, None, None)
        except DatabaseError:
            # The connection is gone (the database stopped or restarted): the server
            # has already dropped the transaction with it. Start afresh next time.
            logger.warning(
                "Lost the database connection while rolling back for idempotency key %r.",
                self.key,
                exc_info=True,
            )
            try:
                connections[self.settings.database].close()
            except DatabaseError:
                pass

    # -- giving the key back ----------------------------------------------------------

    def _release(self, reason: str) -> bool:
        """Free the key; False when the store could not be reached (the key then frees
        itself when its lease ends)."""
        try:
            released = self.store.release(self.id, self.fence)
        except DatabaseError:
            logger.exception(
                "Could not release idempotency key %r; it frees itself when its lease ends.",
                self.key,
            )
            return False
        if released:
            self._emit_on_commit(signals.key_released, "released", reason=reason)
        # Not released: another request took the key over after this one's lease ran
        # out. It is that request's key now, and there was nothing to free.
        return True


class _FreeingEnding(_HeldKey):
    """The endings that store nothing: the view's writes are rolled back (or, for a
    stream or an unscoped answer, kept), and the key is freed so that a retry runs the
    view again."""

    __slots__ = ()

    def abort(self, exc: BaseException | None = None) -> HttpResponse | None:
        """The view raised ``exc``: undo its writes (``ATOMIC``) and free the key.

        Returns the response to send instead of the exception, or None to let it
        propagate. That is a 503 when the database went away under the view: its
        connection failed (``exc``) and the store cannot be reached to free the key
        either. The view's transaction died with the connection, so, as for a store
        that is down before the view runs, the client may retry with the same key.
        """
        if self._ended:
            # Stored or freed already: only make sure no transaction is left open.
            self._close_atomic(commit=False)
            return None
        self._ended = True
        try:
            self._close_atomic(commit=False)
        finally:
            released = self._release("exception")
        if released or not isinstance(exc, OperationalError | InterfaceError):
            return None
        logger.error(
            "The database went away while the view ran for idempotency key %r; "
            "answered 503 instead of the view's error.",
            self.key,
            exc_info=exc,
        )
        self._emit(signals.store_unavailable, "store_unavailable", error=exc)
        return _store_unavailable(self.settings)

    def discard(self, response: HttpResponseBase) -> HttpResponseBase:
        """Send ``response`` without storing it: undo the view's writes, free the key."""
        return self._end_unstored(response, commit=False, reason="rejected")

    def _end_unstored(
        self, response: HttpResponseBase, *, commit: bool, reason: str
    ) -> HttpResponseBase:
        self._ended = True
        try:
            self._close_atomic(commit=commit)
        except DatabaseError as exc:
            logger.exception("Could not commit the view's writes for key %r.", self.key)
            self._release("store_failed")
            self._emit(signals.store_unavailable, "store_unavailable", error=exc)
            return _store_unavailable(self.settings)
        except BaseException:
            # An on_commit hook of the view raised after its writes committed: the key
            # is still freed, then the error goes on to Django's handling.
            self._release(reason)
            raise
        self._release(reason)
        return response

    def _store_failed(self, response: HttpResponseBase, exc: DatabaseError) -> HttpResponseBase:
        """The store failed while the response was being kept."""
        # self.atomic, not "is the block still open": the block is already closed (rolled
        # back) when the view asked for a rollback or lost its connection mid-transaction.
        self._ended = True
        was_atomic = self.atomic
        self._close_atomic(commit=False)
        if was_atomic:
            # Nothing the view wrote was kept, so the client may safely retry.
            self._release("store_failed")
            self._emit(signals.store_unavailable, "store_unavailable", error=exc)
            return _store_unavailable(self.settings)
        # ATOMIC = False: the view's effects happened and cannot be undone. Send its
        # response; the key frees itself when its lease ends.
        return response


class _StoringEnding(_FreeingEnding):
    """The view answered: keep its response with its writes, or say why it is not kept
    (not a response, a stream, a status that is not stored, too large, fenced out)."""

    __slots__ = ()

    def finish(self, response: Any) -> HttpResponseBase:
        """Store a storable response with the view's writes, or release the key.

        Whatever fails on the way (a view that returned something other than a
        response, a template that cannot render, a broken header) rolls the view's
        writes back and frees the key before the error goes on to Django's handling.
        """
        try:
            return self._finish(response)
        except BaseException as exc:
            answer = self.abort(exc)
            if answer is None:
                raise
            return answer

    def _finish(self, response: Any) -> HttpResponseBase:
        settings = self.settings
        if not isinstance(response, HttpResponseBase):
            returned = "None" if response is None else f"a {type(response).__name__}"
            hint = (
                ""
                if response is None
                else " A django-ninja operation returns data, not a response: protect it "
                "with idempotency.ninja.idempotent."
            )
            raise TypeError(
                f"The view {view_name(self.view)} didn't return an HttpResponse object. "
                f"It returned {returned} instead, so idempotency key {self.key!r} was "
                f"released.{hint}"
            )
        if response.streaming:
            # A stream cannot be stored. The view's writes stand, as they would without
            # the app, and a retry runs the view again.
            logger.warning(
                "Streaming response for idempotency key %r was not stored; released.", self.key
            )
            return self._end_unstored(response, commit=True, reason="streaming")
        if not getattr(response, "is_rendered", True):
            response = response.render()  # type: ignore[attr-defined]
        status = response.status_code
        if status in ACCESS_DENIED:
            # Who is asking, not what was asked: a 401 or 403 stored under a scope that
            # did not see the caller's credentials must never reach another caller.
            return self._end_unstored(response, commit=False, reason="rejected")
        if status in settings.non_storable:
            return self._end_unstored(response, commit=False, reason="not_stored")
        if self.anonymous and _principal_appeared(self.request):
            # The view authenticated the caller by a scheme the scope could not see
            # (a header outside CREDENTIAL_HEADERS): storing this under the anonymous
            # scope would replay it to every anonymous caller with the key. The writes
            # stand; a retry runs the view again.
            logger.warning(
                "%s %s authenticated its caller inside the view, but the key %r was "
                "claimed under the anonymous scope, so its response was not stored. Add "
                "the credential header to IDEMPOTENCY['CREDENTIAL_HEADERS'], or protect "
                "the view with an adapter that runs after authentication "
                "(idempotency.ninja.idempotent, the DRF IdempotencyMixin, scope_func).",
                self.request.method,
                self.request.path,
                self.key,
            )
            return self._end_unstored(response, commit=True, reason="unscoped")

        assert isinstance(response, HttpResponse)
        if self._atomic is not None and transaction.get_rollback(using=settings.database):
            # The view's own error handling (e.g. DRF's) asked for its writes to be undone:
            # do that, and store the response it answered with on its own.
            self._close_atomic(commit=False)
        body = response.content
        headers = storable_headers(response)
        limit = settings.max_response_size
        if limit is not None and len(body) > limit:
            why = f"larger than IDEMPOTENCY['MAX_RESPONSE_SIZE'] ({limit} bytes)"
            return self._too_large(response, len(body), why)
        try:
            refusal = self.store.refusal(body, headers)
        except DatabaseError as exc:
            logger.exception("Could not store the response for idempotency key %r.", self.key)
            return self._store_failed(response, exc)
        if refusal is not None:
            return self._too_large(response, len(body), f"too large for the store: {refusal}")
        container = getattr(response, "_container", None)
        if isinstance(container, list) and len(container) > 1:
            # Written in parts (write()): send the joined body, so that the parts are
            # not held beside it and the copy the store sends.
            response.content = body
        return self._store(response, status, headers, body)

    def _store(
        self, response: HttpResponse, status: int, headers: list[list[str]], body: bytes
    ) -> HttpResponseBase:
        """Store ``status``, ``headers`` and ``body`` under the key, then send ``response``."""
        now = timezone.now()
        try:
            stored = self.store.complete(
                self.id,
                self.fence,
                now=now,
                expires_at=now + timedelta(seconds=self.ttl),
                status=status,
                headers=headers,
                body=body,
            )
        except DatabaseError as exc:
            logger.exception("Could not store the response for idempotency key %r.", self.key)
            return self._store_failed(response, exc)
        self._ended = True
        if not stored:
            return self._fenced_out(response)
        try:
            self._close_atomic(commit=True)
        except DatabaseError as exc:
            logger.exception("Could not commit the response for idempotency key %r.", self.key)
            return self._store_failed(response, exc)
        self._emit_on_commit(
            signals.response_stored,
            "stored",
            status=status,
            duration=time.monotonic() - self.started,
        )
        return response

    def _too_large(self, response: HttpResponse, size: int, why: str) -> HttpResponseBase:
        """A storable response whose body is over ``MAX_RESPONSE_SIZE``, or that the
        store's database cannot take (``why`` says which, for the log).

        No part of it is stored. With ``ATOMIC`` the view's writes are rolled back and
        the key freed: nothing happened, and the client is told why. Without it the
        view's effects stand, so the key must not be freed for the view to run again:
        the client gets the response, and the key keeps a stand-in that tells a retry
        its answer was not kept.
        """
        status = response.status_code
        if self.atomic:
            logger.error(
                "The %d response to %s %s (%d bytes) is %s, so it was not stored: the "
                "view's writes were rolled back, idempotency key %r was released, and the "
                "client got 500 idempotency_response_too_large.",
                status,
                self.request.method,
                self.request.path,
                size,
                why,
                self.key,
            )
            answer = self._end_unstored(response, commit=False, reason="too_large")
            if answer is not response:
                return answer  # the store failed on the way: its 503
            return problem(
                "idempotency_response_too_large",
                500,
                "The response to this request was too large for the server to keep "
                "under its idempotency key, so the request was rolled back and had no "
                "effect. It may be sent again, but while its response is as large it "
                "gets this answer again.",
                self.settings,
            )
        logger.error(
            "The %d response to %s %s (%d bytes) is %s, so it was not stored. The view "
            "is not atomic and its effects stand: idempotency key %r keeps a stand-in, "
            "and a retry gets 500 idempotency_response_not_kept instead of the response.",
            status,
            self.request.method,
            self.request.path,
            size,
            why,
            self.key,
        )
        stand_in = problem(
            "idempotency_response_not_kept",
            500,
            f"The request with this key was processed and answered {status}, but that "
            "response was too large for the server to keep, so it cannot be sent again. "
            "The request was not run again.",
            self.settings,
        )
        return self._store(
            response, stand_in.status_code, storable_headers(stand_in), stand_in.content
        )

    def _fenced_out(self, response: HttpResponseBase) -> HttpResponseBase:
        """Another request took the key over after this one's lease ran out."""
        was_atomic = self.atomic
        self._close_atomic(commit=False)
        logger.warning(
            "Idempotency key %r was taken over after its lease ended; this request's "
            "response was %s.",
            self.key,
            "rolled back" if was_atomic else "sent but not stored",
        )
        if not was_atomic:
            return response
        try:
            existing = self.store.fetch(scope=self.scope, key=self.key, now=timezone.now())
        except DatabaseError as exc:
            self._emit(signals.store_unavailable, "store_unavailable", error=exc)
            return _store_unavailable(self.settings)
        if (
            existing is not None
            and existing.state == COMPLETED
            and existing.fingerprint == self.fingerprint
            and existing.status is not None
        ):
            self._emit(signals.response_replayed, "replayed", status=existing.status)
            return replay(existing.status, existing.headers or [], existing.body or b"")
        self._emit(signals.conflict, "conflict", reason="locked", status=409)
        return _locked(self.settings)


class Claim(_StoringEnding):
    """A key this request holds: the context manager around the view's call.

    Entering it opens the view's transaction (``ATOMIC``) and makes the key current;
    leaving it stores the response the adapter handed in (``response``) or, when the
    view raised, rolls the view's writes back and frees the key. Every adapter runs
    its view the same way::

        with claim:
            if claim.began:
                claim.response = view(request, *args, **kwargs)
        return claim.response

    ``async with`` does the same around an async view; the store's calls then run in
    the request's sync thread (``sync_to_async``), so they share one connection and
    transaction. Where a framework ends the view in another hook than the one that
    starts it (the middleware, the DRF mixin, django-ninja), the adapter keeps the
    entered claim on the request and exits it from the hook where the view ends,
    as an ``ExitStack`` would.

    When the transaction cannot begin (the database failed), the view must not run:
    ``began`` is False, the key is already freed, and ``response`` is the 503. When
    the view raised and the database went away under it, leaving answers 503
    instead of the error (it returns True, so the error is not raised again).
    """

    __slots__ = ()

    def __enter__(self) -> Claim:
        try:
            self._open_atomic()
        except BaseException as exc:
            answer = self.abort(exc)
            if not isinstance(exc, DatabaseError):
                raise
            if answer is None:
                self._emit(signals.store_unavailable, "store_unavailable", error=exc)
                answer = _store_unavailable(self.settings)
            self.response = answer
            return self
        self.began = True
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if not self.began:
            return False
        self.deactivate()
        if exc is None:
            response = self.response
            self.response = self.discard(response) if self.rejected else self.finish(response)
            return False
        answer = self.abort(exc)
        if answer is None:
            return False
        self.response = answer
        return True

    async def __aenter__(self) -> Claim:
        return await sync_to_async(self.__enter__)()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return await sync_to_async(self.__exit__)(exc_type, exc, traceback)


def _read_key(
    request: Any, http_request: HttpRequest, options: Options, settings: Resolved
) -> str | None:
    if options.key_func is not None:
        try:
            value: Any = options.key_func(request)
        except Exception as exc:
            logger.warning("key_func raised for %s %s", http_request.method, http_request.path)
            raise InvalidKey("The key could not be read from the request.") from exc
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a numeric event id
        if not isinstance(value, str):
            raise InvalidKey(
                f"The key read from the request is {_article(type(value).__name__)}; "
                "it must be a string or an integer."
            )
        return validate_key(value, settings.max_key_length)
    raw = http_request.META.get(settings.header_meta)
    if raw is None:
        return None
    return parse_header(raw, settings.max_key_length)


def _article(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def start(
    request: Any,
    http_request: HttpRequest,
    options: Options = DEFAULT_OPTIONS,
    view: Any = None,
) -> Claim | HttpResponse | None:
    """Decide what happens to a request before its view runs.

    ``request`` is what hooks receive (a DRF ``Request`` in the mixin),
    ``http_request`` the Django request beneath it. Returns ``None`` when the
    request is not protected (no key and none required), a response to send
    instead of running the view, or a :class:`Claim` to run the view under.
    ``view`` is the protected view, sent as the signals' ``sender``.
    """
    settings = idempotency_settings.get()
    required = settings.required if options.required is None else options.required
    try:
        key = _read_key(request, http_request, options, settings)
    except InvalidKey as exc:
        setattr(http_request, HANDLED_ATTR, True)
        return problem("idempotency_key_invalid", 400, str(exc), settings)
    if key is None:
        if not required:
            return None
        setattr(http_request, HANDLED_ATTR, True)
        if options.key_func is not None:
            detail = (
                "This request needs an idempotency key, and none was found where this "
                "endpoint reads it from the request."
            )
        else:
            detail = f"This request needs an {settings.header} header."
        return problem("idempotency_key_missing", 400, detail, settings)
    setattr(http_request, HANDLED_ATTR, True)

    try:
        if options.fingerprint_func is not None:
            fingerprint = _hash(str(options.fingerprint_func(request)))
        else:
            fingerprint = default_fingerprint(http_request, settings.fingerprint_meta)
    except BodyTooLarge:
        return problem(
            "idempotency_request_too_large",
            413,
            "The body is larger than this server reads into memory "
            "(DATA_UPLOAD_MAX_MEMORY_SIZE), so it cannot be fingerprinted.",
            settings,
        )
    ttl = _seconds(options.ttl, settings.ttl)
    lease = _seconds(options.lock_timeout, settings.lock_timeout)
    wait = _seconds(options.concurrent_wait, settings.concurrent_wait)
    atomic = settings.atomic if options.atomic is None else options.atomic
    method = http_request.method or ""
    path = http_request.get_full_path()
    store = store_module.Store(settings.database)

    deadline: float | None = None
    pause = _POLL_FIRST
    scope: str | None = None

    def emit(signal: Any, event: str, **fields: Any) -> None:
        _emit(signal, event, sender=view, request=http_request, key=key, scope=scope, **fields)

    try:
        # The default scope reads request.user, which may query the session store.
        scope_func = options.scope_func or settings.scope_function
        if scope_func is not None:
            scope = str(scope_func(request))
        else:
            scope = default_scope(request, http_request)
        anonymous = scope == ANONYMOUS
        if len(scope) > 255:
            scope = "sha256:" + _hash(scope)
        while True:
            found = _claim_once(store, scope, key, fingerprint, method, path, lease, ttl)
            if isinstance(found, _Claimed):
                return Claim(
                    key_id=found.id,
                    fence=found.fence,
                    scope=scope,
                    key=key,
                    fingerprint=fingerprint,
                    settings=settings,
                    ttl=ttl,
                    atomic=atomic,
                    request=http_request,
                    view=view,
                    anonymous=anonymous,
                )
            if found is not None:
                if found.status is None:
                    response = _mismatch(settings)
                    emit(
                        signals.conflict, "conflict", reason="mismatch", status=response.status_code
                    )
                    return response
                emit(signals.response_replayed, "replayed", status=found.status)
                return replay(found.status, found.headers, found.body)
            # Locked: another request holds a live lease on the same operation.
            if deadline is None:
                deadline = time.monotonic() + wait
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                emit(signals.conflict, "conflict", reason="locked", status=409)
                return _locked(settings)
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX)
    except store_module.UnsupportedDatabase as exc:
        # No SQL was sent; a traceback would only hide the reason.
        logger.error("Idempotency store unavailable for key %r: %s", key, exc)
        emit(signals.store_unavailable, "store_unavailable", error=exc)
        return _store_unavailable(settings)
    except DatabaseError as exc:
        logger.exception("Idempotency store unavailable for key %r.", key)
        emit(signals.store_unavailable, "store_unavailable", error=exc)
        return _store_unavailable(settings)


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    fence: int


@dataclass(frozen=True, slots=True)
class _Found:
    """A completed key to replay, or (``status`` None) a key used for another request."""

    status: int | None
    headers: list[list[str]]
    body: bytes


_MISMATCH = _Found(None, [], b"")

# -- what a request finds -----------------------------------------------------------

#: What happens to a request that finds its key's row already there.
LOCKED = "locked"  # 409 idempotency_key_locked, or wait (CONCURRENT_WAIT)
MISMATCH = "mismatch"  # idempotency_key_mismatch (MISMATCH_STATUS)
REPLAY = "replay"  # the stored response; the view does not run
TAKEOVER = "takeover"  # fence n+1 and a new lease; the view runs

#: The row found (its state), its fingerprint against the request's, and its lease
#: and TTL, against what happens: the table "What a request finds" of
#: docs/how-it-works.rst, row for row and in its words (tests/test_engine.py
#: compares the two). Finding no row is the INSERT's claim, before this table.
# fmt: off
FINDINGS: tuple[tuple[str, str, str, str], ...] = (
    # row found  fingerprint   lease / TTL                       outcome
    (RUNNING,    "same",       "lease live",                     LOCKED),
    (RUNNING,    "different",  "lease live",                     MISMATCH),
    (RUNNING,    "same",       "lease ran out",                  TAKEOVER),
    (RUNNING,    "different",  "lease ran out, TTL not passed",  MISMATCH),
    (RUNNING,    "different",  "lease ran out, TTL passed",      TAKEOVER),
    (COMPLETED,  "same",       "TTL not passed",                 REPLAY),
    (COMPLETED,  "different",  "TTL not passed",                 MISMATCH),
    (COMPLETED,  "any",        "TTL passed",                     TAKEOVER),
    (RELEASED,   "same",       "any",                            TAKEOVER),
    (RELEASED,   "different",  "TTL not passed",                 MISMATCH),
    (RELEASED,   "different",  "TTL passed",                     TAKEOVER),
)
# fmt: on

#: What each word of the fingerprint and lease / TTL cells fixes, as (index, value)
#: in (same fingerprint, lease live, TTL passed); "any" fixes nothing.
_WORDS: dict[str, tuple[int, bool] | None] = {
    "same": (0, True),
    "different": (0, False),
    "lease live": (1, True),
    "lease ran out": (1, False),
    "TTL passed": (2, True),
    "TTL not passed": (2, False),
    "any": None,
}

_Finding = tuple[str, bool, bool, bool]


def _lookup(findings: tuple[tuple[str, str, str, str], ...]) -> dict[_Finding, str]:
    """``findings`` as one entry per (state, same fingerprint, lease live, TTL passed)
    that a row covers, so that a claim looks its outcome up once."""
    table: dict[_Finding, str] = {}
    for state, fingerprint, lease_ttl, outcome in findings:
        words = [_WORDS[fingerprint], *(_WORDS[word] for word in lease_ttl.split(", "))]
        fixed = [word for word in words if word is not None]
        for same, live, passed in itertools.product((True, False), repeat=3):
            case = (same, live, passed)
            if all(case[index] == value for index, value in fixed):
                finding = (state, same, live, passed)
                if finding in table:
                    raise ValueError(f"Two rows of the table cover {finding}.")
                table[finding] = outcome
    return table


_OUTCOMES = _lookup(FINDINGS)


def _claim_once(
    store: store_module.Store,
    scope: str,
    key: str,
    fingerprint: str,
    method: str,
    path: str,
    lease: float,
    ttl: float,
) -> _Claimed | _Found | None:
    """Claim the key; or find what to answer instead (:data:`FINDINGS`); or None if
    it is locked."""
    for _attempt in range(3):
        now = timezone.now()
        lease_until = now + timedelta(seconds=lease)
        expires_at = now + timedelta(seconds=ttl)
        found = store.claim(
            scope=scope,
            key=key,
            fingerprint=fingerprint,
            method=method,
            path=path,
            now=now,
            lease_until=lease_until,
            expires_at=expires_at,
        )
        if isinstance(found, int):
            return _Claimed(found, 1)
        if found is None:
            continue  # the row went away between the insert and the read
        outcome = _OUTCOMES.get(
            (found.state, found.fingerprint == fingerprint, found.lease_live, found.expired),
            TAKEOVER,  # a state the app never writes: the takeover's UPDATE refuses it
        )
        if outcome == LOCKED:
            return None
        if outcome == MISMATCH:
            return _MISMATCH
        if outcome == REPLAY:
            if found.status is None:
                return None  # completed without a stored response: treated as locked
            return _Found(found.status, found.headers or [], found.body or b"")
        # TAKEOVER: released, expired, or abandoned by a worker whose lease ran out.
        if store.take_over(
            found,
            fingerprint=fingerprint,
            method=method,
            path=path,
            now=now,
            lease_until=lease_until,
            expires_at=expires_at,
        ):
            return _Claimed(found.id, found.fence + 1)
    return None
