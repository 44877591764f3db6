"""The system checks of ``idempotency/checks.py``: each called directly, then through
``manage.py check`` (``call_command("check")``), where the app registers them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.core import checks as django_checks
from django.core.checks import CheckMessage
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from idempotency import checks
from idempotency.middleware import IdempotencyMiddleware

ERROR = django_checks.ERROR
WARNING = django_checks.WARNING

OURS = "idempotency.middleware.IdempotencyMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
LOGIN_REQUIRED = "django.contrib.auth.middleware.LoginRequiredMiddleware"
SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
MESSAGES = "django.contrib.messages.middleware.MessageMiddleware"


class TenantIdempotencyMiddleware(IdempotencyMiddleware):
    pass


class TokenAuthenticationMiddleware(AuthenticationMiddleware):
    pass


class AppToStoreRouter:
    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return "store" if model._meta.app_label == "testapp" else None


class IdempotencyToStoreRouter:
    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return "store" if model._meta.app_label == "idempotency" else None


class EverythingToPrimaryRouter:
    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return "primary"


def scope_by_tenant(request: Any) -> str:
    return "tenant"


NOT_CALLABLE = "a string"


def ids(messages: list[CheckMessage]) -> list[tuple[str | None, int]]:
    return [(m.id, m.level) for m in messages]


def check(*args: str, **options: Any) -> tuple[str, str]:
    """Run ``manage.py check``; return what it wrote to stdout and stderr."""
    stdout, stderr = StringIO(), StringIO()
    call_command("check", *args, stdout=stdout, stderr=stderr, **options)
    return stdout.getvalue(), stderr.getvalue()


def check_fails(*args: str, **options: Any) -> str:
    """Run ``manage.py check`` expecting it to fail; return its report."""
    with pytest.raises(SystemCheckError) as info:
        check(*args, **options)
    return str(info.value)


@contextmanager
def databases(**aliases: dict[str, Any]) -> Iterator[None]:
    """DATABASES with ``aliases`` added or replaced.

    Only the settings change, not the connections: the checks read nothing else.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding setting DATABASES", UserWarning)
        with override_settings(DATABASES={**settings.DATABASES, **aliases}):
            yield


MEMORY = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}


# The check command runs database checks too (on SQLite since Django 6.1).
@pytest.mark.django_db
def test_the_testproject_passes_every_check() -> None:
    assert settings.MIDDLEWARE.index(OURS) > settings.MIDDLEWARE.index(AUTH)
    assert check() == ("System check identified no issues (0 silenced).\n", "")


