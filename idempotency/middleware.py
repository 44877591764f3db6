from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from idempotency import engine
from idempotency.conf import idempotency_settings
from idempotency.decorators import exempts
from idempotency.fingerprints import keep_body

_CLAIM_ATTR = "_idempotency_claim"


def _exempt_handler(view_func: Any, view_class: type, method: str) -> bool:
    """Whether the handler this method reaches is exempt: a DRF viewset's action
    (``view_func.actions``), else the method's own handler."""
    actions = getattr(view_func, "actions", None)
    return exempts(view_class, actions.get(method.lower()) if actions else method.lower())


def _routed_view(view_func: Any, request: HttpRequest) -> Any:
    """The function a router's view dispatches this request to, where it can be told:
    django-ninja's path views hold their operations, one per method set."""
    for cell in getattr(view_func, "__closure__", None) or ():
        try:
            target = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        find = getattr(target, "_find_operation", None)
        if find is None or not type(target).__module__.startswith("ninja."):
            continue
        try:
            operation = find(request)
        except Exception:
            return None
        return getattr(operation, "view_func", None)
    return None


class IdempotencyMiddleware:
    """Protects every unsafe request that carries the key header.

    Place it after ``AuthenticationMiddleware`` and every middleware that may refuse
    a request, so that the key is claimed only for a request that reaches its view.
    Views with the DRF mixin or the ``@idempotent`` decorator are left to them, and
    ``@idempotency_exempt`` views are left alone.
    """

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase]
        | Callable[[HttpRequest], Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        self._buffer_body(request)
        try:
            response: HttpResponseBase = self.get_response(request)  # type: ignore[assignment]
        except BaseException as exc:
            # Past Django's own handling (DEBUG_PROPAGATE_EXCEPTIONS, SystemExit from a
            # worker timeout, ...): free the key now, and leave nothing current on the
            # thread, which serves the next request.
            claim: engine.Claim | None = request.__dict__.pop(_CLAIM_ATTR, None)
            if claim is not None:
                claim.__exit__(type(exc), exc, exc.__traceback__)
            raise
        claim = request.__dict__.pop(_CLAIM_ATTR, None)
        if claim is None:
            return response
        claim.response = response
        claim.__exit__(None, None, None)
        return claim.response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        self._buffer_body(request)
        try:
            response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
        except BaseException as exc:
            # A client that went away cancels the task (CancelledError).
            claim: engine.Claim | None = request.__dict__.pop(_CLAIM_ATTR, None)
            if claim is not None:
                await claim.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        claim = request.__dict__.pop(_CLAIM_ATTR, None)
        if claim is None:
            return response
        # In the sync thread of process_view, so the same connection and transaction.
        claim.response = response
        await claim.__aexit__(None, None, None)
        return claim.response  # type: ignore[no-any-return]

    @staticmethod
    def _buffer_body(request: HttpRequest) -> None:
        # Read the body before any later middleware parses it as a stream (a CSRF check
        # reading request.POST), so it is still there to fingerprint.
        settings = idempotency_settings.get()
        if request.method in settings.methods and (
            settings.header_meta in request.META or settings.required
        ):
            keep_body(request, settings.fingerprint_meta)

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        # Django turns the exception into a response (404, 403, 400, 500) before
        # __call__ sees it; a view that raised must not have that response stored, and its
        # writes roll back (ATOMIC), as under @idempotent. A database that went away
        # under the view is a 503, not a 500.
        claim: engine.Claim | None = request.__dict__.pop(_CLAIM_ATTR, None)
        if claim is None or not claim.__exit__(type(exception), exception, exception.__traceback__):
            return None
        return claim.response  # type: ignore[no-any-return]

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        # Under ASGI this runs in the request's sync thread, like the ORM calls of the view.
        settings = idempotency_settings.get()
        if request.method not in settings.methods:
            return None
        if getattr(request, engine.HANDLED_ATTR, False):
            return None
        if getattr(view_func, "idempotency_exempt", False) or getattr(
            view_func, "idempotency_managed", False
        ):
            return None
        view_class = getattr(view_func, "cls", None) or getattr(view_func, "view_class", None)
        if view_class is not None and (
            getattr(view_class, "idempotency_managed", False)
            or _exempt_handler(view_func, view_class, request.method or "")
        ):
            return None
        routed = _routed_view(view_func, request)
        if routed is not None and (
            getattr(routed, "idempotency_exempt", False)
            or getattr(routed, "idempotency_managed", False)
        ):
            return None
        if settings.exempt_paths and any(
            p.search(request.path_info) for p in settings.exempt_paths
        ):
            return None
        outcome = engine.start(request, request, view=view_class or view_func)
        if outcome is None or isinstance(outcome, HttpResponseBase):
            return outcome
        # The view runs inside the claim, from here to the hook where it ends: __call__,
        # process_exception, or a BaseException past Django's handling. Under ASGI the
        # key made current here reaches the view: asgiref copies the context back.
        claim = outcome.__enter__()
        if not claim.began:
            return claim.response  # type: ignore[no-any-return]
        request.__dict__[_CLAIM_ATTR] = claim
        return None
