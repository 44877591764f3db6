import dataclasses
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from idempotency.conf import DEFAULTS, SETTINGS, Resolved, idempotency_settings
from tests.conftest import PREPARED_BY_DEFAULT


def test_defaults() -> None:
    with override_settings(IDEMPOTENCY={}):
        s = idempotency_settings.get()
    assert s.header == "Idempotency-Key"
    assert s.header_meta == "HTTP_IDEMPOTENCY_KEY"
    assert s.methods == frozenset({"POST", "PUT", "PATCH", "DELETE"})
    assert s.max_key_length == 255
    assert s.required is False
    assert s.ttl == 24 * 3600
    assert s.lock_timeout == 60
    assert s.mismatch_status == 409
    assert s.concurrent_wait == 0
    assert s.atomic is True
    assert s.scope_function is None
    assert s.credential_meta == ("HTTP_AUTHORIZATION", "HTTP_X_API_KEY")
    assert s.fingerprint_meta == ("CONTENT_TYPE",)
    assert s.database == "default"
    assert {408, 425, 429, 500, 503, 599} <= s.non_storable
    assert not {200, 201, 400, 404, 409, 422} & s.non_storable
    assert s.max_response_size == 4 * 1024 * 1024


def test_defaults_are_the_tables() -> None:
    expected = {setting.key: setting.default for setting in SETTINGS}
    if PREPARED_BY_DEFAULT:
        expected["PREPARED_STATEMENTS"] = True

    assert list(DEFAULTS.items()) == list(expected.items())


def test_every_resolved_attribute_comes_from_one_setting() -> None:
    attrs = [name for setting in SETTINGS for name in (setting.attr, *setting.derived)]

    assert len(attrs) == len(set(attrs))
    assert sorted(attrs) == sorted(field.name for field in dataclasses.fields(Resolved))


def test_a_changed_default_is_the_one_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DEFAULTS, "RETRY_AFTER", 7)
    with override_settings(IDEMPOTENCY={}):
        assert idempotency_settings.get().retry_after == 7
    with (
        override_settings(IDEMPOTENCY={"RETRY_AFTER": -1}),
        pytest.raises(ImproperlyConfigured, match="use the default 7"),
    ):
        idempotency_settings.get()


def test_resolved_settings_are_read_only() -> None:
    with override_settings(IDEMPOTENCY={}):
        s = idempotency_settings.get()
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.ttl = 1  # type: ignore[misc]


def test_reloads_on_setting_changed() -> None:
    with override_settings(IDEMPOTENCY={"TTL": timedelta(hours=1), "HEADER": "X-Request-Key"}):
        s = idempotency_settings.get()
        assert s.ttl == 3600
        assert s.header_meta == "HTTP_X_REQUEST_KEY"
    assert idempotency_settings.get().header == "Idempotency-Key"


def test_methods_are_upper_cased() -> None:
    with override_settings(IDEMPOTENCY={"METHODS": ["post", "patch"]}):
        assert idempotency_settings.get().methods == frozenset({"POST", "PATCH"})


def test_unknown_key_suggests_the_close_one() -> None:
    with (
        override_settings(IDEMPOTENCY={"LOCK_TIMOUT": 5}),
        pytest.raises(ImproperlyConfigured, match=r"'LOCK_TIMOUT'.*did you mean 'LOCK_TIMEOUT'"),
    ):
        idempotency_settings.get()


def test_unknown_key_without_a_close_match_lists_the_valid_ones() -> None:
    with (
        override_settings(IDEMPOTENCY={"ZZZZZZ": 1}),
        pytest.raises(ImproperlyConfigured, match="valid keys: HEADER, METHODS"),
    ):
        idempotency_settings.get()


def test_not_a_dict() -> None:
    with (
        override_settings(IDEMPOTENCY=[("TTL", 1)]),
        pytest.raises(ImproperlyConfigured, match="must be a dict"),
    ):
        idempotency_settings.get()