def test_the_app_registers_its_checks_when_django_starts() -> None:
    # In a fresh interpreter, where nothing but the app's ready() imports the checks:
    # Django refuses a tag that no check carries.
    manage = Path(__file__).resolve().parent.parent / "testproject" / "manage.py"
    done = subprocess.run(
        [sys.executable, str(manage), "check", "--tag", "idempotency"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "System check identified no issues (0 silenced).\n"


# Since Django 6.1 a tag selects database checks too (idempotency.W007).
@pytest.mark.django_db
def test_the_checks_have_their_own_tag() -> None:
    with override_settings(IDEMPOTENCY={"MISMATCH_STATUS": 400}):
        out, err = check("--tag", "idempotency")
    assert "idempotency.W004" in err
    assert "System check identified 1 issue (0 silenced)." in err
    assert out == ""


# ---------------------------------------------------------------- middleware


def test_middleware_after_authentication_is_fine() -> None:
    assert checks.check_middleware_order() == []


def test_middleware_before_authentication_is_e001() -> None:
    middleware = [SESSION, OURS, AUTH, MESSAGES]
    with override_settings(MIDDLEWARE=middleware):
        messages = checks.check_middleware_order()
    assert ids(messages) == [("idempotency.E001", ERROR)]
    assert messages[0].msg == f"{OURS} is placed before {AUTH} in MIDDLEWARE."
    assert messages[0].hint == (
        f"Move {OURS!r} after {AUTH!r}, so that middleware that depend on authentication "
        "check a request before its key is claimed."
    )


def test_a_subclass_of_the_middleware_before_authentication_is_e001() -> None:
    middleware = [SESSION, f"{__name__}.TenantIdempotencyMiddleware", AUTH]
    with override_settings(MIDDLEWARE=middleware):
        assert ids(checks.check_middleware_order()) == [("idempotency.E001", ERROR)]


def test_a_subclass_of_authentication_middleware_counts_as_authentication() -> None:
    auth = f"{__name__}.TokenAuthenticationMiddleware"
    with override_settings(MIDDLEWARE=[SESSION, auth, OURS]):
        assert checks.check_middleware_order() == []
    with override_settings(MIDDLEWARE=[SESSION, OURS, auth]):
        assert ids(checks.check_middleware_order()) == [("idempotency.E001", ERROR)]


def test_without_authentication_middleware_is_w001() -> None:
    with override_settings(MIDDLEWARE=[SESSION, OURS]):
        messages = checks.check_middleware_order()
    assert ids(messages) == [("idempotency.W001", WARNING)]
    assert messages[0].msg == (
        f"{OURS} is in MIDDLEWARE without {AUTH}: unless another middleware sets "
        "request.user, keys are scoped by the Authorization header only, and requests "
        "without one share the anonymous scope."
    )
    assert messages[0].hint == (
        f"Add {AUTH!r} to MIDDLEWARE before {OURS!r}, or set IDEMPOTENCY['SCOPE_FUNCTION'] "
        "to a function that tells your users apart. If another middleware sets "
        "request.user, place this one after it and silence idempotency.W001."
    )


def test_without_authentication_middleware_a_scope_function_is_enough() -> None:
    with override_settings(
        MIDDLEWARE=[SESSION, OURS],
        IDEMPOTENCY={"SCOPE_FUNCTION": f"{__name__}.scope_by_tenant"},
    ):
        assert checks.check_middleware_order() == []


def test_without_our_middleware_its_order_is_not_checked() -> None:
    # The DRF mixin and the decorator work without the middleware.
    with override_settings(MIDDLEWARE=[SESSION]):
        assert checks.check_middleware_order() == []
    with override_settings(MIDDLEWARE=[SESSION, "idempotency.middleware.Elsewhere", AUTH]):
        assert checks.check_middleware_order() == []


def test_middleware_before_login_required_middleware_is_w002() -> None:
    with override_settings(MIDDLEWARE=[SESSION, AUTH, OURS, LOGIN_REQUIRED]):
        messages = checks.check_middleware_order()
    assert ids(messages) == [("idempotency.W002", WARNING)]
    assert messages[0].msg == (
        f"{OURS} is placed before {LOGIN_REQUIRED} in MIDDLEWARE: it claims the key of a "
        "request that the login check then redirects, and stores and replays that redirect."
    )
    assert messages[0].hint == f"Move {OURS!r} after {LOGIN_REQUIRED!r}."
    with override_settings(MIDDLEWARE=[SESSION, AUTH, LOGIN_REQUIRED, OURS]):
        assert checks.check_middleware_order() == []


def test_middleware_before_both_gets_both_messages() -> None:
    with override_settings(MIDDLEWARE=[SESSION, OURS, AUTH, LOGIN_REQUIRED]):
        assert ids(checks.check_middleware_order()) == [
            ("idempotency.E001", ERROR),
            ("idempotency.W002", WARNING),
        ]


def test_a_middleware_that_cannot_be_imported_is_left_to_django() -> None:
    with override_settings(MIDDLEWARE=[SESSION, "no.such.Middleware", AUTH, OURS]):
        assert checks.check_middleware_order() == []
    with override_settings(MIDDLEWARE=[SESSION, OURS, "no.such.Middleware", AUTH]):
        assert ids(checks.check_middleware_order()) == [("idempotency.E001", ERROR)]


@pytest.mark.django_db
def test_check_command_fails_on_e001() -> None:
    middleware = [m for m in settings.MIDDLEWARE if m != OURS]
    middleware.insert(middleware.index(AUTH), OURS)
    with override_settings(MIDDLEWARE=middleware):
        report = check_fails()
    assert f"?: (idempotency.E001) {OURS} is placed before {AUTH} in MIDDLEWARE." in report
    assert f"HINT: Move {OURS!r} after {AUTH!r}" in report


@pytest.mark.django_db
def test_check_command_reports_w001_and_w002() -> None:
    # --tag: without AuthenticationMiddleware the admin's own checks fail too.
    with override_settings(MIDDLEWARE=[SESSION, OURS, MESSAGES]):
        out, err = check("--tag", "idempotency")
    assert "?: (idempotency.W001)" in err
    assert out == ""
    with override_settings(MIDDLEWARE=[*settings.MIDDLEWARE, LOGIN_REQUIRED]):
        out, err = check()
    assert "?: (idempotency.W002)" in err
    assert "System check identified 1 issue (0 silenced)." in err


# ---------------------------------------------------------------- IDEMPOTENCY


def test_valid_settings_are_fine() -> None:
    with override_settings(
        IDEMPOTENCY={
            "TTL": timedelta(hours=1),
            "REQUIRED": True,
            "SCOPE_FUNCTION": f"{__name__}.scope_by_tenant",
            "MISMATCH_STATUS": 422,
        }
    ):
        assert checks.check_settings() == []
    with override_settings(IDEMPOTENCY=None):
        assert checks.check_settings() == []


def test_a_typo_is_e003_with_did_you_mean() -> None:
    with override_settings(IDEMPOTENCY={"LOCK_TIMOUT": 5}):
        messages = checks.check_settings()
    assert ids(messages) == [("idempotency.E003", ERROR)]
    assert messages[0].msg == "Unknown key 'LOCK_TIMOUT' in IDEMPOTENCY."
    assert messages[0].hint == "Did you mean 'LOCK_TIMEOUT'?"


def test_an_unknown_key_without_a_close_match_lists_the_valid_keys() -> None:
    with override_settings(IDEMPOTENCY={"ZZZZZZ": 1, 7: 1}):
        messages = checks.check_settings()
    assert ids(messages) == [("idempotency.E003", ERROR), ("idempotency.E003", ERROR)]
    assert [m.msg for m in messages] == [
        "Unknown key 7 in IDEMPOTENCY.",
        "Unknown key 'ZZZZZZ' in IDEMPOTENCY.",
    ]
    assert messages[1].hint.startswith("Valid keys: HEADER, METHODS, MAX_KEY_LENGTH, ")


def test_not_a_dict_is_e002() -> None:
    with override_settings(IDEMPOTENCY=[("TTL", 60)]):
        messages = checks.check_settings()
    assert ids(messages) == [("idempotency.E002", ERROR)]
    assert messages[0].msg == "IDEMPOTENCY must be a dict, got list."
    assert messages[0].hint == "Write IDEMPOTENCY = {'TTL': 86400, ...}."


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TTL", "1d", "a number of seconds or a datetime.timedelta, got '1d'"),
        ("REQUIRED", "yes", "True or False, got 'yes'"),
        ("METHODS", ["POST", "GET"], "unsafe methods only"),
        ("MISMATCH_STATUS", 500, "an integer from 400 to 499, got 500"),
        ("SCOPE_FUNCTION", 42, "None, a callable or a dotted import path, got 42"),
        ("DATABASE", "", "a database alias, got ''"),
        ("EXEMPT_PATHS", ["("], "valid regular expressions"),
    ],
)
def test_a_wrong_type_or_value_is_e004(name: str, value: object, expected: str) -> None:
    with override_settings(IDEMPOTENCY={name: value}):
        messages = checks.check_settings()
    assert ids(messages) == [("idempotency.E004", ERROR)]
    assert messages[0].msg.startswith(f"IDEMPOTENCY[{name!r}] must be {expected}")
    assert messages[0].hint is not None
    assert messages[0].hint.startswith(f"Fix IDEMPOTENCY[{name!r}] in your settings, or ")


