"""Django REST framework glue: :class:`IdempotencyMixin` for views and viewsets.

The claim is taken in ``initial()``, after DRF's authentication, permission and
throttling checks, so the scope is the DRF principal (token users included) and
a request that fails those checks is never stored or replayed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import transaction
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from rest_framework import exceptions
from rest_framework.request import Request

from idempotency import engine
from idempotency.conf import idempotency_settings
from idempotency.decorators import exempts, warn_ignored
from idempotency.fingerprints import keep_body

__all__ = ["IdempotencyMixin"]


#: Raised by object-level permission checks or throttles inside a handler: answers
#: about who is asking, not about the operation, so they are never stored.
_ACCESS_ERRORS = (
    DjangoPermissionDenied,
    exceptions.NotAuthenticated,
    exceptions.AuthenticationFailed,
    exceptions.PermissionDenied,
    exceptions.Throttled,
)


class _Answer(Exception):
    """Carries a replay or an error from ``initial()`` past the handler."""

    def __init__(self, response: HttpResponseBase) -> None:
        super().__init__(response.status_code)
        self.response = response


class IdempotencyMixin:
    """Put before the DRF base class: ``class V(IdempotencyMixin, viewsets.ModelViewSet)``.

    Attributes (``None`` means "use the ``IDEMPOTENCY`` setting"):
    ``idempotency_required``, ``idempotency_ttl``, ``idempotency_atomic``,
    ``idempotency_lock_timeout``, ``idempotency_concurrent_wait``,
    ``idempotency_key_func``, ``idempotency_fingerprint_func``,
    ``idempotency_scope_func``; ``idempotency_exempt = True`` turns it off.
    Override :meth:`get_idempotency_key`, :meth:`get_idempotency_fingerprint` or
    :meth:`get_idempotency_scope` for finer control.
    """

    #: Tells the middleware that this view handles its own keys.
    idempotency_managed: ClassVar[bool] = True

    idempotency_exempt: bool = False
    idempotency_required: bool | None = None
    idempotency_ttl: float | timedelta | None = None
    idempotency_atomic: bool | None = None
    idempotency_lock_timeout: float | timedelta | None = None
    idempotency_concurrent_wait: float | timedelta | None = None
    idempotency_key_func: Any = None
    idempotency_fingerprint_func: Any = None
    idempotency_scope_func: Any = None

    #: The claim the view runs inside, from ``initial()`` to ``finalize_response()``.
    _idempotency_claim: engine.Claim | None = None

    # -- hooks --------------------------------------------------------------------------

    def get_idempotency_key(self, request: Request) -> str | None:
        """The key for this request, or None. Default: ``idempotency_key_func`` if set,
        else the ``Idempotency-Key`` header. Raise ``idempotency.keys.InvalidKey`` to
        reject the request with 400."""
        raise NotImplementedError  # never called unless overridden

    def get_idempotency_fingerprint(self, request: Request) -> str:
        """A string that differs when the request means something else. Default: a
        SHA-256 over method, full path, ``FINGERPRINT_HEADERS`` and body bytes."""
        raise NotImplementedError  # never called unless overridden

    def get_idempotency_scope(self, request: Request) -> str:
        """The namespace of this request's keys. Default: the DRF user's pk, else a
        hash of ``Authorization``, else anonymous (or ``SCOPE_FUNCTION``)."""
        raise NotImplementedError  # never called unless overridden

    def get_idempotency_options(self) -> engine.Options:
        cls = type(self)
        base = IdempotencyMixin

        def hook(name: str, attribute: str) -> Any:
            if getattr(cls, name) is not getattr(base, name):
                return getattr(self, name)
            return getattr(cls, attribute)  # a function on the class, not bound to self

        return engine.Options(
            required=self.idempotency_required,
            ttl=self.idempotency_ttl,
            atomic=self.idempotency_atomic,
            lock_timeout=self.idempotency_lock_timeout,
            concurrent_wait=self.idempotency_concurrent_wait,
            key_func=hook("get_idempotency_key", "idempotency_key_func"),
            fingerprint_func=hook("get_idempotency_fingerprint", "idempotency_fingerprint_func"),
            scope_func=hook("get_idempotency_scope", "idempotency_scope_func"),
        )

    # -- DRF's dispatch ---------------------------------------------------------------

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]
        except BaseException as exc:
            # DRF's dispatch only handles Exception: free the key, and leave nothing
            # current on the thread, which serves the next request.
            claim, self._idempotency_claim = self._idempotency_claim, None
            if claim is not None:
                claim.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        settings = idempotency_settings.get()
        if request.method in settings.methods:
            # Keep the body fingerprintable after DRF's parsers (or its CSRF check)
            # read it. Only a request that may be keyed streams an upload.
            keyed = settings.header_meta in request.META or bool(
                settings.required or self.idempotency_required or self.idempotency_key_func
            )
            keep_body(request, settings.fingerprint_meta, stream=keyed)
        return super().initialize_request(request, *args, **kwargs)  # type: ignore[misc, no-any-return]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        http_request: HttpRequest = request._request
        if request.method not in idempotency_settings.get().methods:
            return
        if getattr(http_request, engine.HANDLED_ATTR, False):
            options = self.get_idempotency_options()
            if options != engine.DEFAULT_OPTIONS:
                warn_ignored(type(self), options, http_request)
            return
        # DRF's viewsets bind each action to the method's name on the instance.
        handler = (request.method or "").lower()
        if exempts(self, handler):
            return
        if handler not in self.http_method_names or getattr(self, handler, None) is None:  # type: ignore[attr-defined]
            return  # DRF answers 405 Method Not Allowed; there is no operation to protect
        outcome = engine.start(
            request, http_request, self.get_idempotency_options(), view=type(self)
        )
        if outcome is None:
            return
        if not isinstance(outcome, engine.Claim):
            raise _Answer(outcome)
        # The handler runs inside the claim; finalize_response() exits it (or
        # handle_exception(), or dispatch() for a BaseException).
        claim = outcome.__enter__()
        if not claim.began:
            raise _Answer(claim.response)
        self._idempotency_claim = claim

    # Typed Any: DRF's stubs say Response, and a replay is a plain HttpResponse.
    def handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, _Answer):
            return exc.response
        claim = self._idempotency_claim
        if claim is not None and isinstance(exc, _ACCESS_ERRORS):
            claim.rejected = True
        try:
            response = super().handle_exception(exc)  # type: ignore[misc]
        except BaseException as error:
            self._idempotency_claim = None
            if claim is None or not claim.__exit__(type(error), error, error.__traceback__):
                raise
            return claim.response
        if claim is not None and claim.atomic:
            # The view raised (e.g. a ValidationError after a write): undo its writes and
            # store the error response on its own. DRF's handler only marks a rollback
            # under ATOMIC_REQUESTS.
            transaction.set_rollback(True, using=claim.settings.database)
        return response

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        claim, self._idempotency_claim = self._idempotency_claim, None
        try:
            response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        except BaseException as error:
            if claim is not None:
                claim.__exit__(type(error), error, error.__traceback__)
            raise
        if claim is None:
            return response
        claim.response = response
        claim.__exit__(None, None, None)
        return claim.response
