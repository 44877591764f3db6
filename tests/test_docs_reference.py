"""The reference pages list exactly what the code has: settings and system check ids."""

from __future__ import annotations

import re
from pathlib import Path

from idempotency import checks as checks_module
from idempotency import signals
from idempotency.conf import CODES, DEFAULTS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _table_keys(page: str) -> list[str]:
    """The first cell of every row of the page's list-tables, when it is a literal."""
    text = (DOCS / page).read_text()
    return re.findall(r"^   \* - ``([A-Za-z_.0-9]+)``", text, flags=re.MULTILINE)


def test_settings_page_lists_every_setting_once() -> None:
    listed = [key for key in _table_keys("settings.rst") if key != "Key"]

    assert sorted(listed) == sorted(DEFAULTS)


def test_settings_page_gives_every_row_a_type_and_a_default() -> None:
    text = (DOCS / "settings.rst").read_text()
    rows = re.split(r"^   \* - ", text, flags=re.MULTILINE)[2:]  # after the header row

    assert len(rows) == len(DEFAULTS)
    for row in rows:
        cells = re.findall(r"^     - (.+)$", row, flags=re.MULTILINE)
        assert len(cells) == 3, row  # type, default, meaning
        assert all(cell.strip() for cell in cells), row


def test_checks_page_documents_every_check_id() -> None:
    source = Path(checks_module.__file__).read_text()
    ids = set(re.findall(r"idempotency\.[EW]\d{3}", source))
    text = (DOCS / "checks.rst").read_text()

    assert ids
    assert {i for i in ids if i not in text} == set()


def test_errors_page_documents_every_code() -> None:
    text = (DOCS / "errors.rst").read_text()

    assert {code for code in CODES if f"``{code}``" not in text} == set()


def test_signals_page_documents_every_signal() -> None:
    text = (DOCS / "signals.rst").read_text()

    assert {name for name in signals.__all__ if f"``{name}``" not in text} == set()