def test_a_scope_function_that_cannot_be_imported_is_e005() -> None:
    with override_settings(IDEMPOTENCY={"SCOPE_FUNCTION": "no.such.module.scope"}):
        messages = checks.check_settings()
    assert ids(messages) == [("idempotency.E005", ERROR)]
    assert messages[0].msg.startswith(
        "IDEMPOTENCY['SCOPE_FUNCTION'] = 'no.such.module.scope' could not be imported: "
    )
    assert messages[0].hint == "Give the dotted path of a function f(request) -> str."
    with override_settings(IDEMPOTENCY={"SCOPE_FUNCTION": f"{__name__}.no_such_function"}):
        assert ids(checks.check_settings()) == [("idempotency.E005", ERROR)]


def test_a_scope_function_that_is_not_callable_is_e005() -> None:
    with override_settings(IDEMPOTENCY={"SCOPE_FUNCTION": f"{__name__}.NOT_CALLABLE"}):
        messages = checks.check_settings()
    assert ids(messages) == [("idempotency.E005", ERROR)]
    assert messages[0].msg == (
        f"IDEMPOTENCY['SCOPE_FUNCTION'] = '{__name__}.NOT_CALLABLE' imports 'a string', "
        "which is not callable."
    )


def test_a_database_alias_missing_from_databases_is_e006() -> None:
    with override_settings(IDEMPOTENCY={"DATABASE": "nowhere"}):
        messages = checks.check_settings()
    assert ids(messages) == [("idempotency.E006", ERROR)]
    assert messages[0].msg == "IDEMPOTENCY['DATABASE'] = 'nowhere' is not in DATABASES."
    assert messages[0].hint == "Use one of ['default']."


