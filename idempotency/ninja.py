"""django-ninja glue: :func:`idempotent` for ninja operations, scoped by ``request.auth``.

Put it below the route decorator::

    @api.post("/payments", auth=ApiKey())
    @idempotent(required=True)
    def pay(request, payload: PaymentIn): ...

The key is claimed once ninja has authenticated the caller, checked its throttles
and parsed the input, so the scope is the principal ninja's auth returned
(``request.auth``), and a request that fails those checks is never claimed. The
response is stored once ninja has turned the operation's result into a response.
``IdempotencyMiddleware`` leaves such operations to this decorator.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from ninja.decorators import decorate_view

from idempotency import engine
from idempotency.conf import idempotency_settings
from idempotency.decorators import _skip, keep_signature

__all__ = ["auth_scope", "idempotent"]

V = TypeVar("V", bound=Callable[..., Any])

#: The claim an operation took, from the operation's body to the end of ninja's run.
_CLAIM_ATTR = "_idempotency_ninja_claim"
#: Set by the wrapper of ninja's run around the operation it is about to call: only
#: then does the operation claim, since only then is there an end to finish it.
_RUN_ATTR = "_idempotency_ninja_run"


def auth_scope(request: HttpRequest) -> str:
    """The scope of the principal ninja's authentication returned (``request.auth``).

    A user is ``user:<pk>``, as under the other adapters; another model instance is
    ``<app_label.model>:<pk>``; a string or an integer (a token, an API key, a
    tenant id) is hashed. Without ``request.auth`` (an operation with no auth), the
    default scope applies: the session's user, else the credentials the request
    carries, else anonymous.
    """
    auth = getattr(request, "auth", None)
    if auth is None or isinstance(auth, bool):
        # No principal to name (an auth callback that returns True): the request's
        # own credentials, as without ninja.
        return engine.default_scope(request, request)
    if isinstance(auth, AbstractBaseUser):
        return f"user:{auth.pk}"
    if isinstance(auth, Model):
        return f"{auth._meta.label_lower}:{auth.pk}"
    if isinstance(auth, str | bytes | int):
        text = auth.decode("utf-8", "surrogateescape") if isinstance(auth, bytes) else str(auth)
        return f"auth:{type(auth).__name__}:" + engine._hash(text)
    # Another object (a dict, AnonymousUser): it names no principal the app can
    # compare, so the request's own credentials scope it, as without ninja. Pass
    # scope_func to scope by it.
    return engine.default_scope(request, request)


def _finisher(run: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ninja's ``Operation.run``: exit the claim its operation entered, with the
    final response (stored, or the key freed)."""
    if iscoroutinefunction(run):

        @functools.wraps(run)
        async def async_run(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            request.__dict__[_RUN_ATTR] = True
            try:
                response = await run(request, *args, **kwargs)
            except BaseException as exc:
                claim = request.__dict__.pop(_CLAIM_ATTR, None)
                if claim is None or not await claim.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
                return claim.response
            claim = request.__dict__.pop(_CLAIM_ATTR, None)
            if claim is None:
                return response
            claim.response = response
            await claim.__aexit__(None, None, None)
            return claim.response

        return async_run

    @functools.wraps(run)
    def sync_run(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        request.__dict__[_RUN_ATTR] = True
        try:
            response = run(request, *args, **kwargs)
        except BaseException as exc:
            claim = request.__dict__.pop(_CLAIM_ATTR, None)
            if claim is None or not claim.__exit__(type(exc), exc, exc.__traceback__):
                raise
            return claim.response
        claim = request.__dict__.pop(_CLAIM_ATTR, None)
        if claim is None:
            return response
        claim.response = response
        claim.__exit__(None, None, None)
        return claim.response

    return sync_run


@overload
def idempotent(view: V) -> V: ...
@overload
def idempotent(
    view: None = None,
    *,
    required: bool | None = None,
    ttl: float | timedelta | None = None,
    atomic: bool | None = None,
    lock_timeout: float | timedelta | None = None,
    concurrent_wait: float | timedelta | None = None,
    key_func: Callable[[Any], str | int | None] | None = None,
    fingerprint_func: Callable[[Any], str] | None = None,
    scope_func: Callable[[Any], str] | None = None,
) -> Callable[[V], V]: ...
def idempotent(
    view: V | None = None,
    *,
    required: bool | None = None,
    ttl: float | timedelta | None = None,
    atomic: bool | None = None,
    lock_timeout: float | timedelta | None = None,
    concurrent_wait: float | timedelta | None = None,
    key_func: Callable[[Any], str | int | None] | None = None,
    fingerprint_func: Callable[[Any], str] | None = None,
    scope_func: Callable[[Any], str] | None = None,
) -> V | Callable[[V], V]:
    """Protect a django-ninja operation. Place it below ``@api.post(...)``.

    The options are those of :func:`idempotency.decorators.idempotent`; the scope
    defaults to :func:`auth_scope` (``request.auth``), and ``SCOPE_FUNCTION`` or
    ``scope_func`` replace it.
    """
    options = engine.Options(
        required=required,
        ttl=ttl,
        atomic=atomic,
        lock_timeout=lock_timeout,
        concurrent_wait=concurrent_wait,
        key_func=key_func,
        fingerprint_func=fingerprint_func,
        scope_func=scope_func,
    )
    claim_options = options if scope_func is not None else _with_auth_scope(options)

    def decorate(func: V) -> V:
        if hasattr(func, "_ninja_operation"):
            raise ImproperlyConfigured(
                f"@idempotent is above the route decorator of {engine.view_name(func)}: "
                "place it below @api.post(...) (or @router.post), next to the function."
            )

        def claim(request: HttpRequest, wrapper: Any) -> Any:
            """Claim the key and enter the claim: the operation then runs inside it,
            until the end of ninja's run exits it (or the operation raises)."""
            if not request.__dict__.pop(_RUN_ATTR, False):
                # Called as a plain function (from another operation, a test): there is
                # no end of ninja's run to store a response at, so nothing is claimed.
                return None
            outcome = engine.start(request, request, claim_options, wrapper)
            if not isinstance(outcome, engine.Claim):
                return outcome
            outcome.__enter__()
            if not outcome.began:
                return outcome.response  # the database failed to begin: 503
            request.__dict__[_CLAIM_ATTR] = outcome
            return outcome

        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_operation(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if _skip(request, options, async_operation):
                    return await func(request, *args, **kwargs)
                # One trip to the sync thread; asgiref copies the key made current there.
                outcome = await sync_to_async(claim)(request, async_operation)
                if isinstance(outcome, HttpResponseBase):
                    return outcome  # a replay or an error: ninja sends it as it is
                if outcome is None:
                    return await func(request, *args, **kwargs)
                try:
                    return await func(request, *args, **kwargs)
                except BaseException as exc:
                    request.__dict__.pop(_CLAIM_ATTR, None)
                    if not await outcome.__aexit__(type(exc), exc, exc.__traceback__):
                        raise
                    return outcome.response  # the database went away under it: 503

            wrapper: Any = async_operation
        else:

            @functools.wraps(func)
            def sync_operation(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if _skip(request, options, sync_operation):
                    return func(request, *args, **kwargs)
                outcome = claim(request, sync_operation)
                if isinstance(outcome, HttpResponseBase):
                    return outcome
                if outcome is None:
                    return func(request, *args, **kwargs)
                try:
                    return func(request, *args, **kwargs)
                except BaseException as exc:
                    # ninja turns the exception into its error response; that is not
                    # stored, and the view's writes roll back, as under @idempotent.
                    request.__dict__.pop(_CLAIM_ATTR, None)
                    if not outcome.__exit__(type(exc), exc, exc.__traceback__):
                        raise
                    return outcome.response  # the database went away under it: 503

            wrapper = sync_operation
        wrapper.idempotency_managed = True
        keep_signature(wrapper, func)
        return decorate_view(_finisher)(wrapper)  # type: ignore[no-any-return]

    if view is not None:
        return decorate(view)
    return decorate


def _scope(request: HttpRequest) -> str:
    """``SCOPE_FUNCTION`` when it is set, else :func:`auth_scope`."""
    custom = idempotency_settings.get().scope_function
    return str(custom(request)) if custom is not None else auth_scope(request)


def _with_auth_scope(options: engine.Options) -> engine.Options:
    return dataclasses.replace(options, scope_func=_scope)
