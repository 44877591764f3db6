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


# Differ only in letter case, in trailing spaces, or in accents: two operations each,
# also on a MariaDB/MySQL server whose default collation (the test database is created
# with it) is case- and accent-insensitive and pads spaces.
NEAR_TWINS = [("Key", "key"), ("k ", "k"), ("k", "k  "), ("é", "e"), ("ß", "ss")]


@pytest.mark.django_db
@pytest.mark.parametrize(("first", "second"), NEAR_TWINS)
def test_keys_compare_byte_for_byte(first: str, second: str) -> None:
    _key(key=first)
    _key(key=second)
    assert sorted(IdempotencyKey.objects.values_list("key", flat=True)) == sorted([first, second])
    assert IdempotencyKey.objects.get(key=first).key == first
    assert IdempotencyKey.objects.get(key=second).key == second


@pytest.mark.django_db
@pytest.mark.parametrize(("first", "second"), NEAR_TWINS)
def test_scopes_compare_byte_for_byte(first: str, second: str) -> None:
    _key(scope=first)
    _key(scope=second)
    assert IdempotencyKey.objects.filter(key="k").count() == 2
    assert IdempotencyKey.objects.get(scope=first).scope == first
