"""Outgoing operations: one row per logical call, committed before the first byte is sent.

Every database write here is one short transaction of its own on the store's
database (``IDEMPOTENCY["DATABASE"]``); nothing is sent while a transaction of this
module is open.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json as jsonlib
import logging
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from idempotency.client.policy import Answer, RetryPolicy, Verdict, classify
from idempotency.conf import idempotency_settings
from idempotency.context import current_key, derive

if TYPE_CHECKING:
    from idempotency.models import OutgoingOperation

logger = logging.getLogger("idempotency.client")

#: Headers never stored with an operation (in lower case): credentials belong in
#: :attr:`Provider.credentials`, which is called again on every send.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
#: The response headers kept on the operation (all others are dropped).
KEPT_RESPONSE_HEADERS = (
    "content-type",
    "location",
    "retry-after",
    "idempotent-replayed",
    "request-id",
    "x-request-id",
)
#: The first bytes of a response body kept on the operation.
RESPONSE_BODY_LIMIT = 4096
#: Longest error text kept on an attempt.
ERROR_LIMIT = 255
#: Statuses that say the provider did not run the request: retried even where the
#: provider has no idempotency keys.
NOT_RUN_STATUSES = frozenset({408, 425, 429})

OnCompleted = Literal["return", "send"]


class OutgoingError(Exception):
    """Base class of the errors of :mod:`idempotency.client`."""


class OperationMismatch(OutgoingError, ValueError):
    """The operation exists with another request (method, URL or body); nothing was sent.

    The client-side mismatch: a programming error, never retried.
    """


class InTransaction(OutgoingError, RuntimeError):
    """Called inside a transaction on the store's database: the operation's row would
    not be committed before the request goes out. Nothing was sent."""


class OperationBusy(OutgoingError):
    """Another call holds the operation's lease right now (it is being sent)."""


class ReconcileRequired(OutgoingError):
    """The provider has no idempotency keys and an earlier attempt may have reached it:
    only a ``reconcile`` function can say whether sending again is safe."""


class TransportError(OutgoingError):
    """No answer: a connection error or a timeout, raised by a transport.

    ``sent`` is False only when the request certainly never reached the provider
    (the connection was refused or never opened).
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class OutcomeUnknown(OutgoingError):
    """The call gave up on transient errors: the operation is ``unknown``.

    It may have run at the provider. Call again, or let
    ``resume_outgoing_operations`` send it again, with the same key.
    ``answer`` is the last answer (None after a connection error).
    """

    def __init__(self, message: str, operation: OutgoingOperation, answer: Answer | None) -> None:
        super().__init__(message)
        self.operation = operation
        self.answer = answer


class ProviderMismatch(OutgoingError):
    """The provider answered that the key was used for a different request.

    The operation is ``failed`` and was not retried; ``outcome`` holds the answer.
    """

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


# ------------------------------------------------------------------ requests


def fingerprint(method: str, url: str, body: bytes) -> str:
    """SHA-256 over the method, the URL and the body bytes."""
    digest = hashlib.sha256()
    digest.update(method.upper().encode("ascii", "replace") + b"\n")
    digest.update(url.encode("utf-8", "surrogatepass") + b"\n")
    digest.update(body)
    return digest.hexdigest()


def canonical_json(value: Any) -> bytes:
    """The JSON a ``json=`` argument is sent as: sorted keys, no spaces, UTF-8."""
    return jsonlib.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_MISSING: Any = object()


@dataclass(frozen=True)
class OutgoingRequest:
    """A request as it goes out: method, URL, headers and body bytes."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.method, self.url, self.body)