def test_every_problem_is_reported_not_only_the_first() -> None:
    with override_settings(
        IDEMPOTENCY={
            "TTL": "1d",
            "ATOMC": True,
            "REQUIRED": "yes",
            "SCOPE_FUNCTION": "no.such.module.scope",
            "DATABASE": "nowhere",
        }
    ):
        messages = checks.check_settings()
    assert ids(messages) == [
        ("idempotency.E003", ERROR),
        ("idempotency.E004", ERROR),
        ("idempotency.E004", ERROR),
        ("idempotency.E005", ERROR),
        ("idempotency.E006", ERROR),
    ]
    assert messages[0].hint == "Did you mean 'ATOMIC'?"
    assert [m.msg.split("]", 1)[0] for m in messages[1:]] == [
        "IDEMPOTENCY['REQUIRED'",
        "IDEMPOTENCY['TTL'",
        "IDEMPOTENCY['SCOPE_FUNCTION'",
        "IDEMPOTENCY['DATABASE'",
    ]


@pytest.mark.django_db
def test_check_command_fails_on_settings_errors() -> None:
    with override_settings(IDEMPOTENCY={"LOCK_TIMOUT": 5, "TTL": "1d"}):
        report = check_fails()
    assert "?: (idempotency.E003) Unknown key 'LOCK_TIMOUT' in IDEMPOTENCY." in report
    assert "HINT: Did you mean 'LOCK_TIMEOUT'?" in report
    assert "?: (idempotency.E004) IDEMPOTENCY['TTL'] must be" in report
    assert "System check identified 2 issues (0 silenced)." in report


@pytest.mark.django_db
def test_check_command_fails_on_e005_and_e006() -> None:
    with override_settings(
        IDEMPOTENCY={"SCOPE_FUNCTION": "no.such.module.scope", "DATABASE": "nowhere"}
    ):
        report = check_fails()
    assert "?: (idempotency.E005)" in report
    assert "?: (idempotency.E006)" in report


# ---------------------------------------------------------------- the setting's name

MISSPELLINGS = [
    "IDEMPOTANCY",
    "IDEMPOTENCE",
    "IDEMPOTENT",
    "IDEMPOTENCY_SETTINGS",
    "IDEMPOTENCY_CONFIG",
    "IDEMPOTECNY",
    "IDEMPOTNCY",
    "DEMPOTENCY",
]


@pytest.mark.parametrize("name", MISSPELLINGS)
def test_a_misspelt_setting_name_is_w006(settings: Any, name: str) -> None:
    del settings.IDEMPOTENCY
    setattr(settings, name, {"REQUIRED": True})

    messages = checks.check_setting_name()

    assert ids(messages) == [("idempotency.W006", WARNING)]
    assert messages[0].msg == (
        f"The setting {name} looks like a misspelling of IDEMPOTENCY: "
        f"django-idempotency reads only IDEMPOTENCY, so {name} is ignored."
    )
    assert messages[0].hint == (
        f"Rename it to IDEMPOTENCY. If {name} belongs to something else, add "
        "'idempotency.W006' to SILENCED_SYSTEM_CHECKS."
    )


def test_a_misspelt_setting_next_to_the_right_one_is_w006_with_another_hint() -> None:
    with override_settings(IDEMPOTENCY={"TTL": 60}, IDEMPOTENCE={"REQUIRED": True}):
        messages = checks.check_setting_name()
    assert ids(messages) == [("idempotency.W006", WARNING)]
    assert messages[0].hint is not None
    assert messages[0].hint.startswith(
        "Move what it holds into IDEMPOTENCY and remove IDEMPOTENCE. "
    )


