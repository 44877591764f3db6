"""The client half against real parts: the testproject under gunicorn is the provider.

The provider runs on 127.0.0.1 with a SQLite database of its own (its effects are
counted there: one ``shop_payment`` row per payment it ran); the operations live
in the test database. Between the two, :class:`Proxy` (threads and sockets on
127.0.0.1) forwards each request and, as planned per connection, cuts the
connection after the provider has answered (so it has committed) and before the
client reads the answer, answers 503 itself, or holds the answer back.

Each test prints its figures (requests sent, effects, attempts, the recorded
state); run with ``-s`` to see them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from idempotency.client import (
    OutcomeUnknown,
    Provider,
    ProviderMismatch,
    RetryPolicy,
    acall,
    call,
    register,
    unregister,
)
from idempotency.client.httpx import AsyncHttpxTransport, HttpxTransport
from idempotency.client.operations import canonical_json
from idempotency.client.requests import RequestsTransport
from idempotency.models import OutgoingOperation
from tests.stress.harness import ROOT, Database, Server, manage, send, sqlite_database

# The provider runs under gunicorn (``python -m gunicorn``, in a process of its own).
pytest.importorskip(
    "gunicorn", reason="gunicorn is not installed (pip install -r requirements/servers.txt)"
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SOCKET_TIMEOUT = 30.0  # seconds; never reached when green
POLICY = RetryPolicy(max_attempts=6, max_seconds=30, base_delay=0.05, max_delay=0.5)

FIGURES: list[str] = []


# -- the proxy --------------------------------------------------------------------------


def _read_message(sock: socket.socket) -> bytes | None:
    """One HTTP/1.1 message (head and a Content-Length body), or None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data or None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class Proxy:
    """A forwarding proxy on 127.0.0.1; ``plan`` says what to do with each connection.

    ``"pass"`` relays the answer; ``"cut"`` closes the client's connection once the
    provider's whole answer is in; ``"503"`` answers 503 without forwarding;
    ``"hold"`` keeps the answer until :attr:`release` is set. Once the plan is used
    up, every connection passes.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.plan: list[str] = []
        self.seen: list[str] = []
        self.heads: list[bytes] = []
        self.forwarded = 0
        self.answered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reset(self, *plan: str) -> None:
        with self._lock:
            self.plan, self.seen, self.heads, self.forwarded = list(plan), [], [], 0
        self.answered.clear()
        self.release.clear()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(SOCKET_TIMEOUT)
            try:
                request = _read_message(conn)
                if request is None:
                    return
                with self._lock:
                    mode = self.plan.pop(0) if self.plan else "pass"
                    self.seen.append(mode)
                    self.heads.append(request.partition(b"\r\n\r\n")[0])
                if mode == "503":
                    conn.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: 4\r\nConnection: close\r\n\r\ndown"
                    )
                    return
                with socket.create_connection(
                    ("127.0.0.1", self.upstream_port), timeout=SOCKET_TIMEOUT
                ) as upstream:
                    upstream.sendall(request)
                    answer = _read_message(upstream) or b""
                with self._lock:
                    self.forwarded += 1
                self.answered.set()
                if mode == "cut":
                    return  # closed with nothing written: the answer is lost
                if mode == "hold":
                    self.release.wait(SOCKET_TIMEOUT)
                    return
                conn.sendall(answer)
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self.release.set()
        self._listener.close()
        self._thread.join(5)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider_db(tmp_path_factory: pytest.TempPathFactory) -> Database:
    directory = tmp_path_factory.mktemp("provider")
    database = sqlite_database(directory, None, "provider")
    manage(database, "migrate", "--noinput", "-v", "0")
    return database


@pytest.fixture(scope="module")
def server(provider_db: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("provider-logs")
    with Server(provider_db, logs, workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def proxy(server: Server) -> Iterator[Proxy]:
    running = Proxy(server.port)
    yield running
    running.stop()


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    yield
    if FIGURES:
        print("\n\nclient scenarios against gunicorn (SQLite provider):")
        for line in FIGURES:
            print("  " + line)


def proxy_request_headers(proxy: Proxy, index: int = 0) -> dict[str, str]:
    lines = proxy.heads[index].decode("latin-1").split("\r\n")[1:]
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


def effects(database: Database, reference: str) -> int:
    rows = database.query("SELECT COUNT(*) FROM shop_payment WHERE reference = %s", (reference,))
    return int(rows[0][0])


def payment(reference: str) -> dict[str, str]:
    return {"amount": "12.50", "currency": "EUR", "reference": reference}


def reference() -> str:
    return f"pool-tx:{uuid.uuid4().hex[:12]}"


def figure(scenario: str, proxy: Proxy, done: int, operation: OutgoingOperation) -> None:
    attempts = list(operation.attempt_set.values_list("status", "error", "verdict"))
    shown = ", ".join(
        f"{status or error.split(':')[0]}->{verdict or 'died'}"
        for status, error, verdict in attempts
    )
    FIGURES.append(
        f"{scenario}: {len(proxy.seen)} requests sent ({', '.join(proxy.seen)}), "
        f"{done} effect(s) on the server, {operation.attempts} attempts [{shown}], "
        f"recorded {operation.state} {operation.response_status}"
    )


# -- a lost answer after the provider committed -----------------------------------------


def _assert_replayed_once(
    outcome: Any, proxy: Proxy, provider_db: Database, ref: str, scenario: str
) -> None:
    operation = OutgoingOperation.objects.get(name="charge", reference=ref)
    figure(scenario, proxy, effects(provider_db, ref), operation)
    assert proxy.seen == ["cut", "pass"]
    assert proxy.forwarded == 2
    assert outcome.status == 201 and outcome.replayed
    assert outcome.json()["reference"] == ref
    assert effects(provider_db, ref) == 1
    assert (operation.state, operation.attempts, operation.response_status) == ("succeeded", 2, 201)
    assert list(operation.attempt_set.values_list("number", "status", "verdict")) == [
        (1, None, "retry"),
        (2, 201, "succeeded"),
    ]
    assert operation.attempt_set.get(number=1).error.startswith("TransportError")


def test_requests_retries_a_lost_answer_and_gets_the_replay(
    proxy: Proxy, provider_db: Database
) -> None:
    proxy.reset("cut")
    ref = reference()
    provider = Provider(RequestsTransport(requests.Session()), policy=POLICY)

    outcome = call(provider, "charge", ref, "POST", proxy.url("/payments/"), json=payment(ref))

    assert isinstance(outcome.response, requests.Response)
    _assert_replayed_once(outcome, proxy, provider_db, ref, "lost answer, requests")


def test_httpx_retries_a_lost_answer_and_gets_the_replay(
    proxy: Proxy, provider_db: Database
) -> None:
    proxy.reset("cut")
    ref = reference()
    with httpx.Client() as client:
        provider = Provider(HttpxTransport(client), policy=POLICY)
        outcome = call(provider, "charge", ref, "POST", proxy.url("/payments/"), json=payment(ref))

    assert isinstance(outcome.response, httpx.Response)
    _assert_replayed_once(outcome, proxy, provider_db, ref, "lost answer, httpx")


def test_async_httpx_retries_a_lost_answer_and_gets_the_replay(
    proxy: Proxy, provider_db: Database
) -> None:
    proxy.reset("cut")
    ref = reference()

    async def run() -> Any:
        async with httpx.AsyncClient() as client:
            provider = Provider(AsyncHttpxTransport(client), policy=POLICY)
            return await acall(
                provider, "charge", ref, "POST", proxy.url("/payments/"), json=payment(ref)
            )

    outcome = async_to_sync(run)()

    assert isinstance(outcome.response, httpx.Response)
    _assert_replayed_once(outcome, proxy, provider_db, ref, "lost answer, httpx async")


# -- a locked key, a mismatch, a 5xx, the budgets ---------------------------------------


def _key_state(provider_db: Database, key: str) -> str | None:
    rows = provider_db.query("SELECT state FROM idempotency_idempotencykey WHERE key = %s", (key,))
    return str(rows[0][0]) if rows else None


def test_a_locked_key_is_retried_until_the_replay(
    server: Server, proxy: Proxy, provider_db: Database
) -> None:
    proxy.reset()
    ref = reference()
    key = str(uuid.uuid4())
    body = {"reference": ref, "delay": 2}
    first: list[Any] = []
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    holder = threading.Thread(
        target=lambda: first.append(
            send(server.port, "POST", "/stress/slow-payments/", canonical_json(body), headers)
        ),
        daemon=True,
    )
    holder.start()
    deadline = time.monotonic() + 20
    while _key_state(provider_db, key) != "running":
        assert time.monotonic() < deadline, "the first request never claimed its key"
        time.sleep(0.02)

    provider = Provider(RequestsTransport(), policy=POLICY)
    outcome = call(
        provider, "charge", ref, "POST", proxy.url("/stress/slow-payments/"), json=body, key=key
    )
    holder.join(SOCKET_TIMEOUT)

    operation = OutgoingOperation.objects.get(reference=ref)
    figure("locked 409", proxy, effects(provider_db, ref), operation)
    statuses = list(operation.attempt_set.values_list("status", flat=True))
    assert first and first[0].status == 201
    assert outcome.status == 201 and outcome.replayed
    assert outcome.body == first[0].body
    assert effects(provider_db, ref) == 1
    assert len(statuses) >= 2 and statuses[-1] == 201
    assert set(statuses[:-1]) == {409}
    assert len(proxy.seen) == len(statuses)
    assert operation.state == "succeeded"


def test_a_mismatch_is_never_retried(server: Server, proxy: Proxy, provider_db: Database) -> None:
    proxy.reset()
    ref = reference()
    key = str(uuid.uuid4())
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    earlier = send(server.port, "POST", "/payments/", canonical_json(payment(ref)), headers)
    assert earlier.status == 201

    provider = Provider(RequestsTransport(), policy=POLICY)
    changed = {**payment(ref), "amount": "99.00"}
    with pytest.raises(ProviderMismatch) as raised:
        call(provider, "charge", ref, "POST", proxy.url("/payments/"), json=changed, key=key)

    operation = OutgoingOperation.objects.get(reference=ref)
    figure("provider mismatch", proxy, effects(provider_db, ref), operation)
    assert proxy.seen == ["pass"]
    assert raised.value.outcome.status == 409
    assert raised.value.outcome.json()["code"] == "idempotency_key_mismatch"
    assert effects(provider_db, ref) == 1  # the earlier request's, none of ours
    assert (operation.state, operation.attempts, operation.response_status) == ("failed", 1, 409)


def test_a_5xx_is_retried_then_succeeds(proxy: Proxy, provider_db: Database) -> None:
    proxy.reset("503", "503")
    ref = reference()
    with httpx.Client() as client:
        provider = Provider(HttpxTransport(client), policy=POLICY)
        outcome = call(provider, "charge", ref, "POST", proxy.url("/payments/"), json=payment(ref))

    operation = OutgoingOperation.objects.get(reference=ref)
    figure("503, 503, then 201", proxy, effects(provider_db, ref), operation)
    assert proxy.seen == ["503", "503", "pass"]
    assert outcome.status == 201 and not outcome.replayed
    assert effects(provider_db, ref) == 1
    assert list(operation.attempt_set.values_list("status", flat=True)) == [503, 503, 201]
    assert operation.state == "succeeded"


def test_the_attempt_budget_is_honoured(proxy: Proxy, provider_db: Database) -> None:
    proxy.reset(*["503"] * 20)
    ref = reference()
    policy = RetryPolicy(max_attempts=3, max_seconds=30, base_delay=0.05, max_delay=0.2)
    provider = Provider(RequestsTransport(), policy=policy)

    with pytest.raises(OutcomeUnknown, match="after 3 attempt"):
        call(provider, "charge", ref, "POST", proxy.url("/payments/"), json=payment(ref))

    operation = OutgoingOperation.objects.get(reference=ref)
    figure("attempt budget 3, always 503", proxy, effects(provider_db, ref), operation)
    assert proxy.seen == ["503"] * 3
    assert effects(provider_db, ref) == 0
    assert (operation.state, operation.attempts, operation.response_status) == ("unknown", 3, 503)


def test_the_time_budget_is_honoured(proxy: Proxy, provider_db: Database) -> None:
    proxy.reset(*["503"] * 200)
    ref = reference()
    policy = RetryPolicy(max_attempts=100, max_seconds=1.5, base_delay=0.2, max_delay=0.4)
    provider = Provider(RequestsTransport(), policy=policy)

    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        call(provider, "charge", ref, "POST", proxy.url("/payments/"), json=payment(ref))
    elapsed = time.monotonic() - started

    operation = OutgoingOperation.objects.get(reference=ref)
    figure(f"time budget 1.5 s, always 503 ({elapsed:.1f} s)", proxy, 0, operation)
    # Never a retry that starts past the budget: generous bounds, not a benchmark.
    assert elapsed < 1.5 + 10
    assert 2 <= len(proxy.seen) < 100
    assert operation.state == "unknown" and operation.attempts == len(proxy.seen)


# -- a client SIGKILLed mid-operation, resumed by the command -----------------------------


def _database_url() -> str:
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(settings['NAME']).resolve()}"
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[connection.vendor]
    user = settings.get("USER") or ""
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    at = f"{user}{password}@" if user else ""
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    return f"{scheme}://{at}{settings.get('HOST') or '127.0.0.1'}{port}/{settings['NAME']}"


CHILD = textwrap.dedent(
    """
    import sys
    import django

    django.setup()
    from idempotency.client import Provider, RetryPolicy, call
    from idempotency.client.requests import RequestsTransport

    url, ref = sys.argv[1], sys.argv[2]
    provider = Provider(
        RequestsTransport(),
        policy=RetryPolicy(max_attempts=3, max_seconds=3),
        timeout=3,
        lease_margin=0.5,
    )
    body = {"amount": "12.50", "currency": "EUR", "reference": ref}
    call(provider, "charge", ref, "POST", url, json=body)
    print("the call returned")
    """
)


def test_a_client_killed_mid_operation_is_resumed_by_the_command(
    proxy: Proxy, provider_db: Database
) -> None:
    if connection.vendor == "sqlite" and "memory" in str(connection.settings_dict["NAME"]):
        pytest.skip("the child process needs a database file, not an in-memory one")
    proxy.reset("hold")
    ref = reference()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))},
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": _database_url(),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "testproject")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, proxy.url("/payments/"), ref],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proxy.answered.wait(60), child.stderr.read() if child.poll() is not None else ""
        os.kill(child.pid, signal.SIGKILL)  # the provider has committed; the child never knows
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    assert child.returncode == -signal.SIGKILL
    proxy.release.set()

    operation = OutgoingOperation.objects.get(reference=ref)
    left = (operation.state, operation.attempts, operation.response_status)
    assert left == ("pending", 1, None)
    assert list(operation.attempt_set.values_list("finished_at", flat=True)) == [None]
    assert effects(provider_db, ref) == 1

    register("charge", Provider(RequestsTransport(), policy=POLICY))
    try:
        # Its lease (3 s budget, 3 s timeout, 0.5 s margin) must run out first: until
        # then the command leaves it alone, as it would a call still running.
        out = StringIO()
        call_command("resume_outgoing_operations", "--older-than", "0", stdout=out)
        assert out.getvalue().startswith("Resumed 0 outgoing operations")
        assert operation.lease_expires_at is not None
        deadline = time.monotonic() + 30
        while timezone.now() <= operation.lease_expires_at:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        out = StringIO()
        call_command("resume_outgoing_operations", "--older-than", "0", stdout=out)
    finally:
        unregister("charge")

    operation.refresh_from_db()
    figure("client SIGKILLed, then resumed", proxy, effects(provider_db, ref), operation)
    assert out.getvalue().startswith("Resumed 1 outgoing operation: 1 succeeded,")
    assert proxy.seen == ["hold", "pass"]
    assert effects(provider_db, ref) == 1
    assert (operation.state, operation.attempts, operation.response_status) == ("succeeded", 2, 201)
    assert list(operation.attempt_set.values_list("number", "status", "verdict")) == [
        (1, None, ""),
        (2, 201, "succeeded"),
    ]
    assert ["idempotent-replayed", "true"] in operation.response_headers


# -- a provider without idempotency support ------------------------------------------


def test_without_keys_a_lost_answer_is_never_sent_blind_and_reconcile_settles_it(
    proxy: Proxy, provider_db: Database
) -> None:
    from idempotency.client import Answer, ReconcileRequired

    proxy.reset("cut")
    ref = reference()
    url = proxy.url("/payments/")
    legacy = Provider(RequestsTransport(), header=None, policy=POLICY)

    with pytest.raises(OutcomeUnknown, match="not retried blind"):
        call(legacy, "post-entry", ref, "POST", url, json=payment(ref))
    with pytest.raises(ReconcileRequired):
        call(legacy, "post-entry", ref, "POST", url, json=payment(ref))
    assert proxy.seen == ["cut"]
    assert "Idempotency-Key" not in proxy_request_headers(proxy)

    def look_up(operation: OutgoingOperation) -> Answer | None:
        # The provider's own lookup by reference (here its database, read directly).
        rows = provider_db.query(
            "SELECT id FROM shop_payment WHERE reference = %s", (operation.reference,)
        )
        return Answer(200, {}, f'{{"id": {rows[0][0]}}}'.encode()) if rows else None

    reconciled = Provider(RequestsTransport(), header=None, policy=POLICY, reconcile=look_up)
    outcome = call(reconciled, "post-entry", ref, "POST", url, json=payment(ref))

    operation = OutgoingOperation.objects.get(name="post-entry", reference=ref)
    figure("no keys: lost answer, then reconciled", proxy, effects(provider_db, ref), operation)
    assert proxy.seen == ["cut"]
    assert effects(provider_db, ref) == 1
    assert outcome.succeeded and outcome.status == 200
    assert (operation.state, operation.attempts) == ("succeeded", 1)
