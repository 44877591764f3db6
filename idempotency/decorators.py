from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.http import HttpRequest

from idempotency import engine
from idempotency.conf import idempotency_settings

logger = logging.getLogger("idempotency")

V = TypeVar("V", bound=Callable[..., Any])


def exempts(view: Any, handler: str | None) -> bool:
    """Whether a class-based view (the class or an instance) leaves ``handler`` alone:
    ``idempotency_exempt = True`` on the view, or ``@idempotency_exempt`` on the method
    named ``handler`` (``"post"``, or a DRF viewset action such as ``"create"``)."""
    if getattr(view, "idempotency_exempt", False):
        return True
    method = getattr(view, handler, None) if handler else None
    return bool(getattr(method, "idempotency_exempt", False))


def keep_signature(wrapper: Any, func: Any) -> None:
    """Give ``wrapper`` the signature of ``func`` with its annotations resolved.

    Frameworks that read a view's parameters from its signature (django-ninja)
    would otherwise resolve string annotations (``from __future__ import
    annotations``) in this module instead of the view's.
    """
    try:
        wrapper.__signature__ = inspect.signature(func, eval_str=True)
    except Exception:
        pass  # an annotation importable only under TYPE_CHECKING: leave it to them


def idempotency_exempt(view: V) -> V:
    """Turn protection off for one view (a function view, ``as_view()`` or a DRF action)."""
    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await view(*args, **kwargs)

        wrapper: Any = async_wrapper
    else:

        @functools.wraps(view)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        wrapper = sync_wrapper
    keep_signature(wrapper, view)
    wrapper.idempotency_exempt = True
    return wrapper  # type: ignore[no-any-return]


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
    """Protect a function view, with or without the middleware.

    Every option defaults to the ``IDEMPOTENCY`` setting of the same name.
    ``key_func(request) -> str | None`` takes the key from elsewhere than the
    header (a webhook's event id); ``fingerprint_func(request) -> str`` and
    ``scope_func(request) -> str`` replace the fingerprint and the scope.
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

    def decorate(func: V) -> V:
        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if _skip(request, options, async_view):
                    return await func(request, *args, **kwargs)
                outcome = await sync_to_async(engine.start)(request, request, options, async_view)
                if outcome is None:
                    return await func(request, *args, **kwargs)
                if not isinstance(outcome, engine.Claim):
                    return outcome
                async with outcome as claim:
                    if claim.began:
                        claim.response = await func(request, *args, **kwargs)
                return claim.response

            wrapper: Any = async_view
        else:

            @functools.wraps(func)
            def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if _skip(request, options, sync_view):
                    return func(request, *args, **kwargs)
                outcome = engine.start(request, request, options, sync_view)
                if outcome is None:
                    return func(request, *args, **kwargs)
                if not isinstance(outcome, engine.Claim):
                    return outcome
                with outcome as claim:
                    if claim.began:
                        claim.response = func(request, *args, **kwargs)
                return claim.response

            wrapper = sync_view
        keep_signature(wrapper, func)
        wrapper.idempotency_managed = True
        return wrapper  # type: ignore[no-any-return]

    if view is not None:
        return decorate(view)
    return decorate


def _skip(request: HttpRequest, options: engine.Options, view: Any) -> bool:
    if request.method not in idempotency_settings.get().methods:
        return True
    if not getattr(request, engine.HANDLED_ATTR, False):
        return False
    if options != engine.DEFAULT_OPTIONS:
        warn_ignored(view, options, request)
    return True


#: Views already warned about, so that the log says it once per view and process.
_warned: set[str] = set()


def warn_ignored(view: Any, options: engine.Options, request: HttpRequest) -> None:
    """Say that another adapter (the middleware, seeing a router's view rather than
    this one) handled the request before this view's own options could apply."""
    name = engine.view_name(view)
    if name in _warned:
        return
    _warned.add(name)
    given = ", ".join(
        field
        for field in engine.Options.__dataclass_fields__
        if getattr(options, field) is not None
    )
    logger.warning(
        "%s %s was handled by another idempotency adapter (IdempotencyMiddleware, or an "
        "outer protected view) before "
        "the options of %s (%s) could apply; they were not used. For a django-ninja "
        "operation use idempotency.ninja.idempotent, which the middleware leaves to it; "
        "otherwise add the path to IDEMPOTENCY['EXEMPT_PATHS'] so that only the view's "
        "own decorator protects it.",
        request.method,
        request.path,
        name,
        given,
    )