def test_every_misspelt_name_gets_its_own_warning() -> None:
    with override_settings(IDEMPOTANCY={}, IDEMPOTENCY_SETTINGS={}):
        messages = checks.check_setting_name()
    assert ids(messages) == [("idempotency.W006", WARNING)] * 2
    assert [m.msg.split()[2] for m in messages] == ["IDEMPOTANCY", "IDEMPOTENCY_SETTINGS"]


def test_the_right_setting_name_and_unrelated_names_are_fine(settings: Any) -> None:
    assert settings.IDEMPOTENCY == {}
    assert checks.check_setting_name() == []
    with override_settings(
        IDEMPOTENCY={"TTL": 60},
        IDENTITY_PROVIDER="sso",
        POTENCY=1,
        TEMPLATES=settings.TEMPLATES,
        # Django reads only upper-case settings; these names are no setting at all.
        idempotancy={},
        Idempotence={},
    ):
        assert checks.check_setting_name() == []
    del settings.IDEMPOTENCY
    assert checks.check_setting_name() == []


def test_a_misspelt_setting_removed_by_override_settings_is_gone(settings: Any) -> None:
    settings.IDEMPOTANCY = {}
    assert ids(checks.check_setting_name()) == [("idempotency.W006", WARNING)]
    del settings.IDEMPOTANCY
    assert checks.check_setting_name() == []


