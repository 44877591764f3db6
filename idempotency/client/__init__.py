"""The client half: call other APIs so that a retry never runs an operation twice.

::

    from idempotency.client import Provider, call
    from idempotency.client.requests import RequestsTransport

    payments = Provider(RequestsTransport(), credentials=lambda: {"Authorization": ...})
    outcome = call(payments, "charge", f"pool-tx:{intent.pk}", "POST", url, json=payload)

Each logical operation is a row (:class:`~idempotency.models.OutgoingOperation`),
committed with its key before the first request; every later call for the same name
and reference sends the same key. See the "Calling other APIs safely" page of the
documentation. Neither ``requests`` nor ``httpx`` is imported here.
"""

from idempotency.client.operations import (
    AsyncTransport,
    InTransaction,
    OperationBusy,
    OperationMismatch,
    Outcome,
    OutcomeUnknown,
    OutgoingError,
    OutgoingRequest,
    Provider,
    ProviderMismatch,
    ReconcileRequired,
    Transport,
    TransportError,
    acall,
    call,
    find_operation,
    register,
    registered,
    unregister,
)
from idempotency.client.policy import Answer, RetryPolicy, Verdict, classify, parse_retry_after
from idempotency.client.resume import ResumeReport, resume, resume_pending, unfinished

__all__ = [
    "Answer",
    "AsyncTransport",
    "InTransaction",
    "OperationBusy",
    "OperationMismatch",
    "Outcome",
    "OutcomeUnknown",
    "OutgoingError",
    "OutgoingRequest",
    "Provider",
    "ProviderMismatch",
    "ReconcileRequired",
    "ResumeReport",
    "RetryPolicy",
    "Transport",
    "TransportError",
    "Verdict",
    "acall",
    "call",
    "classify",
    "find_operation",
    "parse_retry_after",
    "register",
    "registered",
    "resume",
    "resume_pending",
    "unfinished",
    "unregister",
]