def build_request(
    method: str,
    url: str,
    *,
    json: Any = _MISSING,
    data: bytes | str | Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> OutgoingRequest:
    """The request that ``json=`` (canonical JSON) or ``data=`` (bytes, text or a form)
    makes, with ``Content-Type`` set where the caller did not set it."""
    pairs = [(str(name), str(value)) for name, value in (headers or {}).items()]
    named = {name.lower() for name, _ in pairs}
    if json is not _MISSING and data is not None:
        raise ValueError("Pass json= or data=, not both.")
    if json is not _MISSING:
        body = canonical_json(json)
        content_type = "application/json"
    elif isinstance(data, Mapping):
        body = urlencode(list(data.items()), doseq=True).encode()
        content_type = "application/x-www-form-urlencoded"
    elif isinstance(data, str):
        body, content_type = data.encode(), ""
    else:
        body, content_type = data or b"", ""
    if content_type and "content-type" not in named:
        pairs.append(("Content-Type", content_type))
    if not method or not url:
        raise ValueError("An outgoing request needs a method and a URL.")
    return OutgoingRequest(method.upper(), url, tuple(pairs), bytes(body))


# ----------------------------------------------------------------- providers


class Transport(Protocol):
    """Sends one request; raises :class:`TransportError` when no answer came."""

    def send(self, request: OutgoingRequest, *, timeout: float) -> tuple[Answer, Any]:
        """The answer, and the HTTP client's own response object."""


class AsyncTransport(Protocol):
    async def asend(self, request: OutgoingRequest, *, timeout: float) -> tuple[Answer, Any]:
        """The answer, and the HTTP client's own response object."""


Reconcile = Callable[["OutgoingOperation"], Any]


@dataclass(frozen=True)
class Provider:
    """An API called through :func:`call`: how to send to it and how to read its answers.

    - ``transport``: :class:`~idempotency.client.requests.RequestsTransport`,
      :class:`~idempotency.client.httpx.HttpxTransport` or
      :class:`~idempotency.client.httpx.AsyncHttpxTransport`.
    - ``header``: the header the key goes in (``"Idempotency-Key"``,
      ``"X-Idempotency-Key"``...); None for a provider without idempotency support.
    - ``classify``: ``f(answer) -> Verdict | None``, asked before :func:`classify`
      (None falls through to it): a provider's own error codes.
    - ``credentials``: ``f() -> headers``, added to every send and never stored, so
      that a resumed operation authenticates with the current secret.
    - ``reconcile``: ``f(operation) -> Answer | None`` (or a coroutine function), asked
      before any retry that might run twice at a provider without keys: an answer
      when the provider has the operation, None when it certainly has not. Raising
      means "cannot tell": the operation stays ``unknown``.
    - ``policy``: a :class:`RetryPolicy`; ``timeout``: seconds per attempt.
    - ``lease_margin``: seconds a call's lease outlasts its budget (``timeout`` plus
      ``policy.max_seconds``), renewed at every attempt: room for slow database
      writes and for clocks that differ between hosts.
    - ``secret_headers``: more header names never to store (``Authorization``,
      ``Proxy-Authorization``, ``Cookie`` and ``X-API-Key`` never are).
    """

    transport: Any
    header: str | None = "Idempotency-Key"
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    classify: Callable[[Answer], Verdict | None] | None = None
    credentials: Callable[[], Mapping[str, str]] | None = None
    reconcile: Reconcile | None = None
    timeout: float = 10.0
    lease_margin: float = 30.0
    secret_headers: Iterable[str] = ()

    @property
    def supports_keys(self) -> bool:
        return bool(self.header)

    def judge(self, answer: Answer) -> Verdict:
        """The caller's ``classify`` first, then the default :func:`classify`."""
        if self.classify is not None:
            verdict = self.classify(answer)
            if verdict is not None:
                return Verdict(verdict)
        return classify(answer)

    def secret(self, name: str) -> bool:
        lowered = name.lower()
        return lowered in SECRET_HEADERS or lowered in {h.lower() for h in self.secret_headers}


@dataclass
class Outcome:
    """How an operation ended: its answer, and the operation's row.

    ``recorded`` is True when the answer comes from the row, without a request: then
    ``headers`` and ``body`` are the bounded summary kept there, and ``response`` is
    None. Otherwise ``response`` is the HTTP client's own response object.
    """

    operation: OutgoingOperation
    answer: Answer
    recorded: bool = False
    response: Any = None

    @property
    def status(self) -> int:
        return self.answer.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self.answer.headers

    @property
    def body(self) -> bytes:
        return self.answer.body

    def json(self) -> Any:
        return self.answer.json()

    @property
    def succeeded(self) -> bool:
        return self.operation.state == "succeeded"

    @property
    def replayed(self) -> bool:
        return self.answer.replayed

    @classmethod
    def from_record(cls, operation: OutgoingOperation) -> Outcome:
        headers = [(str(pair[0]), str(pair[1])) for pair in operation.response_headers]
        answer = Answer(operation.response_status or 0, headers, bytes(operation.response_body))
        return cls(operation=operation, answer=answer, recorded=True)


_registry: dict[str, Provider] = {}


def register(name: str, provider: Provider) -> None:
    """Make ``provider`` the one that resumes operations named ``name``.

    Call it where the app starts (``AppConfig.ready()``);
    :func:`resume_pending` and ``resume_outgoing_operations`` skip operations
    whose name has no provider.
    """
    _registry[name] = provider


def unregister(name: str) -> None:
    _registry.pop(name, None)


def registered() -> dict[str, Provider]:
    """The providers :func:`register` was given, by operation name."""
    return dict(_registry)


# ----------------------------------------------------------------- the store


def _alias() -> str:
    return idempotency_settings.get().database


def _model() -> type[OutgoingOperation]:
    from idempotency.models import OutgoingOperation

    return OutgoingOperation


def _stored_headers(provider: Provider, request: OutgoingRequest) -> list[list[str]]:
    header = (provider.header or "").lower()
    return [
        [name, value]
        for name, value in request.headers
        if not provider.secret(name) and name.lower() != header
    ]


def open_operation(
    provider: Provider,
    name: str,
    reference: str,
    request: OutgoingRequest,
    *,
    key: str | None = None,
    allow_in_transaction: bool = False,
) -> OutgoingOperation:
    """The operation ``(name, reference)``: created and committed, or the existing one.

    Raises :class:`OperationMismatch` when it exists for a different request, and
    :class:`InTransaction` inside a transaction on the store's database, except in a
    view running under a key with a provider that takes keys (the key is then derived,
    so the retry of a rolled-back view sends the same one) or with
    ``allow_in_transaction=True``.
    """
    if not name or not reference:
        raise ValueError("An outgoing operation needs a name and a reference.")
    alias = _alias()
    in_view = current_key() is not None
    derived = in_view and provider.supports_keys and key is None
    if connections[alias].in_atomic_block and not (allow_in_transaction or derived):
        raise InTransaction(
            f"Outgoing operation {name} {reference}: called inside a transaction on "
            f"database {alias!r}, so its row would not be committed before the request "
            "is sent. Call it outside transaction.atomic() (or with "
            "transaction.on_commit()), or pass allow_in_transaction=True."
        )
    model = _model()
    if key is None:
        key = derive(f"{name}:{reference}") if in_view else str(uuid.uuid4())
    now = timezone.now()
    try:
        with transaction.atomic(using=alias):
            created: OutgoingOperation = model.objects.using(alias).create(
                name=name,
                reference=reference,
                key=key,
                header=provider.header or "",
                method=request.method,
                url=request.url,
                request_headers=_stored_headers(provider, request),
                request_body=request.body,
                fingerprint=request.fingerprint,
                created_at=now,
                updated_at=now,
            )
        return created
    except IntegrityError:
        operation: OutgoingOperation = model.objects.using(alias).get(
            name=name, reference=reference
        )
    if operation.fingerprint != request.fingerprint:
        raise OperationMismatch(
            f"Outgoing operation {name} {reference} was started as {operation.method} "
            f"{operation.url} with another body; a retry must send the identical request. "
            "Nothing was sent."
        )
    return operation


def find_operation(name: str, reference: str) -> OutgoingOperation | None:
    """The operation ``(name, reference)``, or None."""
    found: OutgoingOperation | None = (
        _model().objects.using(_alias()).filter(name=name, reference=reference).first()
    )
    return found


def _claim(operation: OutgoingOperation, seconds: float, states: tuple[str, ...]) -> str | None:
    token = uuid.uuid4().hex
    now = timezone.now()
    claimed = (
        _model()
        .objects.using(_alias())
        .filter(pk=operation.pk, state__in=states)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
        .update(
            lease_token=token, lease_expires_at=now + timedelta(seconds=seconds), updated_at=now
        )
    )
    return token if claimed else None


def _start_attempt(operation: OutgoingOperation, token: str, seconds: float) -> int | None:
    from idempotency.models import OutgoingAttempt

    alias = _alias()
    now = timezone.now()
    with transaction.atomic(using=alias):
        rows = _model().objects.using(alias).filter(pk=operation.pk, lease_token=token)
        if not rows.update(
            attempts=F("attempts") + 1,
            updated_at=now,
            lease_expires_at=now + timedelta(seconds=seconds),
        ):
            return None
        number = rows.values_list("attempts", flat=True).get()
        attempt = OutgoingAttempt.objects.using(alias).create(
            operation_id=operation.pk, number=number, started_at=now
        )
    operation.attempts = number
    pk: int = attempt.pk
    return pk


def _finish_attempt(
    attempt_id: int, status: int | None, error: str, verdict: Verdict | None
) -> None:
    from idempotency.models import OutgoingAttempt

    OutgoingAttempt.objects.using(_alias()).filter(pk=attempt_id).update(
        finished_at=timezone.now(),
        status=status,
        error=error[:ERROR_LIMIT],
        verdict=verdict.value if verdict is not None else "",
    )


def _summary(answer: Answer) -> dict[str, Any]:
    return {
        "response_status": answer.status,
        "response_headers": [
            [name, answer.headers[name]] for name in KEPT_RESPONSE_HEADERS if name in answer.headers
        ],
        "response_body": answer.body[:RESPONSE_BODY_LIMIT],
        "response_truncated": len(answer.body) > RESPONSE_BODY_LIMIT,
    }


def _finish(
    operation: OutgoingOperation, token: str, state: str, answer: Answer | None, error: str
) -> None:
    now = timezone.now()
    fields: dict[str, Any] = {
        "state": state,
        "error": error,
        "lease_token": "",
        "lease_expires_at": None,
        "updated_at": now,
        "completed_at": now if state in ("succeeded", "failed") else None,
    }
    if answer is not None:
        fields.update(_summary(answer))
    _model().objects.using(_alias()).filter(pk=operation.pk, lease_token=token).update(**fields)
    for name, value in fields.items():
        setattr(operation, name, value)


def _release(operation: OutgoingOperation, token: str) -> None:
    _model().objects.using(_alias()).filter(pk=operation.pk, lease_token=token).update(
        lease_token="", lease_expires_at=None, updated_at=timezone.now()
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]


# --------------------------------------------------------------- the sending


def wire_request(
    provider: Provider, operation: OutgoingOperation, headers: Mapping[str, str] | None = None
) -> OutgoingRequest:
    """The request as sent: the stored one, the caller's ``headers`` (credentials
    included, never stored), the provider's credentials, and the key."""
    pairs: dict[str, tuple[str, str]] = {}
    for name, value in operation.request_headers:
        pairs[name.lower()] = (name, value)
    for source in (headers or {}), (provider.credentials() if provider.credentials else {}):
        for name, value in source.items():
            pairs[name.lower()] = (name, value)
    if operation.header:
        pairs[operation.header.lower()] = (operation.header, operation.key)
    return OutgoingRequest(
        operation.method, operation.url, tuple(pairs.values()), bytes(operation.request_body)
    )


@dataclass
class _Run:
    """The state of one call's attempts, shared by the sync and async loops."""

    provider: Provider
    operation: OutgoingOperation
    token: str
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    answer: Answer | None = None
    error: str = ""

    @property
    def lease(self) -> float:
        return lease_seconds(self.provider)

    def timeout(self) -> float:
        left = self.provider.policy.max_seconds - (time.monotonic() - self.started)
        return max(min(self.provider.timeout, left), 0.05)

    def settle(self, answer: Answer, verdict: Verdict, response: Any) -> Outcome:
        state = "succeeded" if verdict is Verdict.SUCCEEDED else "failed"
        error = "the provider answered a key mismatch" if verdict is Verdict.MISMATCH else ""
        _finish(self.operation, self.token, state, answer, error)
        outcome = Outcome(operation=self.operation, answer=answer, response=response)
        if verdict is Verdict.MISMATCH:
            logger.error(
                "Outgoing operation %s: the provider answered a key mismatch.", self.operation
            )
            raise ProviderMismatch(
                f"Outgoing operation {self.operation}: the provider says key "
                f"{self.operation.key!r} was used for a different request "
                f"({answer.status}); not retried.",
                outcome,
            )
        return outcome

    def next_delay(self, *, transient_error: TransportError | None) -> tuple[float | None, bool]:
        """(seconds before the next attempt, or None to give up; whether it is blind,
        that is, might run the operation twice at a provider without keys)."""
        policy = self.provider.policy
        if self.sent >= policy.max_attempts:
            return None, False
        delay = policy.delay(self.sent, None if transient_error else self.answer)
        if time.monotonic() - self.started + delay > policy.max_seconds:
            return None, False
        if self.provider.supports_keys:
            return delay, False
        if transient_error is not None:
            blind = transient_error.sent
        else:
            assert self.answer is not None
            blind = self.answer.status not in NOT_RUN_STATUSES
        if blind and self.provider.reconcile is None:
            last = self.error or (f"answered {self.answer.status}" if self.answer else "")
            self.error = (
                f"{last}; not retried blind: the provider takes no key and has no "
                "reconcile function"
            )
            return None, True
        return delay, blind

    def give_up(self) -> OutcomeUnknown:
        policy = self.provider.policy
        reason = self.error or (f"answered {self.answer.status}" if self.answer else "no answer")
        message = (
            f"Outgoing operation {self.operation}: no definitive answer after {self.sent} "
            f"attempt(s) in {time.monotonic() - self.started:.1f} s "
            f"(at most {policy.max_attempts} in {policy.max_seconds:g} s); last: {reason}."
        )
        _finish(self.operation, self.token, "unknown", self.answer, reason)
        logger.warning(message)
        return OutcomeUnknown(message, self.operation, self.answer)

    def reconcile_failed(self, exc: BaseException) -> OutcomeUnknown:
        self.error = f"reconcile: {_describe(exc)}"
        return self.give_up()


def lease_seconds(provider: Provider) -> float:
    return provider.policy.max_seconds + provider.timeout + provider.lease_margin


def _claim_or_raise(
    provider: Provider, operation: OutgoingOperation, resend_completed: bool
) -> str | None:
    """Claim the operation's lease and reload it; None when it completed meanwhile."""
    states = ["pending", "unknown"]
    if resend_completed:
        states += ["succeeded", "failed"]
    token = _claim(operation, lease_seconds(provider), tuple(states))
    # What another call did since the row was read (attempts, an outcome) counts.
    operation.refresh_from_db(using=_alias())
    if token is not None:
        return token
    if operation.state in ("succeeded", "failed") and not resend_completed:
        return None
    raise OperationBusy(
        f"Outgoing operation {operation} is being sent by another call (its lease is live)."
    )


def _needs_reconcile(provider: Provider, operation: OutgoingOperation) -> bool:
    if provider.supports_keys or operation.attempts == 0:
        return False
    if provider.reconcile is None:
        raise ReconcileRequired(
            f"Outgoing operation {operation}: the provider takes no idempotency key and "
            f"{operation.attempts} earlier attempt(s) may have reached it. Give the "
            "provider a reconcile function that looks the operation up before any retry."
        )
    return True


def _as_answer(found: Any) -> Answer | None:
    if found is None or isinstance(found, Answer):
        return found
    raise TypeError(f"reconcile() must return an Answer or None, not {type(found).__name__}.")


@dataclass(frozen=True)
class _Db:
    """A step of :func:`_attempts`: a database write, run in Django's sync thread."""

    write: Callable[..., Any]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class _Send:
    """A step of :func:`_attempts`: send the request through the transport."""

    request: OutgoingRequest
    timeout: float


@dataclass(frozen=True)
class _Reconcile:
    """A step of :func:`_attempts`: ask the provider's reconcile function."""


@dataclass(frozen=True)
class _Sleep:
    """A step of :func:`_attempts`: wait before the next attempt."""

    seconds: float


_Step = _Db | _Send | _Reconcile | _Sleep


def _attempts(
    provider: Provider,
    operation: OutgoingOperation,
    headers: Mapping[str, str] | None,
    token: str,
) -> Generator[_Step, Any, Outcome]:
    """The attempts of one call, written once for :func:`drive` and :func:`adrive`.

    It yields each step that does I/O, and the driver runs the step, sync or async,
    and sends its result back in, or throws its exception in. It returns the
    :class:`Outcome`, or raises; the lease is given back whenever it ends without a
    recorded ending, an exception thrown in (a cancelled task) included.
    """
    run = _Run(provider, operation, token)
    done = False
    try:
        blind = _needs_reconcile(provider, operation)
        while True:
            if blind:
                try:
                    found = _as_answer((yield _Reconcile()))
                except Exception as exc:
                    done = True
                    raise (yield _Db(run.reconcile_failed, (exc,))) from exc
                if found is not None:
                    done = True
                    outcome: Outcome = yield _Db(run.settle, (found, provider.judge(found), None))
                    return outcome
            wired = wire_request(provider, operation, headers)
            attempt = yield _Db(_start_attempt, (operation, token, run.lease))
            if attempt is None:
                raise OperationBusy(f"Outgoing operation {operation}: its lease was taken over.")
            run.sent += 1
            error: TransportError | None = None
            try:
                answer, response = yield _Send(wired, run.timeout())
            except TransportError as exc:
                error, run.answer, run.error = exc, None, _describe(exc)
                yield _Db(_finish_attempt, (attempt, None, run.error, Verdict.RETRY))
            except Exception as exc:
                # Not a network error (a bad URL, a bug): it may have been sent, so the
                # outcome is unknown; the exception is the caller's to see.
                run.answer, run.error = None, _describe(exc)
                yield _Db(_finish_attempt, (attempt, None, run.error, None))
                done = True
                yield _Db(run.give_up)
                raise
            else:
                verdict = provider.judge(answer)
                yield _Db(_finish_attempt, (attempt, answer.status, "", verdict))
                if verdict is not Verdict.RETRY:
                    done = True
                    outcome = yield _Db(run.settle, (answer, verdict, response))
                    return outcome
                run.answer, run.error = answer, ""
            delay, blind = run.next_delay(transient_error=error)
            if delay is None:
                done = True
                raise (yield _Db(run.give_up))
            yield _Sleep(delay)
    finally:
        if not done:
            yield _Db(_release, (operation, token))


def drive(
    provider: Provider,
    operation: OutgoingOperation,
    headers: Mapping[str, str] | None = None,
    *,
    resend_completed: bool = False,
) -> Outcome:
    """Send ``operation`` until a definitive answer or the end of the budget.

    Claims the operation's lease first (:class:`OperationBusy` when another call
    holds it). Returns the :class:`Outcome` of a success or a definitive failure;
    raises :class:`ProviderMismatch` on a mismatch and :class:`OutcomeUnknown` when
    the budget ran out.
    """
    if not resend_completed and operation.state in ("succeeded", "failed"):
        return Outcome.from_record(operation)
    token = _claim_or_raise(provider, operation, resend_completed)
    if token is None:
        return Outcome.from_record(operation)
    steps = _attempts(provider, operation, headers, token)
    result: Any = None
    failure: BaseException | None = None
    while True:
        try:
            step = steps.send(result) if failure is None else steps.throw(failure)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, failure = None, None
        try:
            if isinstance(step, _Db):
                result = step.write(*step.args)
            elif isinstance(step, _Send):
                result = provider.transport.send(step.request, timeout=step.timeout)
            elif isinstance(step, _Reconcile):
                assert provider.reconcile is not None
                result = provider.reconcile(operation)
            else:
                time.sleep(step.seconds)
        except BaseException as exc:
            failure = exc


async def adrive(
    provider: Provider,
    operation: OutgoingOperation,
    headers: Mapping[str, str] | None = None,
    *,
    resend_completed: bool = False,
) -> Outcome:
    """:func:`drive` for an :class:`AsyncTransport`; the database writes run in
    Django's sync thread."""
    if not resend_completed and operation.state in ("succeeded", "failed"):
        return Outcome.from_record(operation)
    token = await sync_to_async(_claim_or_raise)(provider, operation, resend_completed)
    if token is None:
        return Outcome.from_record(operation)
    steps = _attempts(provider, operation, headers, token)
    result: Any = None
    failure: BaseException | None = None
    while True:
        try:
            step = steps.send(result) if failure is None else steps.throw(failure)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, failure = None, None
        try:
            if isinstance(step, _Db):
                result = await sync_to_async(step.write)(*step.args)
            elif isinstance(step, _Send):
                result = await provider.transport.asend(step.request, timeout=step.timeout)
            elif isinstance(step, _Reconcile):
                assert provider.reconcile is not None
                if inspect.iscoroutinefunction(provider.reconcile):
                    result = await provider.reconcile(operation)
                else:
                    result = await sync_to_async(provider.reconcile)(operation)
            else:
                await asyncio.sleep(step.seconds)
        except BaseException as exc:
            failure = exc


def call(
    provider: Provider,
    name: str,
    reference: str,
    method: str,
    url: str,
    *,
    json: Any = _MISSING,
    data: bytes | str | Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    key: str | None = None,
    on_completed: OnCompleted = "return",
    allow_in_transaction: bool = False,
) -> Outcome:
    """Run the outgoing operation ``(name, reference)`` once, however often it is called.

    The first call commits the operation (state ``pending``, a new key) and sends it;
    a later call, after an exception, a restart or on another host, finds the same
    row and sends the same key. A request that differs from the stored one (method,
    URL, body) raises :class:`OperationMismatch` before anything is sent. A completed
    operation returns its recorded outcome without a request (``on_completed="send"``
    sends the identical request again, for the provider to replay).

    ``json=`` is sent as canonical JSON; ``data=`` as bytes, text or a form.
    ``headers`` are sent on this call; those that are not credentials are stored for
    a resume. ``key`` replaces the generated key (random, or derived from the key of
    the view running now).
    """
    request = build_request(method, url, json=json, data=data, headers=headers)
    operation = open_operation(
        provider, name, reference, request, key=key, allow_in_transaction=allow_in_transaction
    )
    if on_completed == "send" and not provider.supports_keys:
        raise ReconcileRequired("on_completed='send' needs a provider that takes keys.")
    return drive(provider, operation, headers, resend_completed=on_completed == "send")


async def acall(
    provider: Provider,
    name: str,
    reference: str,
    method: str,
    url: str,
    *,
    json: Any = _MISSING,
    data: bytes | str | Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    key: str | None = None,
    on_completed: OnCompleted = "return",
    allow_in_transaction: bool = False,
) -> Outcome:
    """:func:`call`, for a provider whose transport is an :class:`AsyncTransport`."""
    request = build_request(method, url, json=json, data=data, headers=headers)
    operation = await sync_to_async(open_operation)(
        provider, name, reference, request, key=key, allow_in_transaction=allow_in_transaction
    )
    if on_completed == "send" and not provider.supports_keys:
        raise ReconcileRequired("on_completed='send' needs a provider that takes keys.")
    return await adrive(provider, operation, headers, resend_completed=on_completed == "send")