def test_a_misspelt_setting_given_to_settings_configure_is_w006() -> None:
    # settings.configure() can only run once per process: a fresh interpreter.
    script = """
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["idempotency"], IDEMPOTANCY={"REQUIRED": True})
django.setup()
from idempotency.checks import check_setting_name
print([(m.id, m.msg.split()[2]) for m in check_setting_name()])
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "[('idempotency.W006', 'IDEMPOTANCY')]\n"


# Since Django 6.1 a tag selects database checks too (idempotency.W007).
@pytest.mark.django_db
def test_check_command_warns_w006() -> None:
    with override_settings(IDEMPOTANCY={"REQUIRED": True}):
        out, err = check("--tag", "idempotency")
    assert "?: (idempotency.W006) The setting IDEMPOTANCY looks like a misspelling" in err
    assert "HINT: Move what it holds into IDEMPOTENCY and remove IDEMPOTANCY." in err
    assert "System check identified 1 issue (0 silenced)." in err
    assert out == ""
    with override_settings(IDEMPOTANCY={}, SILENCED_SYSTEM_CHECKS=["idempotency.W006"]):
        assert check("--tag", "idempotency") == (
            "System check identified no issues (1 silenced).\n",
            "",
        )


def test_a_database_of_a_supported_vendor_passes() -> None:
    assert checks.check_database_vendor() == []


@pytest.mark.parametrize("vendor", ["oracle", "microsoft", "cockroachdb"])
def test_a_database_of_another_vendor_is_e008(monkeypatch: pytest.MonkeyPatch, vendor: str) -> None:
    from django.db import connection

    monkeypatch.setattr(connection, "vendor", vendor)
    messages = checks.check_database_vendor()
    assert ids(messages) == [("idempotency.E008", ERROR)]
    engine = settings.DATABASES["default"]["ENGINE"]
    assert messages[0].msg.startswith(
        f"The idempotency store's database 'default' is {vendor!r} ({engine}), which the "
        "store has no SQL for"
    )


@pytest.mark.django_db
def test_check_command_fails_on_e008(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connection

    monkeypatch.setattr(connection, "vendor", "oracle")
    assert "?: (idempotency.E008) The idempotency store's database 'default' is 'oracle'" in (
        check_fails()
    )


# ---------------------------------------------------------------- TTL and LOCK_TIMEOUT


@pytest.mark.parametrize(
    ("setting", "ttl", "lease"),
    [
        ({"TTL": 30}, "30", "60"),  # the default lease
        ({"LOCK_TIMEOUT": timedelta(days=2)}, "86400", "172800"),  # the default TTL
        ({"TTL": 10, "LOCK_TIMEOUT": 10.5}, "10", "10.5"),
    ],
)
def test_ttl_shorter_than_lock_timeout_is_w003(
    setting: dict[str, Any], ttl: str, lease: str
) -> None:
    with override_settings(IDEMPOTENCY=setting):
        messages = checks.check_ttl()
    assert ids(messages) == [("idempotency.W003", WARNING)]
    assert messages[0].msg.startswith(
        f"IDEMPOTENCY['TTL'] ({ttl} s) is shorter than IDEMPOTENCY['LOCK_TIMEOUT'] ({lease} s)"
    )
    assert messages[0].hint is not None
    assert messages[0].hint.startswith(
        "Raise IDEMPOTENCY['TTL'] to at least IDEMPOTENCY['LOCK_TIMEOUT']"
    )


def test_ttl_at_least_lock_timeout_is_fine() -> None:
    assert checks.check_ttl() == []
    with override_settings(IDEMPOTENCY={"TTL": 60}):
        assert checks.check_ttl() == []
    with override_settings(IDEMPOTENCY={"TTL": timedelta(minutes=5), "LOCK_TIMEOUT": 300}):
        assert checks.check_ttl() == []


def test_ttl_is_not_compared_when_it_is_invalid() -> None:
    with override_settings(IDEMPOTENCY={"TTL": "1d"}):
        assert checks.check_ttl() == []
        assert ids(checks.check_settings()) == [("idempotency.E004", ERROR)]


@pytest.mark.django_db
def test_check_command_warns_w003() -> None:
    with override_settings(IDEMPOTENCY={"TTL": 30}):
        out, err = check()
        assert "?: (idempotency.W003)" in err
        assert "System check identified 1 issue (0 silenced)." in err
        assert out == ""
        assert "?: (idempotency.W003)" in check_fails("--fail-level", "WARNING")


# ---------------------------------------------------------------- MISMATCH_STATUS


@pytest.mark.parametrize("status", [400, 403, 412, 499])
def test_mismatch_status_other_than_409_or_422_is_w004(status: int) -> None:
    with override_settings(IDEMPOTENCY={"MISMATCH_STATUS": status}):
        messages = checks.check_mismatch_status()
    assert ids(messages) == [("idempotency.W004", WARNING)]
    assert messages[0].msg.startswith(f"IDEMPOTENCY['MISMATCH_STATUS'] is {status}: ")
    assert messages[0].hint == "Use 409 (the default) or 422 (the IETF draft's choice)."


@pytest.mark.parametrize("setting", [{}, {"MISMATCH_STATUS": 409}, {"MISMATCH_STATUS": 422}])
def test_mismatch_status_409_or_422_is_fine(setting: dict[str, Any]) -> None:
    with override_settings(IDEMPOTENCY=setting):
        assert checks.check_mismatch_status() == []


def test_an_invalid_mismatch_status_is_only_e004() -> None:
    with override_settings(IDEMPOTENCY={"MISMATCH_STATUS": 500}):
        assert checks.check_mismatch_status() == []


@pytest.mark.django_db
def test_check_command_warns_w004() -> None:
    with override_settings(IDEMPOTENCY={"MISMATCH_STATUS": 400}):
        out, err = check()
    assert "?: (idempotency.W004) IDEMPOTENCY['MISMATCH_STATUS'] is 400" in err
    assert "HINT: Use 409 (the default) or 422" in err
    assert out == ""


# ---------------------------------------------------------------- ATOMIC and DATABASE


def test_atomic_on_the_default_database_is_fine() -> None:
    assert checks.check_atomic_database() == []


def test_atomic_with_the_store_on_another_database_is_e007() -> None:
    with databases(store=MEMORY), override_settings(IDEMPOTENCY={"DATABASE": "store"}):
        messages = checks.check_atomic_database()
    assert ids(messages) == [("idempotency.E007", ERROR)]
    assert messages[0].msg == (
        "IDEMPOTENCY['ATOMIC'] is on but the store is on database 'store', while the "
        "project's models are written to 'default': a view's writes would not commit or "
        "roll back with its stored response."
    )
    hint = messages[0].hint
    assert hint is not None
    assert "Set IDEMPOTENCY['DATABASE'] to the alias your views write to" in hint
    assert "route those writes to 'store' in DATABASE_ROUTERS" in hint
    assert "IDEMPOTENCY['ATOMIC'] = False" in hint
    assert "add 'idempotency.E007' to SILENCED_SYSTEM_CHECKS" in hint


def test_without_atomic_the_store_may_live_anywhere() -> None:
    with (
        databases(store=MEMORY),
        override_settings(IDEMPOTENCY={"DATABASE": "store", "ATOMIC": False}),
    ):
        assert checks.check_atomic_database() == []


def test_a_router_that_writes_models_to_the_store_database_is_fine() -> None:
    with (
        databases(store=MEMORY),
        override_settings(
            IDEMPOTENCY={"DATABASE": "store"},
            DATABASE_ROUTERS=[f"{__name__}.AppToStoreRouter"],
        ),
    ):
        assert checks.check_atomic_database() == []


def test_a_router_for_the_idempotency_app_alone_does_not_count() -> None:
    with (
        databases(store=MEMORY),
        override_settings(
            IDEMPOTENCY={"DATABASE": "store"},
            DATABASE_ROUTERS=[f"{__name__}.IdempotencyToStoreRouter"],
        ),
    ):
        assert ids(checks.check_atomic_database()) == [("idempotency.E007", ERROR)]


def test_the_default_store_while_routers_write_elsewhere_is_e007() -> None:
    with (
        databases(primary=MEMORY),
        override_settings(DATABASE_ROUTERS=[f"{__name__}.EverythingToPrimaryRouter"]),
    ):
        messages = checks.check_atomic_database()
    assert ids(messages) == [("idempotency.E007", ERROR)]
    assert "store is on database 'default', while the project's models are written to " in (
        messages[0].msg
    )
    assert "'primary'" in messages[0].msg


@pytest.mark.django_db
def test_check_command_fails_on_e007() -> None:
    with databases(store=MEMORY), override_settings(IDEMPOTENCY={"DATABASE": "store"}):
        report = check_fails()
    assert "?: (idempotency.E007) IDEMPOTENCY['ATOMIC'] is on" in report
    with (
        databases(store=MEMORY),
        override_settings(
            IDEMPOTENCY={"DATABASE": "store"}, SILENCED_SYSTEM_CHECKS=["idempotency.E007"]
        ),
    ):
        assert check() == ("System check identified no issues (1 silenced).\n", "")


# ---------------------------------------------------------------- ATOMIC_REQUESTS


def test_atomic_requests_on_the_store_database_is_w005() -> None:
    with databases(default={**settings.DATABASES["default"], "ATOMIC_REQUESTS": True}):
        messages = checks.check_atomic_requests()
    assert ids(messages) == [("idempotency.W005", WARNING)]
    assert messages[0].msg.startswith(
        "DATABASES['default'] (the idempotency store) has ATOMIC_REQUESTS on: "
    )
    assert "instead of getting 409 idempotency_key_locked" in messages[0].msg
    assert messages[0].hint is not None
    assert messages[0].hint.startswith("Turn ATOMIC_REQUESTS off for 'default'")


def test_atomic_requests_elsewhere_is_fine() -> None:
    assert checks.check_atomic_requests() == []
    with databases(other={**MEMORY, "ATOMIC_REQUESTS": True}):
        assert checks.check_atomic_requests() == []
    with databases(default={**settings.DATABASES["default"], "ATOMIC_REQUESTS": False}):
        assert checks.check_atomic_requests() == []


@pytest.mark.django_db
def test_check_command_warns_w005() -> None:
    with databases(default={**settings.DATABASES["default"], "ATOMIC_REQUESTS": True}):
        out, err = check()
    assert "?: (idempotency.W005) DATABASES['default'] (the idempotency store)" in err
    assert "System check identified 1 issue (0 silenced)." in err
    assert out == ""


# ------------------------------------------------------------- response size (W007)


def _capacity() -> int:
    """What the test database takes, found without the check's own arithmetic."""
    from django.db import connection

    if connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@max_allowed_packet")
            (packet,) = cursor.fetchone()
        return (int(packet) - 64 * 1024) // 2  # escaped, a body may double
    if connection.vendor == "postgresql":
        return 1024**3 - 1 - 64 * 1024  # 1 GB a field, psycopg 3 sends it as it is
    connection.ensure_connection()
    if not hasattr(connection.connection, "getlimit"):  # Python < 3.11
        return 1_000_000_000  # SQLite's compiled-in default, SQLITE_MAX_LENGTH
    return int(connection.connection.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))


