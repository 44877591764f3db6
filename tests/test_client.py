"""The client half without a network: operations, keys, mismatches, retries, resume."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone as dj_timezone

from idempotency.client import (
    Answer,
    InTransaction,
    OperationBusy,
    OperationMismatch,
    OutcomeUnknown,
    OutgoingRequest,
    Provider,
    ProviderMismatch,
    ReconcileRequired,
    RetryPolicy,
    TransportError,
    Verdict,
    acall,
    call,
    classify,
    find_operation,
    parse_retry_after,
    register,
    resume_pending,
    unfinished,
    unregister,
)
from idempotency.client.operations import RESPONSE_BODY_LIMIT, _claim
from idempotency.context import CurrentKey, _activate, derive
from idempotency.models import OutgoingAttempt, OutgoingOperation
from idempotency.problems import DRAFT

URL = "https://pay.example.test/v1/charges"
PAYLOAD = {"amount": 1250, "currency": "eur"}
CREATED = Answer(201, {"Content-Type": "application/json"}, b'{"id": "ch_1"}')
FAST = RetryPolicy(max_attempts=4, max_seconds=10, base_delay=0.001, max_delay=0.002)

committed = pytest.mark.django_db(transaction=True)


def problem(status: int, code: str = "", kind: str = "about:blank") -> Answer:
    body = f'{{"type": "{kind}", "status": {status}, "code": "{code}"}}'.encode()
    return Answer(status, {"Content-Type": "application/problem+json"}, body)


class Script:
    """A transport that answers from a script: an Answer, or an exception to raise."""

    def __init__(self, *steps: Any, check: Any = None) -> None:
        self.steps = list(steps)
        self.sent: list[OutgoingRequest] = []
        self.check = check

    def send(self, request: OutgoingRequest, *, timeout: float) -> tuple[Answer, Any]:
        self.sent.append(request)
        if self.check is not None:
            self.check(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, BaseException):
            raise step
        return step, None

    def header(self, name: str, index: int = -1) -> str | None:
        return dict((k.lower(), v) for k, v in self.sent[index].headers).get(name.lower())


class AsyncScript(Script):
    async def asend(self, request: OutgoingRequest, *, timeout: float) -> tuple[Answer, Any]:
        await asyncio.sleep(0)
        return self.send(request, timeout=timeout)


def lost(sent: bool = True) -> TransportError:
    return TransportError("connection reset", sent=sent)


def provider(transport: Any, **options: Any) -> Provider:
    options.setdefault("policy", FAST)
    return Provider(transport, **options)


@pytest.fixture
def registry() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        unregister(name)


# -- the operation --------------------------------------------------------------------


@committed
def test_the_row_is_committed_and_pending_before_the_first_byte() -> None:
    seen: list[Any] = []

    def check(request: OutgoingRequest) -> None:
        seen.append(connection.in_atomic_block)
        operation = OutgoingOperation.objects.get()
        seen.append((operation.state, operation.attempts))
        seen.append(list(OutgoingAttempt.objects.values_list("number", "finished_at")))

    transport = Script(CREATED, check=check)
    outcome = call(provider(transport), "charge", "pool-tx:1", "POST", URL, json=PAYLOAD)

    assert seen == [False, ("pending", 1), [(1, None)]]
    assert outcome.status == 201 and outcome.json() == {"id": "ch_1"}
    assert not outcome.recorded
    operation = OutgoingOperation.objects.get()
    assert operation.state == "succeeded"
    assert operation.response_status == 201
    assert operation.completed_at is not None
    assert bytes(operation.response_body) == b'{"id": "ch_1"}'
    assert transport.header("Idempotency-Key") == operation.key
    assert list(OutgoingAttempt.objects.values_list("number", "status", "verdict")) == [
        (1, 201, "succeeded")
    ]


@committed
def test_a_second_call_after_an_exception_reuses_the_key() -> None:
    policy = RetryPolicy(max_attempts=2, max_seconds=5, base_delay=0.001)
    first = Script(lost())
    with pytest.raises(OutcomeUnknown) as raised:
        call(provider(first, policy=policy), "charge", "pool-tx:2", "POST", URL, json=PAYLOAD)
    assert raised.value.operation.state == "unknown"
    assert len(first.sent) == 2

    again = Script(CREATED)
    outcome = call(provider(again), "charge", "pool-tx:2", "POST", URL, json=PAYLOAD)

    keys = {first.header("Idempotency-Key", 0), first.header("Idempotency-Key", 1)}
    assert keys == {again.header("Idempotency-Key")}
    assert outcome.succeeded
    operation = OutgoingOperation.objects.get()
    assert operation.attempts == 3
    assert list(operation.attempt_set.values_list("number", "status")) == [
        (1, None),
        (2, None),
        (3, 201),
    ]


@committed
def test_keys_are_random_per_operation_and_json_is_canonical() -> None:
    transport = Script(CREATED)
    call(provider(transport), "charge", "a", "POST", URL, json={"b": 1, "a": "é"})
    call(provider(transport), "charge", "b", "POST", URL, json={"b": 1, "a": "é"})

    assert transport.header("Idempotency-Key", 0) != transport.header("Idempotency-Key", 1)
    assert transport.sent[0].body == '{"a":"é","b":1}'.encode()
    assert transport.header("Content-Type") == "application/json"
    # The same JSON with its keys in another order is the same request.
    outcome = call(provider(transport), "charge", "a", "POST", URL, json={"a": "é", "b": 1})
    assert outcome.recorded and len(transport.sent) == 2


@committed
def test_another_body_for_the_same_operation_is_refused_before_sending() -> None:
    transport = Script(lost())
    with pytest.raises(OutcomeUnknown):
        call(
            provider(transport, policy=RetryPolicy(max_attempts=1)),
            "c",
            "r",
            "POST",
            URL,
            json={"n": 1},
        )
    sent = len(transport.sent)

    for change in ({"json": {"n": 2}}, {"data": b'{"n":1} '}):
        with pytest.raises(OperationMismatch, match="identical request"):
            call(provider(transport), "c", "r", "POST", URL, **change)
    with pytest.raises(OperationMismatch):
        call(provider(transport), "c", "r", "PUT", URL, json={"n": 1})
    with pytest.raises(OperationMismatch):
        call(provider(transport), "c", "r", "POST", URL + "?x=1", json={"n": 1})

    assert len(transport.sent) == sent == 1


@committed
def test_a_completed_operation_returns_its_record_or_is_sent_again_on_request() -> None:
    transport = Script(CREATED, Answer(201, {"Idempotent-Replayed": "true"}, b'{"id": "ch_1"}'))
    first = call(provider(transport), "charge", "done", "POST", URL, json=PAYLOAD)

    recorded = call(provider(transport), "charge", "done", "POST", URL, json=PAYLOAD)
    assert recorded.recorded and recorded.response is None
    assert (recorded.status, recorded.body) == (201, first.body)
    assert recorded.headers["content-type"] == "application/json"
    assert len(transport.sent) == 1

    again = call(
        provider(transport), "charge", "done", "POST", URL, json=PAYLOAD, on_completed="send"
    )
    assert again.replayed and not again.recorded
    assert transport.header("Idempotency-Key", 0) == transport.header("Idempotency-Key", 1)


@committed
def test_the_response_summary_is_bounded() -> None:
    big = Answer(
        200,
        {"Content-Type": "text/plain", "Set-Cookie": "s=1", "X-Request-Id": "req_9"},
        b"x" * (RESPONSE_BODY_LIMIT * 3),
    )
    outcome = call(provider(Script(big)), "export", "e1", "POST", URL, data=b"go")

    assert len(outcome.body) == RESPONSE_BODY_LIMIT * 3
    operation = OutgoingOperation.objects.get()
    assert len(bytes(operation.response_body)) == RESPONSE_BODY_LIMIT
    assert operation.response_truncated
    assert operation.response_headers == [["content-type", "text/plain"], ["x-request-id", "req_9"]]


@committed
def test_credentials_are_sent_and_never_stored() -> None:
    transport = Script(CREATED)
    payments = provider(
        transport,
        credentials=lambda: {"Authorization": "Bearer sk_live_1"},
        secret_headers=["X-Sig"],
    )
    call(
        payments,
        "charge",
        "secret",
        "POST",
        URL,
        json=PAYLOAD,
        headers={"Cookie": "a=b", "X-Sig": "s", "X-Tenant": "t1", "Idempotency-Key": "ignored"},
    )

    sent = dict(transport.sent[0].headers)
    assert sent["Authorization"] == "Bearer sk_live_1"
    assert sent["Cookie"] == "a=b" and sent["X-Sig"] == "s"
    operation = OutgoingOperation.objects.get()
    assert sent["Idempotency-Key"] == operation.key
    assert operation.request_headers == [["X-Tenant", "t1"], ["Content-Type", "application/json"]]


@committed
def test_the_header_is_the_providers() -> None:
    transport = Script(CREATED)
    call(provider(transport, header="X-Idempotency-Key"), "ship", "o1", "POST", URL, json={})

    assert transport.header("X-Idempotency-Key") == OutgoingOperation.objects.get().key
    assert transport.header("Idempotency-Key") is None


@committed
def test_an_explicit_key_is_sent() -> None:
    transport = Script(CREATED)
    call(provider(transport), "charge", "k", "POST", URL, json={}, key="my-key-1")

    assert transport.header("Idempotency-Key") == "my-key-1"


@pytest.mark.django_db
def test_inside_a_transaction_is_refused_unless_allowed() -> None:
    # pytest-django runs this test inside a transaction.
    transport = Script(CREATED)
    with pytest.raises(InTransaction, match=r"transaction\.atomic\(\)"):
        call(provider(transport), "charge", "t", "POST", URL, json={})
    assert transport.sent == [] and not OutgoingOperation.objects.exists()

    outcome = call(
        provider(transport), "charge", "t", "POST", URL, json={}, allow_in_transaction=True
    )
    assert outcome.succeeded


@committed
def test_in_a_view_under_a_key_the_key_is_derived_even_in_its_transaction() -> None:
    transport = Script(CREATED)
    previous = _activate(CurrentKey("client-key-1", "user:1", "f" * 64))
    try:
        with transaction.atomic():
            call(provider(transport), "charge", "pool-tx:9", "POST", URL, json={})
            expected = derive("charge:pool-tx:9")
        with transaction.atomic(), pytest.raises(InTransaction):
            call(provider(Script(CREATED), header=None), "plain", "x", "POST", URL, json={})
    finally:
        _activate(previous)

    assert transport.header("Idempotency-Key") == expected
    assert OutgoingOperation.objects.get(name="charge").key == expected


@committed
def test_two_threads_starting_one_operation_share_its_row_and_key() -> None:
    from idempotency.client.operations import build_request, open_operation

    request = build_request("POST", URL, json=PAYLOAD)
    barrier = threading.Barrier(2, timeout=30)
    keys: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait()
            keys.append(open_operation(provider(Script(CREATED)), "charge", "race", request).key)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert len(keys) == 2 and keys[0] == keys[1]
    assert OutgoingOperation.objects.count() == 1


# -- answers and retries --------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        (Answer(200), Verdict.SUCCEEDED),
        (Answer(201), Verdict.SUCCEEDED),
        (problem(409, "idempotency_key_mismatch"), Verdict.MISMATCH),
        (problem(422, "idempotency_key_mismatch"), Verdict.MISMATCH),
        (problem(422, kind=f"{DRAFT}#section-2.2"), Verdict.MISMATCH),
        (problem(409, "idempotency_key_locked"), Verdict.RETRY),
        (problem(409, kind=f"{DRAFT}#section-2.6"), Verdict.RETRY),
        (problem(503, "idempotency_store_unavailable"), Verdict.RETRY),
        (problem(400, "idempotency_key_missing", f"{DRAFT}#section-2.1"), Verdict.FAILED),
        (Answer(409, {}, b'{"detail": "already exists"}'), Verdict.FAILED),
        (Answer(400), Verdict.FAILED),
        (Answer(404), Verdict.FAILED),
        (Answer(302), Verdict.FAILED),
        (Answer(408), Verdict.RETRY),
        (Answer(425), Verdict.RETRY),
        (Answer(429), Verdict.RETRY),
        (Answer(500), Verdict.RETRY),
        (Answer(502, {}, b"<html>bad gateway</html>"), Verdict.RETRY),
    ],
)
def test_classify(answer: Answer, verdict: Verdict) -> None:
    assert classify(answer) is verdict


def test_a_providers_own_codes_come_first() -> None:
    def stripe_like(answer: Answer) -> Verdict | None:
        error = answer.problem().get("error")
        if isinstance(error, dict) and error.get("type") == "idempotency_error":
            return Verdict.MISMATCH
        return None

    payments = Provider(Script(CREATED), classify=stripe_like)
    assert payments.judge(Answer(400, {}, b'{"error": {"type": "idempotency_error"}}')) is (
        Verdict.MISMATCH
    )
    assert payments.judge(Answer(400, {}, b'{"error": {"type": "card_error"}}')) is Verdict.FAILED
    assert payments.judge(Answer(503)) is Verdict.RETRY


def test_parse_retry_after() -> None:
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)

    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after(" 0 ", now=now) == 0.0
    assert parse_retry_after(later, now=now) == 90.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-1", now=now) is None
    assert parse_retry_after(None) is None


def test_policy_delays() -> None:
    top = RetryPolicy(base_delay=0.1, max_delay=1.0, random=lambda low, high: high)
    bottom = RetryPolicy(random=lambda low, high: low)

    assert [top.delay(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert bottom.delay(3) == 0.0
    assert top.delay(1, Answer(429, {"Retry-After": "7"})) == 7.0
    assert top.delay(1, problem(409, "idempotency_key_locked")) == 0.5
    assert bottom.delay(1, problem(409, "idempotency_key_locked")) == 0.1
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


@committed
def test_transient_answers_are_retried_until_success() -> None:
    transport = Script(
        Answer(503), lost(), problem(409, "idempotency_key_locked"), Answer(429), CREATED
    )
    policy = RetryPolicy(max_attempts=5, max_seconds=10, base_delay=0.001, locked_delay=(0, 0.001))
    outcome = call(provider(transport, policy=policy), "charge", "t", "POST", URL, json={})

    assert outcome.succeeded and len(transport.sent) == 5
    assert len({transport.header("Idempotency-Key", i) for i in range(5)}) == 1
    assert list(OutgoingAttempt.objects.values_list("status", "verdict")) == [
        (503, "retry"),
        (None, "retry"),
        (409, "retry"),
        (429, "retry"),
        (201, "succeeded"),
    ]
    assert OutgoingAttempt.objects.get(number=2).error.startswith("TransportError")


@committed
def test_the_attempt_budget_is_honoured() -> None:
    transport = Script(Answer(503, {}, b"down"))
    with pytest.raises(OutcomeUnknown, match="after 4 attempt") as raised:
        call(provider(transport), "charge", "b", "POST", URL, json={})

    assert len(transport.sent) == 4
    assert raised.value.answer is not None and raised.value.answer.status == 503
    operation = OutgoingOperation.objects.get()
    assert (operation.state, operation.attempts, operation.response_status) == ("unknown", 4, 503)
    assert operation.completed_at is None


@committed
def test_the_time_budget_is_honoured_and_retry_after_beyond_it_ends_the_call() -> None:
    transport = Script(Answer(429, {"Retry-After": "30"}))
    policy = RetryPolicy(max_attempts=10, max_seconds=2)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        call(provider(transport, policy=policy), "charge", "slow", "POST", URL, json={})

    assert len(transport.sent) == 1
    assert time.monotonic() - started < 20  # it did not sleep the 30 s


@committed
def test_a_providers_mismatch_is_never_retried() -> None:
    transport = Script(problem(409, "idempotency_key_mismatch"))
    with pytest.raises(ProviderMismatch) as raised:
        call(provider(transport), "charge", "m", "POST", URL, json={})

    assert len(transport.sent) == 1
    assert raised.value.outcome.status == 409
    operation = OutgoingOperation.objects.get()
    assert (operation.state, operation.attempts) == ("failed", 1)
    assert "mismatch" in operation.error


@committed
def test_a_client_error_is_definitive() -> None:
    transport = Script(Answer(402, {}, b'{"error": "card_declined"}'))
    outcome = call(provider(transport), "charge", "d", "POST", URL, json={})

    assert len(transport.sent) == 1
    assert (outcome.status, outcome.succeeded) == (402, False)
    assert OutgoingOperation.objects.get().state == "failed"


@committed
def test_async_call_retries_and_records() -> None:
    transport = AsyncScript(lost(), CREATED)
    # As under ASGI: the database writes run in this (the sync) thread.
    outcome = async_to_sync(acall)(provider(transport), "charge", "async", "POST", URL, json={})

    assert outcome.succeeded and len(transport.sent) == 2
    assert OutgoingOperation.objects.get().attempts == 2


@committed
def test_a_cancelled_async_call_gives_its_lease_back() -> None:
    # A client that went away cancels the task in the middle of a send.
    transport = AsyncScript(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        async_to_sync(acall)(provider(transport), "charge", "cancelled", "POST", URL, json={})

    operation = OutgoingOperation.objects.get(reference="cancelled")
    assert (operation.state, operation.attempts, operation.lease_token) == ("pending", 1, "")
    assert len(transport.sent) == 1


# -- a provider without keys ----------------------------------------------------------


@committed
def test_without_keys_a_lost_answer_is_not_retried_blind() -> None:
    transport = Script(lost(sent=True))
    legacy = provider(transport, header=None)
    with pytest.raises(OutcomeUnknown, match="not retried blind"):
        call(legacy, "ledger", "l1", "POST", URL, json={})
    assert len(transport.sent) == 1
    assert "Idempotency-Key" not in dict(transport.sent[0].headers)

    with pytest.raises(ReconcileRequired):
        call(legacy, "ledger", "l1", "POST", URL, json={})
    assert len(transport.sent) == 1


@committed
def test_without_keys_a_refused_connection_is_retried() -> None:
    transport = Script(lost(sent=False), CREATED)
    outcome = call(provider(transport, header=None), "ledger", "l2", "POST", URL, json={})

    assert outcome.succeeded and len(transport.sent) == 2


@committed
def test_without_keys_reconcile_decides() -> None:
    looked_up: list[str] = []

    def not_there(operation: OutgoingOperation) -> Answer | None:
        looked_up.append(operation.reference)
        return None

    transport = Script(lost(), CREATED)
    outcome = call(
        provider(transport, header=None, reconcile=not_there), "ledger", "l3", "POST", URL, json={}
    )
    assert outcome.succeeded and len(transport.sent) == 2 and looked_up == ["l3"]

    found = Answer(200, {}, b'{"entry": 7}')
    transport = Script(lost())
    outcome = call(
        provider(transport, header=None, reconcile=lambda op: found),
        "ledger",
        "l4",
        "POST",
        URL,
        json={},
    )
    assert len(transport.sent) == 1
    assert outcome.succeeded and outcome.json() == {"entry": 7}

    def cannot_tell(operation: OutgoingOperation) -> Answer | None:
        raise ConnectionError("ledger search is down")

    transport = Script(lost())
    with pytest.raises(OutcomeUnknown, match="reconcile"):
        call(
            provider(transport, header=None, reconcile=cannot_tell),
            "ledger",
            "l5",
            "POST",
            URL,
            json={},
        )
    assert len(transport.sent) == 1
    assert OutgoingOperation.objects.get(reference="l5").state == "unknown"


# -- resume ---------------------------------------------------------------------------


def _leave_pending(name: str, reference: str, *, attempts: int = 1) -> OutgoingOperation:
    """An operation as a killed process leaves it: pending, attempted, no outcome."""
    transport = Script(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        call(provider(transport), name, reference, "POST", URL, json={"ref": reference})
    operation = OutgoingOperation.objects.get(name=name, reference=reference)
    assert (operation.state, operation.attempts, operation.lease_token) == ("pending", 1, "")
    OutgoingOperation.objects.filter(pk=operation.pk).update(
        updated_at=dj_timezone.now() - timedelta(minutes=5)
    )
    return operation


@committed
def test_resume_pending_sends_again_with_the_same_key(registry: list[str]) -> None:
    operation = _leave_pending("charge", "crash-1")
    transport = Script(CREATED)
    register("charge", provider(transport))
    registry.append("charge")

    report = resume_pending()

    assert (report.found, report.succeeded) == (1, 1)
    assert transport.header("Idempotency-Key") == operation.key
    operation.refresh_from_db()
    assert (operation.state, operation.attempts) == ("succeeded", 2)


@committed
def test_resume_leaves_recent_leased_and_unregistered_operations_alone(registry: list[str]) -> None:
    _leave_pending("charge", "old")
    recent = _leave_pending("charge", "recent")
    OutgoingOperation.objects.filter(pk=recent.pk).update(updated_at=dj_timezone.now())
    leased = _leave_pending("charge", "leased")
    OutgoingOperation.objects.filter(pk=leased.pk).update(
        lease_expires_at=dj_timezone.now() + timedelta(minutes=1)
    )
    _leave_pending("refund", "no-provider")
    transport = Script(CREATED)
    register("charge", provider(transport))
    registry.append("charge")

    assert sorted(op.reference for op in unfinished()) == ["no-provider", "old"]
    report = resume_pending()

    assert (report.found, report.succeeded, report.skipped) == (2, 1, 1)
    assert len(transport.sent) == 1
    assert OutgoingOperation.objects.get(reference="old").state == "succeeded"


@committed
def test_a_claimed_operation_cannot_be_claimed_again() -> None:
    operation = _leave_pending("charge", "claim")

    assert _claim(operation, 60, ("pending",)) is not None
    assert _claim(operation, 60, ("pending",)) is None
    with pytest.raises(OperationBusy):
        call(provider(Script(CREATED)), "charge", "claim", "POST", URL, json={"ref": "claim"})


@committed
def test_the_command_resumes_counts_and_checks_its_options(registry: list[str]) -> None:
    _leave_pending("charge", "c1")
    _leave_pending("charge", "c2")
    _leave_pending("refund", "c3")
    transport = Script(CREATED)
    register("charge", provider(transport))
    registry.append("charge")

    out = StringIO()
    call_command("resume_outgoing_operations", "--dry-run", stdout=out)
    assert out.getvalue().strip() == (
        "Would resume 2 outgoing operations; 1 without a registered provider."
    )
    assert transport.sent == []

    out = StringIO()
    call_command("resume_outgoing_operations", "--limit", "1", stdout=out)
    assert out.getvalue().startswith("Resumed 1 outgoing operation: 1 succeeded,")

    out = StringIO()
    call_command("resume_outgoing_operations", "--name", "charge", "-v", "2", stdout=out)
    assert out.getvalue().splitlines()[0].endswith(": succeeded")
    assert "Resumed 1 outgoing operation: 1 succeeded" in out.getvalue()
    assert len(transport.sent) == 2

    for args in (["--limit", "0"], ["--older-than", "-1"], ["--older-than", "soon"]):
        with pytest.raises(CommandError):
            call_command("resume_outgoing_operations", *args, stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("resume_outgoing_operations", limit=0, stdout=StringIO())


@committed
def test_find_operation() -> None:
    call(provider(Script(CREATED)), "charge", "f1", "POST", URL, json={})

    found = find_operation("charge", "f1")
    assert found is not None and found.state == "succeeded"
    assert find_operation("charge", "F1") is None
    assert str(found) == "charge f1"


def test_the_core_imports_neither_http_client() -> None:
    code = (
        "import sys, idempotency.client, idempotency.client.requests, idempotency.client.httpx;"
        "print(sorted(m for m in ('requests', 'httpx') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@committed
def test_an_unexpected_error_in_the_transport_leaves_the_outcome_unknown() -> None:
    transport = Script(ValueError("Invalid URL 'pay'"))
    with pytest.raises(ValueError, match="Invalid URL"):
        call(provider(transport), "charge", "bug", "POST", URL, json={})

    operation = OutgoingOperation.objects.get()
    assert (operation.state, operation.attempts, operation.lease_token) == ("unknown", 1, "")
    attempt = operation.attempt_set.get()
    assert attempt.finished_at is not None and attempt.verdict == ""
    assert attempt.error == "ValueError: Invalid URL 'pay'"


@committed
def test_one_broken_operation_does_not_stop_a_resume_run(registry: list[str]) -> None:
    _leave_pending("refund", "broken")
    _leave_pending("charge", "fine")

    def no_secret() -> dict[str, str]:
        raise KeyError("REFUND_API_KEY")

    transport = Script(CREATED)
    register("refund", provider(transport, credentials=no_secret))
    register("charge", provider(transport))
    registry.extend(["refund", "charge"])

    report = resume_pending()

    assert (report.found, report.errors, report.succeeded) == (2, 1, 1)
    assert OutgoingOperation.objects.get(reference="fine").state == "succeeded"
    broken = OutgoingOperation.objects.get(reference="broken")
    assert (broken.state, broken.attempts, broken.lease_token) == ("pending", 1, "")
    assert len(transport.sent) == 1


@committed
def test_a_stale_row_is_read_again_once_claimed() -> None:
    from idempotency.client.operations import build_request, drive, open_operation

    request = build_request("POST", URL, json={})
    stale = open_operation(provider(Script(CREATED)), "charge", "stale", request)
    call(provider(Script(CREATED)), "charge", "stale", "POST", URL, json={})
    transport = Script(CREATED)

    outcome = drive(provider(transport), stale)

    assert outcome.recorded and outcome.status == 201 and transport.sent == []

    legacy = provider(Script(CREATED), header=None)
    stale = open_operation(legacy, "ledger", "stale", request)
    OutgoingOperation.objects.filter(pk=stale.pk).update(attempts=1)
    with pytest.raises(ReconcileRequired):
        drive(legacy, stale)
    assert OutgoingOperation.objects.get(pk=stale.pk).lease_token == ""


@committed
def test_names_and_references_compare_byte_for_byte() -> None:
    transport = Script(CREATED)
    for reference in ("pool-tx:A", "pool-tx:a", "pool-tx:a "):
        call(provider(transport), "charge", reference, "POST", URL, json={})

    assert len(transport.sent) == 3
    assert OutgoingOperation.objects.values("key").distinct().count() == 3


# -- real transports on a closed port, async reconcile, resume results -------------------


def _closed_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/charges"


def test_a_refused_connection_counts_as_never_sent() -> None:
    from idempotency.client.httpx import AsyncHttpxTransport, HttpxTransport
    from idempotency.client.requests import RequestsTransport

    request = OutgoingRequest("POST", _closed_url(), (("Content-Type", "application/json"),), b"{}")
    errors = []
    for transport in (RequestsTransport(), HttpxTransport()):
        with pytest.raises(TransportError) as raised:
            transport.send(request, timeout=5)
        errors.append(raised.value)
    with pytest.raises(TransportError) as raised:
        async_to_sync(AsyncHttpxTransport().asend)(request, timeout=5)
    errors.append(raised.value)

    assert [error.sent for error in errors] == [False, False, False]


@committed
def test_async_reconcile_functions_sync_or_coroutine() -> None:
    async def not_there(operation: OutgoingOperation) -> Answer | None:
        return None

    def found(operation: OutgoingOperation) -> Answer | None:
        return Answer(200, {}, b'{"entry": 1}')

    transport = AsyncScript(lost(), CREATED)
    legacy = provider(transport, header=None, reconcile=not_there)
    outcome = async_to_sync(acall)(legacy, "ledger", "a1", "POST", URL, json={})
    assert outcome.succeeded and outcome.status == 201 and len(transport.sent) == 2

    transport = AsyncScript(lost())
    legacy = provider(transport, header=None, reconcile=found)
    outcome = async_to_sync(acall)(legacy, "ledger", "a2", "POST", URL, json={})
    assert outcome.json() == {"entry": 1} and len(transport.sent) == 1

    transport = AsyncScript(ValueError("bad URL"))
    with pytest.raises(ValueError):
        async_to_sync(acall)(provider(transport), "ledger", "a3", "POST", URL, json={})
    assert OutgoingOperation.objects.get(reference="a3").state == "unknown"


@committed
def test_resume_reports_each_result(registry: list[str]) -> None:
    from idempotency.client import resume

    for reference in ("r-unknown", "r-failed", "r-refused", "r-async"):
        _leave_pending("charge" if reference != "r-refused" else "ledger", reference)
    _leave_pending("other", "r-skipped")
    answers = {"r-unknown": Answer(503), "r-failed": Answer(400)}

    class ByReference(Script):
        def send(self, request: OutgoingRequest, *, timeout: float) -> tuple[Answer, Any]:
            self.sent.append(request)
            reference = request.body.decode().split('"')[3]
            return answers.get(reference, CREATED), None

    register("charge", provider(ByReference(CREATED), policy=RetryPolicy(max_attempts=2)))
    register("ledger", provider(Script(CREATED), header=None))
    registry.extend(["charge", "ledger"])

    report = resume_pending(names=["charge", "ledger", "other"])

    results = {operation.reference: result for operation, result in report.results}
    assert results == {
        "r-unknown": "unknown",
        "r-failed": "failed",
        "r-refused": "errors",
        "r-async": "succeeded",
        "r-skipped": "skipped",
    }
    with pytest.raises(LookupError):
        resume(OutgoingOperation.objects.get(reference="r-skipped"))

    class AsyncOnly:
        def __init__(self) -> None:
            self.script = AsyncScript(CREATED)

        async def asend(self, request: OutgoingRequest, *, timeout: float) -> tuple[Answer, Any]:
            return await self.script.asend(request, timeout=timeout)

    operation = OutgoingOperation.objects.get(reference="r-unknown")
    transport = AsyncOnly()
    outcome = resume(operation, provider(transport))
    assert outcome.succeeded and len(transport.script.sent) == 1
