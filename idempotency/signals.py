"""Signals sent as keys are stored, replayed, refused and released.

Every signal is sent with ``sender`` set to the protected view when the app knows
it, else ``None``: under the middleware, the view as the URLconf holds it (its class,
for a class-based view); under ``@idempotent``, the function the decorator returned;
under the DRF mixin, the view class. The keyword arguments are:

``request``
    The Django ``HttpRequest``.
``key``
    The idempotency key, as the client sent it (or as ``key_func`` read it).
``scope``
    The namespace of the key (``"user:42"``, ``"anonymous"``, ...).

and, per signal:

:data:`response_stored`
    ``status`` (int) and ``duration`` (seconds from the claim to the commit of the
    stored response, float). Sent once the response is durable: after the commit
    (after the outer transaction's, under ``ATOMIC_REQUESTS``; never if it rolls back).
    With ``ATOMIC`` off, a response over ``MAX_RESPONSE_SIZE`` stores a stand-in
    (``idempotency_response_not_kept``), and ``status`` is its 500.
:data:`response_replayed`
    ``status``: the stored status sent again. The view did not run.
:data:`conflict`
    ``reason``: ``"mismatch"`` (the key was used for a different request) or
    ``"locked"`` (a request with the key is still running) and ``status``, the
    status of the problem answered (409 or 422).
:data:`key_released`
    ``reason``: why the key was freed with no response stored, so that a retry of
    the same request runs the view again (another request under the key is still a
    mismatch until its ``TTL``): ``"exception"`` (the view raised), ``"not_stored"`` (a status
    in ``NON_STORABLE_STATUSES``), ``"streaming"`` (a streaming response),
    ``"rejected"`` (the caller was refused inside a DRF handler: authentication,
    DRF's or Django's ``PermissionDenied``, throttling), ``"store_failed"`` (the response could not be
    stored; with ``ATOMIC`` the view's writes were rolled back and the client got a
    503), ``"too_large"`` (with ``ATOMIC``, a response over ``MAX_RESPONSE_SIZE``: the
    view's writes were rolled back and the client got a 500).
:data:`store_unavailable`
    ``error``: the database exception. The client got a 503
    ``idempotency_store_unavailable``; ``scope`` may be ``None`` if it was not
    known yet.

Receivers run in the request's thread; one that raises is logged under the
``idempotency`` logger and does not change the response. The same events are
logged at ``INFO`` under that logger, with the fields in ``record.idempotency``.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = [
    "conflict",
    "key_released",
    "response_replayed",
    "response_stored",
    "store_unavailable",
]

#: A response was stored under a key: the first complete run of the operation.
response_stored = Signal()

#: A stored response was sent again, without running the view.
response_replayed = Signal()

#: The key was refused: used for another request, or still running.
conflict = Signal()

#: The key was freed with no response stored; a retry of the same request runs the view.
key_released = Signal()

#: The store could not be reached; the request was answered 503.
store_unavailable = Signal()
