"""The reference pages list exactly what the code has: settings and system check ids."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from idempotency import checks as checks_module
from idempotency import signals
from idempotency.conf import CODES, SETTINGS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _table_keys(page: str) -> list[str]:
    """The first cell of every row of the page's list-tables, when it is a literal."""
    text = (DOCS / page).read_text()
    return re.findall(r"^   \* - ``([A-Za-z_.0-9]+)``", text, flags=re.MULTILINE)


def _settings_rows() -> list[str]:
    """The rows of the settings table, after the header row."""
    text = (DOCS / "settings.rst").read_text()
    return re.split(r"^   \* - ", text, flags=re.MULTILINE)[2:]


def _cells(row: str) -> list[str]:
    """The cells of a row after its first (the key)."""
    return re.findall(r"^     - (.+)$", row, flags=re.MULTILINE)


def test_settings_page_lists_every_setting_once_in_order() -> None:
    listed = [key for key in _table_keys("settings.rst") if key != "Key"]

    assert listed == [setting.key for setting in SETTINGS]


def test_settings_page_gives_every_row_a_type_and_a_default() -> None:
    rows = _settings_rows()

    assert len(rows) == len(SETTINGS)
    for row in rows:
        cells = _cells(row)
        assert len(cells) == 3, row  # type, default, meaning
        assert all(cell.strip() for cell in cells), row


def test_settings_page_gives_the_defaults_of_the_table() -> None:
    documented = {}
    for setting, row in zip(SETTINGS, _settings_rows(), strict=True):
        # A default written as a Python literal, lists for tuples; the others are
        # prose ("POST, PUT, PATCH, DELETE").
        literal = re.match(r"``([^`]+)``", _cells(row)[1])
        if literal is not None:
            documented[setting.key] = ast.literal_eval(literal[1])
    table = {setting.key: setting.default for setting in SETTINGS}
    wrong = {
        key: value
        for key, value in documented.items()
        if value != (list(table[key]) if isinstance(table[key], tuple) else table[key])
    }

    assert len(documented) > len(SETTINGS) // 2
    assert wrong == {}


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