def _w007(limit: int | None, databases: list[str] | None = None) -> list[CheckMessage]:
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": limit}):
        return checks.check_response_size(databases=databases or ["default"])


@pytest.mark.django_db
def test_the_default_response_size_fits_every_database() -> None:
    assert checks.check_response_size(databases=["default"]) == []


@pytest.mark.django_db
def test_a_response_size_the_database_takes_is_fine() -> None:
    assert _w007(_capacity()) == []


@pytest.mark.django_db
def test_a_response_size_past_what_the_database_takes_is_w007() -> None:
    capacity = _capacity()
    messages = _w007(capacity + 1)

    assert ids(messages) == [("idempotency.W007", WARNING)]
    assert messages[0].msg.startswith(
        f"IDEMPOTENCY['MAX_RESPONSE_SIZE'] is {capacity + 1} bytes, but the store's "
        f"database 'default' takes a response body of at most {capacity} bytes ("
    )
    assert "500 idempotency_response_too_large" in messages[0].msg
    assert messages[0].hint is not None
    assert messages[0].hint.startswith(
        f"Set IDEMPOTENCY['MAX_RESPONSE_SIZE'] to {capacity} or less"
    )


@pytest.mark.mysql
@pytest.mark.django_db
def test_on_mariadb_w007_counts_max_allowed_packet_after_escaping() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT @@max_allowed_packet")
        (packet,) = cursor.fetchone()
    # A body of the packet's size could never be stored; nor one of 60 % of it
    # made of quotes, which escaping doubles.
    messages = _w007(int(packet) * 6 // 10)

    assert ids(messages) == [("idempotency.W007", WARNING)]
    assert f"its max_allowed_packet is {packet} bytes" in messages[0].msg
    assert messages[0].hint is not None
    assert "or raise max_allowed_packet on the server to at least" in messages[0].hint


@pytest.mark.django_db
def test_no_response_size_limit_is_w007() -> None:
    messages = _w007(None)

    assert ids(messages) == [("idempotency.W007", WARNING)]
    assert messages[0].msg.startswith("IDEMPOTENCY['MAX_RESPONSE_SIZE'] is None (no limit), ")


@pytest.mark.skipif(
    not hasattr(sqlite3.Connection, "setlimit"), reason="Connection.setlimit is Python 3.11+"
)
@pytest.mark.django_db
def test_on_sqlite_w007_follows_the_connections_length_limit() -> None:
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("needs SQLite")
    connection.ensure_connection()
    saved = connection.connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)
    try:
        assert _w007(100_000) == []
        assert ids(_w007(100_001)) == [("idempotency.W007", WARNING)]
    finally:
        connection.connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, saved)