WRONG_VALUES = [
    ("HEADER", "", "an HTTP header name"),
    ("HEADER", "Idempotency Key", "an HTTP header name"),
    ("METHODS", "POST", "a list or tuple of strings"),
    ("METHODS", ["POST", 1], "non-empty strings"),
    ("METHODS", ["POST", "GET"], "unsafe methods only"),
    ("MAX_KEY_LENGTH", 0, "from 1 to 255"),
    ("MAX_KEY_LENGTH", 256, "from 1 to 255"),
    ("MAX_KEY_LENGTH", "255", "from 1 to 255"),
    ("REQUIRED", "yes", "True or False"),
    ("REQUIRED", 1, "True or False"),
    ("TTL", "1d", "a number of seconds or a datetime.timedelta"),
    ("TTL", 0, "positive"),
    ("TTL", True, "a number of seconds"),
    ("LOCK_TIMEOUT", -1, "positive"),
    ("MISMATCH_STATUS", 500, "from 400 to 499"),
    ("CONCURRENT_WAIT", -0.5, "zero or positive"),
    ("ATOMIC", None, "True or False"),
    ("SCOPE_FUNCTION", 42, "None, a callable or a dotted import path"),
    ("CREDENTIAL_HEADERS", ["X-API-Key", "X API Key"], "a list or tuple of HTTP header names"),
    ("CREDENTIAL_COOKIES", "sessionid", "a list or tuple of strings"),
    ("FINGERPRINT_HEADERS", "Content-Type", "a list or tuple of strings"),
    ("DATABASE", "", "a database alias"),
    ("NON_STORABLE_STATUSES", 500, "a collection of HTTP status codes"),
    ("NON_STORABLE_STATUSES", [500, 600], "from 100 to 599"),
    ("RETRY_AFTER", -1, "from 0 to 86400"),
    ("PROBLEM_TYPES", {"idempotency_key_bogus": "https://x"}, "keyed by error codes"),
    ("PROBLEM_TYPES", "https://x", "a dict of error code"),
    ("EXEMPT_PATHS", ["("], "valid regular expressions"),
    ("MAX_RESPONSE_SIZE", -1, "None or a number of bytes"),
    ("MAX_RESPONSE_SIZE", "4MB", "None or a number of bytes"),
    ("MAX_RESPONSE_SIZE", 1.5, "None or a number of bytes"),
    ("MAX_RESPONSE_SIZE", True, "None or a number of bytes"),
    ("PREPARED_STATEMENTS", "on", "True or False"),
]


def test_every_setting_has_a_wrong_value_case() -> None:
    tried = {name for name, _value, _message in WRONG_VALUES}

    assert [setting.key for setting in SETTINGS if setting.key not in tried] == []


@pytest.mark.parametrize(("name", "value", "message"), WRONG_VALUES)
def test_wrong_types_name_the_setting_and_hint(name: str, value: object, message: str) -> None:
    assert name in DEFAULTS
    with override_settings(IDEMPOTENCY={name: value}), pytest.raises(ImproperlyConfigured) as info:
        idempotency_settings.get()
    text = str(info.value)
    assert f"IDEMPOTENCY[{name!r}]" in text
    assert message in text
    assert "HINT" in text


def test_database_alias_must_exist() -> None:
    with (
        override_settings(IDEMPOTENCY={"DATABASE": "nowhere"}),
        pytest.raises(ImproperlyConfigured, match="'nowhere' is not in DATABASES"),
    ):
        idempotency_settings.get()


def test_scope_function_import_error_names_the_setting() -> None:
    with (
        override_settings(IDEMPOTENCY={"SCOPE_FUNCTION": "no.such.module.scope"}),
        pytest.raises(ImproperlyConfigured, match=r"SCOPE_FUNCTION.*could not be imported"),
    ):
        idempotency_settings.get()


def scope_by_tenant(request: object) -> str:
    return "tenant"


def test_scope_function_dotted_path_is_imported() -> None:
    with override_settings(IDEMPOTENCY={"SCOPE_FUNCTION": f"{__name__}.scope_by_tenant"}):
        assert idempotency_settings.get().scope_function is scope_by_tenant


def test_timedelta_and_problem_types() -> None:
    types = {"idempotency_key_locked": "https://api.example.com/errors/locked"}
    with override_settings(
        IDEMPOTENCY={"LOCK_TIMEOUT": timedelta(seconds=90), "PROBLEM_TYPES": types}
    ):
        s = idempotency_settings.get()
        assert s.lock_timeout == 90
        assert s.problem_types == types


@pytest.mark.parametrize("value", [None, 0, 1, 20 * 1024 * 1024])
def test_max_response_size_is_none_or_bytes(value: int | None) -> None:
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": value}):
        assert idempotency_settings.get().max_response_size == value
