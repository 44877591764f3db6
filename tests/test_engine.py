"""The engine's table of what a request finds: the docs print it, and the claim obeys it."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from idempotency import engine
from idempotency.store import COMPLETED, RELEASED, RUNNING, Existing

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: How the docs' last column starts, for each outcome.
OUTCOME_WORDS = {
    "Locked": engine.LOCKED,
    "idempotency_key_mismatch": engine.MISMATCH,
    "Replay": engine.REPLAY,
    "Takeover": engine.TAKEOVER,
}


def _docs_rows() -> list[list[str]]:
    """The cells of the list-table under "What a request finds", header row left out."""
    text = (DOCS / "how-it-works.rst").read_text()
    section = text.split("\nWhat a request finds\n", 1)[1]
    table = section.split(".. list-table::", 1)[1]
    rows: list[list[str]] = []
    for line in table.splitlines()[1:]:
        if line and not line.startswith("   "):
            break  # the end of the directive
        if line.startswith("   * - "):
            rows.append([line[len("   * - ") :]])
        elif line.startswith("     - "):
            rows[-1].append(line[len("     - ") :])
        elif line.startswith("       ") and rows:
            rows[-1][-1] += " " + line.strip()
    return rows[1:]


def _outcome(cell: str) -> str:
    match = re.match(r"(?:``(?:409 )?)?(Locked|Replay|Takeover|idempotency_key_mismatch)", cell)
    assert match, cell
    return OUTCOME_WORDS[match.group(1)]


def test_the_docs_print_the_table_the_claim_looks_outcomes_up_in() -> None:
    rows = _docs_rows()
    new_key, found = rows[0], rows[1:]

    assert new_key[:3] == ["none", "\N{EN DASH}", "\N{EN DASH}"]
    assert "INSERT claims the key" in new_key[3]
    printed = [
        (state.strip("`"), fingerprint, lease_ttl, _outcome(what))
        for state, fingerprint, lease_ttl, what in found
    ]
    assert printed == list(engine.FINDINGS)


def test_the_table_gives_every_row_a_request_can_find_one_outcome() -> None:
    cases = set(itertools.product((RUNNING, COMPLETED, RELEASED), *[(True, False)] * 3))

    assert set(engine._OUTCOMES) == cases


def test_two_rows_that_cover_the_same_case_are_refused() -> None:
    overlapping = (
        (RUNNING, "same", "lease live", engine.LOCKED),
        (RUNNING, "any", "lease live, TTL passed", engine.TAKEOVER),
    )

    with pytest.raises(ValueError, match="Two rows"):
        engine._lookup(overlapping)


class _Store:
    """Finds ``row`` on every claim, and wins every takeover."""

    def __init__(self, row: Existing) -> None:
        self.row = row
        self.takeovers = 0

    def claim(self, **_: Any) -> Existing:
        return self.row

    def take_over(self, found: Existing, **_: Any) -> bool:
        self.takeovers += 1
        return True


@pytest.mark.parametrize(("state", "same", "live", "passed"), sorted(engine._OUTCOMES))
def test_the_claim_does_what_the_table_says(
    state: str, same: bool, live: bool, passed: bool
) -> None:
    row = Existing(
        id=7,
        fingerprint="f" * 64 if same else "0" * 64,
        state=state,
        fence=3,
        lease_live=live,
        expired=passed,
        status=201 if state == COMPLETED else None,
        headers=[["Content-Type", "application/json"]] if state == COMPLETED else None,
        body=b"{}" if state == COMPLETED else None,
    )
    store = _Store(row)

    result = engine._claim_once(store, "anonymous", "k", "f" * 64, "POST", "/", 10.0, 60.0)  # type: ignore[arg-type]

    expected = engine._OUTCOMES[state, same, live, passed]
    if expected == engine.TAKEOVER:
        assert result == engine._Claimed(7, 4)
        assert store.takeovers == 1
        return
    assert store.takeovers == 0
    if expected == engine.LOCKED:
        assert result is None
    elif expected == engine.MISMATCH:
        assert result == engine._Found(None, [], b"")
    else:
        assert result == engine._Found(201, [["Content-Type", "application/json"]], b"{}")
