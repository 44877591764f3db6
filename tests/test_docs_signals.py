"""The metrics and logging examples of docs/signals.rst, run as written."""

from __future__ import annotations

import json
import logging
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, JsonResponse
from django.test import Client
from django.urls import path

from idempotency import signals
from idempotency.decorators import idempotent
from tests.helpers import new_key

prometheus_client = pytest.importorskip("prometheus_client")

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

PAGE = Path(__file__).resolve().parent.parent / "docs" / "signals.rst"


def _python_blocks() -> list[str]:
    text = PAGE.read_text()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
    return [textwrap.dedent(block) for block in blocks]


def _block_with(marker: str) -> str:
    found = [block for block in _python_blocks() if marker in block]
    assert len(found) == 1, f"one python block of docs/signals.rst holds {marker!r}"
    return found[0]


@idempotent
def pay(request: HttpRequest) -> JsonResponse:
    if request.GET.get("fail"):
        return JsonResponse({"error": "down"}, status=503)
    return JsonResponse({"ok": True}, status=201)


urlpatterns = [path("pay/", pay)]


@pytest.fixture(scope="module")
def metrics() -> Iterator[dict[str, Any]]:
    namespace: dict[str, Any] = {}
    exec(compile(_block_with("prometheus_client"), str(PAGE), "exec"), namespace)
    yield namespace
    for name in ("_stored", "_replayed", "_conflict", "_released", "_unavailable"):
        for signal in (
            signals.response_stored,
            signals.response_replayed,
            signals.conflict,
            signals.key_released,
            signals.store_unavailable,
        ):
            signal.disconnect(namespace[name])
    prometheus_client.REGISTRY.unregister(namespace["OUTCOMES"])
    prometheus_client.REGISTRY.unregister(namespace["STORED_SECONDS"])


def _sample(name: str, **labels: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def _post(key: str, body: bytes = b"{}", query: str = "") -> Any:
    return Client().post(
        f"/pay/{query}", body, content_type="application/json", headers={"Idempotency-Key": key}
    )


def test_the_metrics_example_counts_every_outcome(metrics: dict[str, Any]) -> None:
    before = {
        outcome: _sample("idempotency_requests_total", outcome=outcome, reason=reason)
        for outcome, reason in [
            ("stored", ""),
            ("replayed", ""),
            ("conflict", "mismatch"),
            ("released", "not_stored"),
        ]
    }
    observed = _sample("idempotency_stored_seconds_count")
    key = new_key()

    assert _post(key).status_code == 201
    assert _post(key).headers["Idempotent-Replayed"] == "true"
    assert _post(key, b'{"other": 1}').status_code == 409
    assert _post(new_key(), query="?fail=1").status_code == 503

    def delta(outcome: str, reason: str = "") -> float:
        now = _sample("idempotency_requests_total", outcome=outcome, reason=reason)
        return now - before[outcome]

    assert delta("stored") == 1
    assert delta("replayed") == 1
    assert delta("conflict", "mismatch") == 1
    assert delta("released", "not_stored") == 1
    assert _sample("idempotency_stored_seconds_count") - observed == 1


def test_the_json_formatter_example_writes_the_event_fields(caplog: Any) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_block_with("IdempotencyJSONFormatter"), str(PAGE), "exec"), namespace)
    formatter = namespace["IdempotencyJSONFormatter"]()
    assert namespace["LOGGING"]["loggers"]["idempotency"]["level"] == "INFO"
    key = new_key()

    with caplog.at_level(logging.INFO, logger="idempotency"):
        _post(key)
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "idempotency"]

    assert len(lines) == 1
    assert lines[0]["event"] == "stored"
    assert lines[0]["key"] == key
    assert lines[0]["status"] == 201
    assert lines[0]["method"] == "POST"
    assert lines[0]["path"] == "/pay/"
    assert lines[0]["level"] == "INFO"
