"""How answers are judged and retries are spaced: :class:`RetryPolicy` and :func:`classify`.

Only the standard library is imported here.
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from idempotency.problems import DRAFT

__all__ = [
    "Answer",
    "RetryPolicy",
    "Verdict",
    "classify",
    "parse_retry_after",
]

#: Problem ``code`` values that say "this key was used for a different request".
MISMATCH_CODES = frozenset({"idempotency_key_mismatch"})
#: Problem ``code`` values that say "a request with this key is still running".
LOCKED_CODES = frozenset({"idempotency_key_locked"})
#: The IETF draft's sections, as the ``type`` URIs of its problems end.
DRAFT_MISMATCH_SECTION = "#section-2.2"
DRAFT_LOCKED_SECTION = "#section-2.6"
#: Answers worth the identical request again: the provider did not run it, or ran it
#: and will replay it (under a key).
TRANSIENT_STATUSES = frozenset({408, 425, 429, *range(500, 600)})


class Verdict(str, enum.Enum):
    """What an answer means for its operation."""

    #: Done: a 2xx, or an answer the caller's classifier counts as success.
    SUCCEEDED = "succeeded"
    #: Definitive and not a success: a 4xx other than the transient ones. Not retried.
    FAILED = "failed"
    #: The provider saw this key with a different request: a programming error.
    MISMATCH = "mismatch"
    #: Transient: the identical request again, after a delay.
    RETRY = "retry"


HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]]


class Headers(dict[str, str]):
    """Header names in lower case, looked up in any case: ``headers["Retry-After"]``."""

    def __init__(self, pairs: HeaderInput = ()) -> None:
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        super().__init__((str(name).lower(), str(value)) for name, value in items)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class Answer:
    """A provider's answer, whichever HTTP client fetched it: ``status``, ``headers``
    (looked up in any case) and ``body`` bytes."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: HeaderInput = (), body: bytes = b"") -> None:
        self.status = status
        self.headers: Headers = Headers(headers)
        self.body = bytes(body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {dict(self.headers)!r}, {self.body[:60]!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Answer):
            return NotImplemented
        return (self.status, self.headers, self.body) == (other.status, other.headers, other.body)

    __hash__ = None  # type: ignore[assignment]

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` when it is not JSON."""
        return json.loads(self.body)

    def problem(self) -> dict[str, Any]:
        """The body as an RFC 9457 problem (or any JSON object); ``{}`` otherwise."""
        try:
            data = self.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def replayed(self) -> bool:
        """The provider answered from its store (``Idempotent-Replayed: true``)."""
        return str(self.headers.get("Idempotent-Replayed", "")).lower() == "true"


def _draft_type(value: Any, section: str) -> bool:
    return isinstance(value, str) and value.startswith(DRAFT) and value.endswith(section)


def classify(answer: Answer) -> Verdict:
    """The default judgement of an answer.

    - 2xx: :attr:`Verdict.SUCCEEDED`.
    - A mismatch, by this app's ``code`` (``idempotency_key_mismatch``, 409 or 422) or
      the IETF draft's problem ``type`` (section 2.2): :attr:`Verdict.MISMATCH`.
    - A 409 for a request still running (``idempotency_key_locked``, or the draft's
      section 2.6): :attr:`Verdict.RETRY`.
    - 408, 425, 429 and 5xx (``idempotency_store_unavailable`` among them):
      :attr:`Verdict.RETRY`.
    - Anything else, a bare 409 included: :attr:`Verdict.FAILED`.
    """
    status = answer.status
    if 200 <= status < 300:
        return Verdict.SUCCEEDED
    if 400 <= status < 500:
        problem = answer.problem()
        code, kind = problem.get("code"), problem.get("type")
        if code in MISMATCH_CODES or _draft_type(kind, DRAFT_MISMATCH_SECTION):
            return Verdict.MISMATCH
        if status == 409 and (code in LOCKED_CODES or _draft_type(kind, DRAFT_LOCKED_SECTION)):
            return Verdict.RETRY
    if status in TRANSIENT_STATUSES:
        return Verdict.RETRY
    return Verdict.FAILED


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds from ``now``: delay-seconds or an HTTP-date.

    None when absent or malformed; 0 for a date in the past.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max((when - now).total_seconds(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long an operation is tried in one call.

    ``max_attempts`` requests at most, and no retry that would start after
    ``max_seconds`` from the first. Between attempts: ``Retry-After`` where the
    answer has one; 100-500 ms after a locked 409 without one; otherwise full
    jitter, a random delay from 0 to ``min(max_delay, base_delay * 2 ** (n - 1))``
    after the ``n``-th attempt. A ``Retry-After`` longer than the budget left ends
    the call instead of sleeping past it.
    """

    max_attempts: int = 5
    max_seconds: float = 30.0
    base_delay: float = 0.2
    max_delay: float = 5.0
    locked_delay: tuple[float, float] = (0.1, 0.5)
    random: Callable[[float, float], float] = field(default=random.uniform, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be 1 or more.")
        if self.max_seconds <= 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy needs a positive max_seconds and delays of 0 or more.")

    def delay(self, attempt: int, answer: Answer | None = None) -> float:
        """Seconds to wait after attempt number ``attempt`` (1 for the first)."""
        if answer is not None:
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            if retry_after is not None:
                return retry_after
            if answer.status == 409:
                return self.random(*self.locked_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(attempt - 1, 0))
        return self.random(0.0, ceiling)
