"""Hostile input, in process: odd keys, methods and bodies never get a 5xx or leave rows behind.

Property-based (hypothesis) against the testproject through Django's test ``Client``:

- every answer is below 500;
- every answer the idempotency layer makes itself is an RFC 9457 problem (4xx,
  ``application/problem+json``, a known ``code``) and leaves no row at all;
- a 2xx leaves exactly one key row, one stored response and one business row;
- any other 4xx (the view's own) creates no business row; if it was stored, a retry
  gets it back byte for byte;
- a valid key with a valid body gets 201 and its retry is replayed byte-identically.

Each example gets a namespace of its own (a fresh ``Authorization`` value, which is the
scope of anonymous requests, or a fresh token user), so keys may be anything at all and
examples never meet each other's rows. The webhook is the exception: its deliveries share
one scope, so each webhook example first frees the id it sends. ``STRESS_EXAMPLES`` sets
the examples per property.
"""

from __future__ import annotations

import json
import os
import string
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from typing import Any, NamedTuple

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.http import HttpRequest
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from shop.models import Order, Payment, WebhookEvent
from shop.views import webhook_scope

from idempotency.conf import CODES
from idempotency.models import IdempotencyKey, IdempotencyResponse
from tests.helpers import assert_problem
from tests.stress.harness import record

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("testproject.urls")]

EXAMPLES = int(os.environ.get("STRESS_EXAMPLES", "").strip() or 150)
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

PAYMENTS = "/payments/"
ORDERS = "/api/orders/"
WEBHOOK = "/webhooks/events/"
PROTECTED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_KEY = 255
PROBLEM = "application/problem+json"
REPLAYED = "Idempotent-Replayed"

_examples: Counter[str] = Counter()


def _count(prop: str) -> None:
    _examples[prop] += 1


@pytest.fixture(scope="module", autouse=True)
def _example_report(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    total = sum(_examples.values())
    line = f"hostile input: {total} examples across {len(_examples)} properties"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    else:
        print(line)
    record(
        f"5. hostile input, in-process/{connection.vendor}",
        requests=sum(_answers.values()),
        server_errors=_answers["5xx"],
        seconds=time.monotonic() - started,
        notes=(
            f"{total} hypothesis examples ({EXAMPLES} per property, {len(_examples)} "
            f"properties); problem+json 4xx: {_answers['problem']}, 2xx: {_answers['2']}, "
            f"other 4xx: {_answers['4']}"
        ),
    )


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Rows:
    keys: int
    live_keys: int  # running or completed: everything but released keys
    responses: int
    payments: int
    orders: int
    events: int

    def __sub__(self, other: Rows) -> Rows:
        return Rows(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


NO_CHANGE = Rows(0, 0, 0, 0, 0, 0)
BUSINESS = {PAYMENTS: "payments", ORDERS: "orders", WEBHOOK: "events"}


def rows() -> Rows:
    """All counts in one statement."""
    q = connection.ops.quote_name
    keys = q(IdempotencyKey._meta.db_table)
    state = q(IdempotencyKey._meta.get_field("state").column)
    tables = [IdempotencyResponse, Payment, Order, WebhookEvent]
    parts = [f"(SELECT COUNT(*) FROM {keys})", f"(SELECT COUNT(*) FROM {keys} WHERE {state} <> %s)"]
    parts += [f"(SELECT COUNT(*) FROM {q(model._meta.db_table)})" for model in tables]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), [IdempotencyKey.State.RELEASED.value])
        return Rows(*(int(n) for n in cursor.fetchone()))


# -------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    body: bytes = b""
    content_type: str = "application/json"
    meta: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        meta = dict(self.meta)
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return (
            f"{self.method!r} {self.path} content_type={self.content_type!r} "
            f"meta={ {k: (v if len(v) <= 300 else v[:300] + '...') for k, v in meta.items()} } "
            f"body({len(self.body)})={body!r}"
        )


#: Every answer, by kind: the summary row of the stress results.
_answers: Counter[str] = Counter()


