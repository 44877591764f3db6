from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from idempotency.models import IdempotencyKey, IdempotencyResponse


@pytest.mark.django_db
def test_migrations_are_complete() -> None:
    out = StringIO()
    call_command("makemigrations", "idempotency", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def _key(**kwargs: object) -> IdempotencyKey:
    values: dict[str, object] = {
        "scope": "user:1",
        "key": "k",
        "fingerprint": "f" * 64,
        "method": "POST",
        "path": "/x/",
        "state": IdempotencyKey.State.COMPLETED,
        "expires_at": timezone.now(),
    }
    values.update(kwargs)
    return IdempotencyKey.objects.create(**values)


@pytest.mark.django_db
def test_scope_and_key_are_unique_together() -> None:
    _key()
    _key(scope="user:2")
    with pytest.raises(IntegrityError), transaction.atomic():
        _key()
    assert IdempotencyKey.objects.count() == 2


@pytest.mark.django_db
def test_response_goes_with_its_key() -> None:
    key = _key()
    IdempotencyResponse.objects.create(idempotency_key=key, status=201, body=b"{}")
    assert str(key) == "k (user:1)"
    assert str(key.response) == f"201 for {key.pk}"
    key.delete()
    assert IdempotencyResponse.objects.count() == 0
