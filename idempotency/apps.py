import importlib
import importlib.util

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class IdempotencyConfig(AppConfig):
    name = "idempotency"
    verbose_name = _("Idempotency")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import idempotency.checks  # noqa: F401  (registers the system checks)

        # Connects the setting_changed receiver.
        from idempotency import conf  # noqa: F401

        # drf-spectacular registers an extension when its class is created.
        if _installed("drf_spectacular") and _installed("rest_framework"):
            importlib.import_module("idempotency.openapi")