def send(web: Client, req: Req) -> Any:
    response = web.generic(
        req.method, req.path, req.body, content_type=req.content_type, **dict(req.meta)
    )
    status = response.status_code
    _answers[
        "5xx" if status >= 500 else "problem" if is_problem(response) else str(status // 100)
    ] += 1
    return response


def answer(response: Any) -> str:
    text = f"{response.status_code} {response.get('Content-Type')} {response.content[:300]!r}"
    exc_info = getattr(response, "exc_info", None)
    if exc_info:
        text += f" raised {exc_info[1]!r}"
    return text


def is_problem(response: Any) -> bool:
    return str(response.get("Content-Type", "")).split(";")[0].strip() == PROBLEM


def headers_of(response: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in response.headers.items()}


def assert_replays(web: Client, req: Req, first: Any) -> None:
    """The retry of a stored request gets the same status, bytes and headers, and writes nothing."""
    before = rows()
    again = send(web, req)
    after = rows()
    where = f"{req.describe()}\nfirst: {answer(first)}\nretry: {answer(again)}"
    assert again.status_code == first.status_code, where
    assert again.content == first.content, where
    assert again.get(REPLAYED) == "true", where
    replayed = headers_of(again)
    replayed.pop(REPLAYED.lower())
    assert replayed == headers_of(first), where
    assert after - before == NO_CHANGE, where


class Outcome(NamedTuple):
    response: Any
    kind: str
    delta: Rows


def check(
    web: Client,
    req: Req,
    *,
    claims: bool | None,
) -> Outcome:
    """Send ``req`` once and check the invariants every answer must keep.

    ``claims``: True when the request carries a usable key for a protected method, so
    that a stored answer is possible; False when no key row may appear at all; None
    when it cannot be told beforehand (e.g. DRF auth decides). Returns the response
    its kind: ``"problem"``, ``"success"`` or ``"refused"`` (the view's own 4xx), and
    the row changes.
    """
    before = rows()
    response = send(web, req)
    after = rows()
    delta = after - before
    where = f"{req.describe()}\nanswer: {answer(response)}\nrow changes: {delta}"
    assert response.status_code < 500, where
    assert response.get(REPLAYED) is None, where

    if is_problem(response):
        assert 400 <= response.status_code < 500, where
        body = json.loads(response.content)
        assert body.get("code") in CODES, where
        assert_problem(response, response.status_code, body["code"])
        assert delta == NO_CHANGE, where
        event(f"problem {response.status_code} {body['code']}")
        return Outcome(response, "problem", delta)

    business = BUSINESS.get(req.path)
    others = {name: getattr(delta, name) for name in BUSINESS.values() if name != business}
    assert set(others.values()) == {0}, where
    if 200 <= response.status_code < 300:
        if claims is False:
            assert (delta.keys, delta.live_keys, delta.responses) == (0, 0, 0), where
        elif claims is True:
            assert (delta.keys, delta.live_keys, delta.responses) == (1, 1, 1), where
        if req.method.upper() == "POST" and business is not None:
            if business == "events":
                assert getattr(delta, business) in (0, 1), where
            else:
                assert getattr(delta, business) == 1, where
        elif business is not None:
            assert getattr(delta, business) == 0, where
        kind = "success"
    else:
        assert 400 <= response.status_code < 500, where
        if business is not None:
            assert getattr(delta, business) == 0, where
        if claims is False:
            assert (delta.keys, delta.live_keys, delta.responses) == (0, 0, 0), where
        else:
            # The view answered: stored (a completed key and its response), or released.
            assert delta.keys in (0, 1), where
            assert delta.live_keys == delta.responses, where
            assert delta.responses in (0, 1), where
            assert delta.live_keys <= delta.keys, where
        kind = "refused"

    if delta.responses == 1:
        assert_replays(web, req, response)
    event(f"{kind} {response.status_code}{' stored' if delta.responses else ''}")
    return Outcome(response, kind, delta)


def fresh_scope() -> tuple[str, str]:
    """An ``Authorization`` value no other example uses: the scope of an anonymous request."""
    return ("HTTP_AUTHORIZATION", f"Bearer hostile-{uuid.uuid4().hex}")


@pytest.fixture
def web() -> Client:
    return Client(raise_request_exception=False)


@pytest.fixture
def token_user(transactional_db: None) -> Callable[[], tuple[str, str]]:
    """Makes a user with an API token; returns the ``Authorization`` META item."""

    def make() -> tuple[str, str]:
        user = User.objects.create(username=f"hostile-{uuid.uuid4().hex}")
        token = Token.objects.create(user=user)
        return ("HTTP_AUTHORIZATION", f"Token {token.key}")

    return make


def payment_body() -> bytes:
    return json.dumps(
        {"amount": "12.50", "currency": "EUR", "reference": uuid.uuid4().hex}
    ).encode()


def order_body() -> bytes:
    return json.dumps(
        {"item": f"hostile-{uuid.uuid4().hex}", "quantity": 2, "amount": "9.99"}
    ).encode()


# ------------------------------------------------------------------- the key header

PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"

printable = st.text(alphabet=PRINTABLE, max_size=300)
tokens = st.text(alphabet=TCHAR, min_size=1, max_size=64)
padding = st.text(alphabet=" ", max_size=3)


def sf_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


sf_strings = st.builds(
    lambda before, text, after: before + sf_quote(text) + after, padding, printable, padding
)
bad_sf_strings = st.one_of(
    st.builds(lambda text: '"' + text.replace('"', ""), printable),  # no closing quote
    st.builds(
        lambda a, esc, b: sf_quote(a)[:-1] + "\\" + esc + b.replace('"', "") + '"',
        printable,
        st.sampled_from([*"nrt0'a/ u", "\x7f"]),
        printable,
    ),
    st.builds(
        lambda text, junk: sf_quote(text) + junk,
        printable,
        st.sampled_from([";a=1", ";a", '; a="b"', ";a=1;b=?0", " x", '"', "junk", ' "second"']),
    ),
)
separators = st.sampled_from([",", ", ", " , ", ",,", ", ,"])
members = st.one_of(tokens, st.builds(sf_quote, printable))
lists = st.builds(
    lambda items, sep: sep.join(items), st.lists(members, min_size=2, max_size=5), separators
)
repeated = st.builds(lambda value: f"{value}, {value}", st.one_of(tokens, sf_strings))
long_keys = st.one_of(
    st.builds(
        lambda chunk, n: (chunk * (n // len(chunk) + 1))[:n], tokens, st.integers(256, 10240)
    ),
    st.builds(lambda n: sf_quote("k" * n), st.integers(256, 10240)),
    st.just("k" * 10240),
    st.just(sf_quote("q" * 10240)),
    st.just(sf_quote('"' * MAX_KEY)),  # 255 escaped quotes: 514 characters, a valid key
    st.just("t" * MAX_KEY),
)
#: Keys around the longest allowed one, bare and as sf-strings (with escapes).
boundary_keys = st.one_of(
    st.builds(lambda n: "b" * n, st.integers(MAX_KEY - 2, MAX_KEY + 2)),
    st.builds(lambda n: sf_quote("q" * n), st.integers(MAX_KEY - 2, MAX_KEY + 2)),
    st.builds(
        lambda n: sf_quote('\\"' * (n // 2) + "x" * (n % 2)), st.integers(MAX_KEY - 2, MAX_KEY + 2)
    ),
)
blank = st.one_of(
    st.sampled_from(["", " ", "   ", "\t", " \t ", '""', '" "', "\r\n", "\x0b", "\x0c"]),
    st.text(alphabet=" \t\r\n\x0b\x0c", max_size=20),
)
controls = st.one_of(
    st.sampled_from(["\x00", "\x7f", "\t", "\r", "\n", "\x1b", "\x80", "\xa0", "\xff"]),
    st.sampled_from([chr(c) for c in range(256) if not 0x20 <= c <= 0x7E]),
)
with_controls = st.builds(
    lambda left, char, right: left + char + right,
    st.one_of(tokens, st.just("")),
    controls,
    st.one_of(tokens, st.just("")),
)
with_nul = st.builds(lambda a, b: a + "\x00" + b, st.one_of(tokens, st.just("")), tokens)
latin1_bytes = st.binary(max_size=300).map(lambda raw: raw.decode("latin-1"))

header_values = st.one_of(
    latin1_bytes,
    printable,
    tokens,
    st.builds(lambda a, t, b: a + t + b, padding, tokens, padding),
    sf_strings,
    bad_sf_strings,
    lists,
    repeated,
    long_keys,
    boundary_keys,
    blank,
    with_controls,
    with_nul,
)


@dataclass(frozen=True)
class Expected:
    """What the contract says about one header value: ``valid`` True, False or None (either)."""

    valid: bool | None
    key: str | None = None


def expected_key(raw: str) -> Expected:
    """The contract (SPEC section 3, RFC 9651 sf-string), written down independently."""
    if any(not " " <= char <= "~" for char in raw):
        return Expected(False)
    value = raw.strip(" ")
    if not value.startswith('"'):
        if "," in value:
            return Expected(False)
        key = value
    else:
        chars: list[str] = []
        i, rest = 1, None
        while i < len(value):
            char = value[i]
            if char == "\\":
                nxt = value[i + 1 : i + 2]
                if nxt not in ('"', "\\"):
                    return Expected(None)  # a malformed sf-string
                chars.append(nxt)
                i += 2
            elif char == '"':
                rest = value[i + 1 :]
                break
            else:
                chars.append(char)
                i += 1
        if rest is None:
            # No closing quote: not an sf-string; refusing it is fine, and so is a bare key.
            return Expected(None)
        if rest.strip(" "):
            # A list, a second value or parameters after the sf-string.
            if rest.lstrip(" ").startswith(","):
                return Expected(False)
            return Expected(None, "".join(chars))
        key = "".join(chars)
    if not key or len(key) > MAX_KEY:
        return Expected(False)
    if len(raw) > 2 * MAX_KEY + 16:
        return Expected(None, key)  # a valid key under a lot of padding
    return Expected(True, key)


@HYPOTHESIS
@given(raw=header_values, endpoint=st.sampled_from([PAYMENTS, ORDERS]))
def test_idempotency_key_header_values(
    web: Client, token_user: Callable[[], tuple[str, str]], raw: str, endpoint: str
) -> None:
    """Any header value: a 400 problem for an invalid key, else one stored run and its replay."""
    _count("key header")
    scope = fresh_scope() if endpoint == PAYMENTS else token_user()
    body = payment_body() if endpoint == PAYMENTS else order_body()
    req = Req("POST", endpoint, body, meta=(scope, ("HTTP_IDEMPOTENCY_KEY", raw)))
    expected = expected_key(raw)
    response, kind, _ = check(web, req, claims=expected.valid is not False)
    where = f"{req.describe()}\nexpected {expected}\nanswer: {answer(response)}"
    if expected.valid is False:
        assert_problem(response, 400, "idempotency_key_invalid")
        return
    if kind == "problem":
        assert expected.valid is None, where
        assert_problem(response, 400, "idempotency_key_invalid")
        return
    assert response.status_code == 201, where
    assert expected.key is not None
    newest = IdempotencyKey.objects.order_by("-id").first()
    assert newest is not None, where
    assert newest.key in (expected.key, raw.strip(" ")), where
    assert (newest.method, newest.path) == ("POST", endpoint), where
    if expected.valid:
        # The sf-string and the bare form of one key are one key.
        key = expected.key
        if not raw.strip(" ").startswith('"'):
            other: str | None = sf_quote(key)
        elif key == key.strip(" ") and "," not in key and not key.startswith('"'):
            other = key
        else:
            other = None
        if other is not None:
            alt = Req("POST", endpoint, body, meta=(scope, ("HTTP_IDEMPOTENCY_KEY", other)))
            assert_replays(web, alt, response)


# ------------------------------------------------------------ a valid key replays


@HYPOTHESIS
@given(
    key=st.text(alphabet=PRINTABLE, min_size=1, max_size=MAX_KEY - 33),
    quoted=st.booleans(),
    endpoint=st.sampled_from([PAYMENTS, ORDERS]),
    amount=st.decimals(min_value="0.01", max_value="99999999.99", places=2),
    reference=st.text(max_size=100).filter(lambda s: "\x00" not in s),
    retries=st.integers(1, 3),
)
def test_valid_request_succeeds_and_replays_byte_identically(
    web: Client,
    token_user: Callable[[], tuple[str, str]],
    key: str,
    quoted: bool,
    endpoint: str,
    amount: Any,
    reference: str,
    retries: int,
) -> None:
    """A valid key (bare or sf-string) with a valid body: 201, and every retry gets the
    same status, headers and bytes back, and leaves the stored key as it was."""
    _count("valid replay")
    key = f"{uuid.uuid4().hex}-{key}"
    raw = sf_quote(key) if quoted or "," in key or key != key.strip(" ") else key
    if endpoint == PAYMENTS:
        scope = fresh_scope()
        payload = {"amount": str(amount), "currency": "usd", "reference": reference}
    else:
        scope = token_user()
        payload = {"item": "x" + reference[:99], "quantity": 3, "amount": str(amount)}
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    req = Req("POST", endpoint, body, meta=(scope, ("HTTP_IDEMPOTENCY_KEY", raw)))
    response, kind, _ = check(web, req, claims=True)
    assert (response.status_code, kind) == (201, "success"), f"{req.describe()}\n{answer(response)}"
    stored = IdempotencyKey.objects.filter(key=key).values().get()
    assert stored["state"] == IdempotencyKey.State.COMPLETED
    for _ in range(retries - 1):  # check() replayed it once already
        assert_replays(web, req, response)
    # Replays only read: the key's row is exactly as the first request left it.
    assert IdempotencyKey.objects.filter(key=key).values().get() == stored


# ------------------------------------------------------------------------ methods

protected_methods = st.sampled_from(
    ["POST", "PUT", "PATCH", "DELETE", "post", "put", "patch", "delete", "Post", "pOsT"]
)
odd_methods = st.one_of(
    protected_methods,
    protected_methods,
    protected_methods,
    st.sampled_from(["GET", "HEAD", "OPTIONS", "TRACE", "CONNECT", "get", "options"]),
    st.sampled_from(["PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK"]),
    st.sampled_from(["PURGE", "LINK", "UNLINK", "SEARCH", "QUERY", "REPORT", "M-POST"]),
    st.text(alphabet=TCHAR, min_size=17, max_size=300),
    st.text(alphabet=TCHAR, min_size=1, max_size=16),
)
method_keys = st.one_of(
    st.none(),
    st.just("fresh"),
    st.just("fresh"),
    st.sampled_from(["", " ", "a, b", '"unterminated', "bad\x00key", "k" * 300, "\xff\xfe"]),
)
method_bodies = st.sampled_from(["valid", "empty", "garbage", "wrong json"])
authorization = st.one_of(
    st.just("token"),
    st.just("token"),
    st.just("none"),
    st.just("bad token"),
    latin1_bytes.map(lambda value: "raw:" + value),
)
query_strings = st.one_of(st.just(""), latin1_bytes, printable)


@HYPOTHESIS
@given(
    method=odd_methods,
    endpoint=st.sampled_from([PAYMENTS, ORDERS, WEBHOOK]),
    key=method_keys,
    body_kind=method_bodies,
    auth=authorization,
    query=query_strings,
)
def test_methods(
    web: Client,
    token_user: Callable[[], tuple[str, str]],
    method: str,
    endpoint: str,
    key: str | None,
    body_kind: str,
    auth: str,
    query: str,
) -> None:
    """Any method, key, body and credentials: never a 5xx; the header only counts for
    POST, PUT, PATCH and DELETE."""
    _count("methods")
    unique = uuid.uuid4().hex
    meta: dict[str, str] = {}
    if auth == "token":
        meta.update([token_user()])
    elif auth == "bad token":
        meta["HTTP_AUTHORIZATION"] = f"Token {unique}"
    elif auth.startswith("raw:"):
        meta["HTTP_AUTHORIZATION"] = auth[4:]
    if endpoint != ORDERS and "HTTP_AUTHORIZATION" not in meta:
        meta.update([fresh_scope()])
    if key == "fresh":
        key = f"m-{unique}"
    if key is not None:
        meta["HTTP_IDEMPOTENCY_KEY"] = key
    if query:
        meta["QUERY_STRING"] = query
    valid = {
        PAYMENTS: payment_body,
        ORDERS: order_body,
        WEBHOOK: lambda: json.dumps({"id": f"evt-{unique}", "type": "t"}).encode(),
    }[endpoint]
    body = {
        "valid": valid(),
        "empty": b"",
        "garbage": b"\x00\xff\xfe garbage",
        "wrong json": b'{"amount": ',
    }[body_kind]
    req = Req(method, endpoint, body, meta=tuple(meta.items()))
    protected = method.upper() in PROTECTED_METHODS
    if endpoint == WEBHOOK:
        claims = None if method.upper() == "POST" else False
    elif not protected or key is None:
        claims = False
    else:
        claims = None
    response, kind, delta = check(web, req, claims=claims)
    where = f"{req.describe()}\nanswer: {answer(response)}\nrow changes: {delta}"
    if not protected:
        assert kind != "problem", where
    elif key is not None and endpoint != WEBHOOK and (endpoint == PAYMENTS or auth == "token"):
        valid_key = expected_key(key).valid
        if endpoint == ORDERS and method.upper() != "POST":
            # The DRF mixin leaves a method its view has no handler for to DRF's 405,
            # and claims nothing: a reused key there is not a mismatch, and a key
            # that is not valid is not read at all.
            assert response.status_code == 405, where
            assert delta.keys == 0 and delta.responses == 0, where
        elif valid_key is False:
            assert_problem(response, 400, "idempotency_key_invalid")
        elif valid_key:
            # Whatever the view answered (201, 400, 405) is stored under the key.
            assert kind != "problem", where
            assert delta.responses == 1, where
            stored = IdempotencyKey.objects.get(key=key)
            assert stored.method == method.upper(), where
    if endpoint == ORDERS and auth != "token":
        assert response.status_code in (401, 403), where
    if kind == "success":
        assert method.upper() in ("POST", "GET", "HEAD", "OPTIONS"), where


# ------------------------------------------------------------------------- bodies

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
hostile_strings = st.one_of(
    st.text(),
    st.sampled_from(
        ["\x00", "a\x00b", "\ud800", "\udfff", "x\udc80y", "\ufeff", "\u202e", "\U0001f600", "\\"]
    ),
    st.text(alphabet=st.characters(categories=["Cs", "Cc"]), min_size=1),
)


def dumps(value: Any, ascii_only: bool) -> bytes:
    # ensure_ascii writes lone surrogates as \ud800 escapes; without it they cannot be UTF-8.
    if ascii_only:
        return json.dumps(value).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def near_valid(fields: dict[str, Any]) -> dict[str, Any]:
    """A body both create views accept (each ignores the other's fields), then ``fields``."""
    base = {"amount": "1.00", "currency": "EUR", "reference": "r", "item": "x", "quantity": 1}
    return {**base, **fields}


field_values = st.one_of(hostile_strings, json_values)
hostile_objects = st.one_of(
    st.builds(
        lambda name, value: near_valid({name: value}),
        st.sampled_from(["amount", "currency", "reference", "item", "quantity"]),
        field_values,
    ),
    st.builds(lambda name, value: near_valid({name: value}), hostile_strings, field_values),
    st.dictionaries(hostile_strings, field_values, max_size=5),
)
json_bodies = st.builds(dumps, st.one_of(hostile_objects, json_values), st.booleans())
malformed_json = st.one_of(
    st.sampled_from(
        [
            b"{",
            b'{"amount": "1.00",}',
            b"{'amount': '1.00'}",
            b'{"amount": NaN, "currency": "EUR"}',
            b'{"amount": Infinity}',
            b'{"amount": "1.00" "currency": "EUR"}',
            b"\xef\xbb\xbf{}",
            b'{"a": "\\ud800"}',
            b'{"a": "\\u0000"}',
            b'{"a": "\\x41"}',
            b"[1, 2,]",
            b"null",
            b'"just a string"',
            b"1" * 5000,
            b'{"amount": 1' + b"0" * 5000 + b"}",
            b'{"amount": 1e999999999, "currency": "EUR"}',
            b'{"amount": 1e-999999999, "currency": "EUR"}',
        ]
    ),
    st.builds(lambda good, cut: good[:cut], json_bodies, st.integers(0, 40)),
)
non_utf8 = st.one_of(
    st.builds(
        lambda text: text.encode("latin-1"), st.text(alphabet=st.characters(codec="latin-1"))
    ),
    st.builds(
        lambda text: json.dumps({"reference": text}, ensure_ascii=False).encode("utf-16"),
        st.text(max_size=20),
    ),
    st.just(b'{"amount": "1.00", "currency": "EUR", "reference": "\xff\xfe"}'),
    st.just(b'{"item": "\xc3\x28", "quantity": 1, "amount": "1.00"}'),
)


def nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + "1" + closer * depth).encode()


def multipart(boundary: str, parts: list[tuple[str, str]], tail: str) -> bytes:
    out = ""
    for name, value in parts:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
    return (out + tail.format(boundary=boundary)).encode("utf-8", "surrogatepass")


boundaries = st.one_of(
    st.text(
        alphabet=string.ascii_letters + string.digits + "'()+_,-./:=? ", min_size=1, max_size=70
    ),
    st.sampled_from(["", " ", '"quoted"', "a" * 71, "a" * 5000, "\xff", "x\x00y", "--"]),
)
multipart_tails = st.sampled_from(["--{boundary}--\r\n", "", "--{boundary}", "--wrong--\r\n", "--"])
multipart_bodies = st.builds(
    lambda boundary, parts, tail, ct_boundary: (
        multipart(boundary, parts, tail),
        f"multipart/form-data; boundary={ct_boundary if ct_boundary is not None else boundary}",
    ),
    boundaries,
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=30)), max_size=4),
    multipart_tails,
    st.one_of(st.none(), boundaries),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/json; charset=utf-16",
            "application/json; charset=bogus",
            "text/plain",
            "application/octet-stream",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "",
        ]
    ),
    latin1_bytes,
)
plain_bodies = st.tuples(
    st.one_of(st.binary(max_size=2000), json_bodies, malformed_json, non_utf8), content_types
)
#: (depth, opener, content type): built in the test, so that the depth can depend on the endpoint.
nestings = st.tuples(st.integers(1, 100_000), st.sampled_from(["[", '{"a":']), content_types)


