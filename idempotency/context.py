"""The key of the request being run, and stable keys derived from it.

A view that calls another service (a payment provider, a ledger) should send that
service an idempotency key of its own, the same one on every retry of the client's
request. Otherwise a retry after a lost response charges twice downstream even
though this app runs the view only once per completed key: a view cut off by a
crash, or one whose response was not stored, runs again.

::

    from idempotency import derive

    def create_payment(request):
        charge = stripe.PaymentIntent.create(..., idempotency_key=derive("charge"))

Only the standard library is imported here, so ``import idempotency`` stays cheap
and safe before Django's app registry is ready.
"""

from __future__ import annotations

import hashlib
import uuid
from contextvars import ContextVar
from typing import NamedTuple

__all__ = ["CurrentKey", "NoIdempotencyKey", "current_key", "derive"]

#: Namespace of the UUIDv5 values :func:`derive` returns. Changing it changes every
#: derived key, so it is fixed for the life of the project.
DERIVE_NAMESPACE = uuid.UUID("6f0f3e52-3c5e-4d53-9a54-8d1f2b7c9e41")


class CurrentKey(NamedTuple):
    """The key a view runs under: ``key`` as the client sent it, its ``scope`` and
    the request's ``fingerprint``."""

    key: str
    scope: str
    fingerprint: str


class NoIdempotencyKey(LookupError):
    """:func:`derive` was called outside a view running under an idempotency key."""


_current: ContextVar[CurrentKey | None] = ContextVar("idempotency_current_key", default=None)


def current_key() -> CurrentKey | None:
    """The key of the view running now, or ``None``.

    ``None`` outside a view, in a view reached without a key (none sent and none
    required), and in a view the app does not protect. Set for sync and async views,
    under the middleware, the DRF mixin and ``@idempotent``.
    """
    return _current.get()


def derive(name: str) -> str:
    """A key for an outgoing call named ``name``, stable across the client's retries.

    The same client key, scope and request give the same value on every run of the
    view, including a run that takes over from a worker that died: exactly what a
    downstream service needs to recognise the retry. Different names give different
    keys (``derive("charge")``, ``derive("refund")``), and so do different users, and
    different requests that reuse a key once it expired.

    Returns a UUID string (36 characters), accepted by providers that require UUIDs
    and short enough for every common limit. Raises :class:`NoIdempotencyKey` when no
    key is current.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("derive() needs a non-empty name for the outgoing call.")
    current = _current.get()
    if current is None:
        raise NoIdempotencyKey(
            "No idempotency key is current: derive() works inside a view that runs "
            "under a key (sent by the client, or required)."
        )
    material = "\x1f".join((current.scope, current.key, current.fingerprint, name))
    # UUIDv5 (RFC 9562), spelled out so that any str hashes, lone surrogates included.
    digest = hashlib.sha1(
        DERIVE_NAMESPACE.bytes + material.encode("utf-8", "surrogatepass"),
        usedforsecurity=False,
    ).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def _activate(value: CurrentKey | None) -> CurrentKey | None:
    """Make ``value`` current and return what was. Set, not reset with a token: under
    ASGI the middleware activates in one context and deactivates in another."""
    previous = _current.get()
    _current.set(value)
    return previous