def test_w007_looks_only_when_the_stores_database_is_checked() -> None:
    # Without databases (plain ``manage.py check`` before Django 6.1, runserver), or
    # for another alias, the check asks no server.
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": None}):
        assert checks.check_response_size() == []
        assert checks.check_response_size(databases=[]) == []
        assert checks.check_response_size(databases=["other"]) == []


def test_w007_says_nothing_when_the_database_cannot_be_reached(tmp_path: Path) -> None:
    # A fresh interpreter whose store is a SQLite file in a directory that does not
    # exist: the check cannot ask, and the command still runs to the end.
    manage = Path(__file__).resolve().parent.parent / "testproject" / "manage.py"
    missing = tmp_path / "no-such-directory" / "db.sqlite3"
    done = subprocess.run(
        [sys.executable, str(manage), "check", "--tag", "idempotency", "--database", "default"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DATABASE_URL": f"sqlite:///{missing}"},
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "System check identified no issues (0 silenced).\n"
    assert not missing.parent.exists()


def test_an_invalid_response_size_is_only_e004() -> None:
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": "4MB"}):
        assert checks.check_response_size(databases=["default"]) == []
        assert ids(checks.check_settings()) == [("idempotency.E004", ERROR)]


@pytest.mark.django_db
def test_check_command_with_the_database_warns_w007() -> None:
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": None}):
        out, err = check("--database", "default")
    assert "?: (idempotency.W007) IDEMPOTENCY['MAX_RESPONSE_SIZE'] is None" in err
    assert "System check identified 1 issue (0 silenced)." in err
    assert out == ""


@pytest.mark.django_db(transaction=True)
def test_migrate_warns_w007() -> None:
    stdout, stderr = StringIO(), StringIO()
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_SIZE": None}):
        call_command("migrate", verbosity=0, skip_checks=False, stdout=stdout, stderr=stderr)
    assert "(idempotency.W007)" in stderr.getvalue()