@HYPOTHESIS
@given(
    endpoint=st.sampled_from([PAYMENTS, ORDERS]),
    with_key=st.booleans(),
    sent=st.one_of(
        plain_bodies,
        st.tuples(st.builds(dumps, hostile_objects, st.booleans()), st.just("application/json")),
        multipart_bodies,
        nestings,
    ),
)
def test_bodies(
    web: Client,
    token_user: Callable[[], tuple[str, str]],
    endpoint: str,
    with_key: bool,
    sent: tuple[Any, ...],
) -> None:
    """Any body under any content type: never a 5xx; only a 2xx creates a business row."""
    _count("bodies")
    if len(sent) == 3:
        depth, opener, content_type = sent
        body = nested(depth, opener)
    else:
        body, content_type = sent
    scope = fresh_scope() if endpoint == PAYMENTS else token_user()
    meta = [scope]
    if with_key:
        meta.append(("HTTP_IDEMPOTENCY_KEY", f"b-{uuid.uuid4().hex}"))
    req = Req("POST", endpoint, body, content_type, tuple(meta))
    response, kind, delta = check(web, req, claims=with_key)
    where = f"{req.describe()}\nanswer: {answer(response)}\nrow changes: {delta}"
    assert kind != "problem", where
    if kind == "success":
        assert response.status_code == 201, where
    if with_key and response.get("Content-Type") == "application/json":
        # The view's own answer, 201 or 4xx, is stored (a Django error page is not).
        assert delta.responses == 1, where


