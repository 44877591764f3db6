"""The DRF and plain views as each integration protects them.

Imports of the other packages stay inside the functions: each settings module
installs one integration only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchproject.catalog.views import ItemCreate, create_item

View = Callable[..., Any]


def _unprotected() -> tuple[View, View]:
    # Middleware integrations (django-idempotency-key, drf-idempotency) protect
    # both views from MIDDLEWARE; the baseline has none.
    return ItemCreate.as_view(), create_item


def _ours() -> tuple[View, View]:
    from idempotency.rest_framework import IdempotencyMixin

    class OursItemCreate(IdempotencyMixin, ItemCreate):
        pass

    return OursItemCreate.as_view(), create_item


def _drf_idempotencykey() -> tuple[View, View]:
    from drf_idempotencykey.mixins import DrfIdempotencyKeyMixin

    class MixinItemCreate(DrfIdempotencyKeyMixin, ItemCreate):
        pass

    return MixinItemCreate.as_view(), create_item


def _djangorestframework_idempotency_key() -> tuple[View, View]:
    from rest_framework_idempotency_key.decorators import simple_idempotency_key_method

    class DecoratedItemCreate(ItemCreate):
        @simple_idempotency_key_method
        def create(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            return super().create(request, *args, **kwargs)

    return DecoratedItemCreate.as_view(), create_item


INTEGRATIONS: dict[str, Callable[[], tuple[View, View]]] = {
    "baseline": _unprotected,
    "ours": _ours,
    "django-idempotency-key": _unprotected,
    "drf-idempotency": _unprotected,
    "drf-idempotencykey": _drf_idempotencykey,
    "djangorestframework-idempotency-key": _djangorestframework_idempotency_key,
}


def views_for(integration: str) -> tuple[View, View]:
    """(DRF create view, plain view) for ``integration``."""
    return INTEGRATIONS[integration]()
