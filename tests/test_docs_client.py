"""The "Calling other APIs safely" page documents every public name of the client."""

from __future__ import annotations

import re
from pathlib import Path

import idempotency.client
import idempotency.client.httpx
import idempotency.client.requests

PAGE = Path(__file__).resolve().parent.parent / "docs" / "client.rst"


def test_every_public_name_is_documented() -> None:
    text = PAGE.read_text()
    names = [
        *idempotency.client.__all__,
        *idempotency.client.requests.__all__,
        *idempotency.client.httpx.__all__,
        "OutgoingOperation",
        "OutgoingAttempt",
        "resume_outgoing_operations",
    ]

    def documented(name: str) -> bool:
        # ``name``, ``name(...)`` or ``module.name(...)``
        return re.search(rf"``(?:[\w.]+\.)?{re.escape(name)}(?:``|\()", text) is not None

    assert [name for name in names if not documented(name)] == []
    assert not documented("NoSuchName")


def test_the_page_is_in_the_toctree() -> None:
    index = (PAGE.parent / "index.rst").read_text()

    assert "\n   client\n" in index
