import importlib

from django.apps import AppConfig, apps
from django.utils.translation import gettext_lazy as _


class IdempotencyConfig(AppConfig):
    name = "idempotency"
    verbose_name = _("Idempotency")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import idempotency.checks  # noqa: F401  (registers the system checks)

        # Connects the setting_changed receiver.
        from idempotency import conf  # noqa: F401

        # drf-spectacular registers an extension when its class is created: only for
        # a project that uses drf-spectacular, not one where it is merely importable.
        if apps.is_installed("drf_spectacular"):
            importlib.import_module("idempotency.openapi")