# ------------------------------------------------------------------------ webhook

event_ids = st.one_of(
    st.text(alphabet=PRINTABLE, min_size=1, max_size=40),
    st.text(max_size=40),
    hostile_strings,
    st.integers(),
    st.integers(min_value=10**250, max_value=10**4000),
    st.builds(lambda n: "e" * n, st.integers(200, 20000)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["", " ", "\x00", "evt\x00", "\ud800", "\u00e9v\u00e9nement", "\U0001f4a5"]),
)


def refuse_constant(name: str) -> Any:
    raise ValueError(name)


def expected_event_key(body: bytes) -> Expected:
    """The webhook's key is the body's "id": an int or a non-empty string."""
    try:
        data = json.loads(body, parse_constant=refuse_constant)
    except (ValueError, RecursionError):
        return Expected(None)  # not JSON (NaN and Infinity are not JSON either)
    if not isinstance(data, dict):
        return Expected(None)
    event_id = data.get("id")
    if isinstance(event_id, bool) or not isinstance(event_id, int | str) or event_id == "":
        return Expected(None)
    key = str(event_id)
    if len(key) > MAX_KEY or any(not " " <= char <= "~" for char in key):
        return Expected(False, key)
    return Expected(True, key)


webhook_bodies = st.one_of(
    st.builds(
        lambda event_id, extra, unique, ascii_only: dumps(
            {
                "id": f"{uuid.uuid4().hex}-{event_id}"
                if unique and isinstance(event_id, str)
                else event_id,
                **extra,
            },
            ascii_only,
        ),
        event_ids,
        st.dictionaries(
            st.sampled_from(["type", "data", "created", "\x00", "\ud800"]), field_values, max_size=3
        ),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(lambda event_id: dumps([{"id": event_id}], True), event_ids),
    st.binary(max_size=200),
    malformed_json,
    st.builds(
        lambda depth: (
            b'{"id": "deep-'
            + uuid.uuid4().hex.encode()
            + b'", "data": '
            + nested(depth, "[")
            + b"}"
        ),
        # Shallow, or deep enough that no JSON parser in the request's stack gets through.
        st.one_of(st.integers(1, 100), st.integers(5000, 100_000)),
    ),
)


WEBHOOK_SCOPE = webhook_scope(HttpRequest())


@HYPOTHESIS
@given(
    body=webhook_bodies, content_type=st.sampled_from(["application/json", "text/plain", "\xff"])
)
def test_webhook_event_ids(web: Client, body: bytes, content_type: str) -> None:
    """The key is the body's "id": missing or unusable ids get a 400 problem, nothing stored."""
    _count("webhook ids")
    req = Req("POST", WEBHOOK, body, content_type, (fresh_scope(),))
    expected = expected_event_key(body)
    if expected.valid is True:
        # Deliveries share the webhook's scope: start from an unclaimed id, as a first
        # delivery does (the event itself may already be stored: that is the point).
        IdempotencyKey.objects.filter(scope=WEBHOOK_SCOPE, key=expected.key).delete()
    existed = expected.valid is True and WebhookEvent.objects.filter(event_id=expected.key).exists()
    response, kind, delta = check(web, req, claims=expected.valid is True)
    where = (
        f"{req.describe()}\nexpected {expected}\nanswer: {answer(response)}\nrow changes: {delta}"
    )
    if expected.valid is False:
        assert_problem(response, 400, "idempotency_key_invalid")
    elif expected.valid is None:
        assert_problem(response, 400, "idempotency_key_missing")
    else:
        # 200, or the view's 400 for a payload it cannot store: either way stored.
        assert kind != "problem", where
        assert delta.responses == 1, where
        if kind == "success":
            assert response.status_code == 200, where
            assert json.loads(response.content) == {"received": expected.key}, where
            assert WebhookEvent.objects.filter(event_id=expected.key).count() == 1, where
            assert delta.events == (0 if existed else 1), where
        else:
            assert delta.events == 0, where


# ------------------------------------------------------------------- explicit tests

TWENTY_MIB = 20 * 1024 * 1024


@pytest.mark.parametrize("endpoint", [PAYMENTS, ORDERS, WEBHOOK])
@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_twenty_mib_body(
    web: Client, token_user: Callable[[], tuple[str, str]], endpoint: str, with_key: bool
) -> None:
    """Beyond DATA_UPLOAD_MAX_MEMORY_SIZE: 413 problem with a key; a 4xx without; no rows."""
    unique = uuid.uuid4().hex
    body = b'{"id": "big-' + unique.encode() + b'", "pad": "' + b"x" * TWENTY_MIB + b'"}'
    meta = [token_user() if endpoint == ORDERS else fresh_scope()]
    if with_key:
        meta.append(("HTTP_IDEMPOTENCY_KEY", f"big-{unique}"))
    req = Req("POST", endpoint, body, meta=tuple(meta))
    before = rows()
    response = send(web, req)
    where = f"{req.describe()}\nanswer: {answer(response)}"
    assert rows() - before == NO_CHANGE, where
    if endpoint == WEBHOOK:
        # Its key is in the body, which is too large to read: the key is missing.
        assert_problem(response, 400, "idempotency_key_missing")
    elif with_key:
        assert_problem(response, 413, "idempotency_request_too_large")
    else:
        assert response.status_code == 400, where
        assert not is_problem(response), where


def webhook_with_overflowing_number() -> Req:
    body = b'{"id": "evt-' + uuid.uuid4().hex.encode() + b'", "data": 1e400}'
    return Req("POST", WEBHOOK, body, meta=(fresh_scope(),))


def orders_with_deep_nesting(authorization: tuple[str, str], with_key: bool) -> Req:
    meta = [authorization]
    if with_key:
        meta.append(("HTTP_IDEMPOTENCY_KEY", f"deep-{uuid.uuid4().hex}"))
    return Req("POST", ORDERS, b"[" * 100_000, meta=tuple(meta))


def test_webhook_overflowing_number_is_a_client_error(web: Client) -> None:
    # 1e400 is valid JSON that parses to float("inf"), which no JSON column stores.
    req = webhook_with_overflowing_number()
    response = send(web, req)
    assert response.status_code == 400, f"{req.describe()}\nanswer: {answer(response)}"


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_orders_deeply_nested_json_is_a_client_error(
    web: Client, token_user: Callable[[], tuple[str, str]], with_key: bool
) -> None:
    # Deep enough to exhaust Python's recursion limit in the JSON parser.
    req = orders_with_deep_nesting(token_user(), with_key)
    response = send(web, req)
    assert response.status_code == 400, f"{req.describe()}\nanswer: {answer(response)}"
