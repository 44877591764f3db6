from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def exact_collation(connection: BaseDatabaseWrapper) -> str | None:
    """The collation that compares text byte for byte on ``connection``, where the
    server's default would not; None where the default already does.

    SQLite's default (``BINARY``) and PostgreSQL's deterministic collations compare
    exactly. A MariaDB or MySQL server's default does not: it ignores letter case and
    accents and pads trailing spaces. Their ``*_bin`` collations still pad spaces; the
    ``NO PAD`` binary ones do not. ``utf8mb4_0900_bin`` came in MySQL 8.0.17; before
    it, ``utf8mb4_bin`` is the closest (exact but for trailing spaces).
    """
    if connection.vendor != "mysql":
        return None
    if getattr(connection, "mysql_is_mariadb", False):
        return "utf8mb4_nopad_bin"
    if getattr(connection, "mysql_version", (0,)) >= (8, 0, 17):
        return "utf8mb4_0900_bin"
    return "utf8mb4_bin"


class ExactCharField(models.CharField):
    """A ``CharField`` whose values compare byte for byte on every database.

    Without ``db_collation``, it takes :func:`exact_collation` on MariaDB and MySQL,
    and the database's default (already exact) elsewhere. Keys and scopes are
    compared by the unique (scope, key) index: on a case-insensitive, space-padding
    collation ``"Key"`` and ``"key"``, or ``"k "`` and ``"k"``, would be one operation.
    """

    def db_parameters(self, connection: BaseDatabaseWrapper) -> dict[str, Any]:
        params = super().db_parameters(connection)
        if self.db_collation is None:
            params["collation"] = exact_collation(connection)
        return params


class IdempotencyKey(models.Model):
    """One client operation: a key, claimed by the first request that carried it."""

    class State(models.TextChoices):
        RUNNING = "running", _("running")
        COMPLETED = "completed", _("completed")
        RELEASED = "released", _("released")

    scope = ExactCharField(_("scope"), max_length=255)
    key = ExactCharField(_("key"), max_length=255, help_text=_("The key as the client sent it."))
    fingerprint = models.CharField(_("fingerprint"), max_length=64)
    method = models.CharField(_("method"), max_length=16)
    path = models.TextField(_("path"))
    state = models.CharField(_("state"), max_length=16, choices=State.choices)
    fence = models.PositiveBigIntegerField(
        _("fence"),
        default=1,
        help_text=_(
            "Raised on every takeover; a request may only complete the generation it claimed."
        ),
    )
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    expires_at = models.DateTimeField(_("expires at"))

    class Meta:
        db_table = "idempotency_idempotencykey"
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="idempotency_scope_key_uniq"),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="idempotency_expires_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.scope})"


class IdempotencyResponse(models.Model):
    """The stored response of a completed key, replayed to retries."""

    idempotency_key = models.OneToOneField(
        IdempotencyKey,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="response",
        db_column="key_id",
        verbose_name=_("idempotency key"),
    )
    status = models.PositiveSmallIntegerField(_("status"))
    headers = models.JSONField(_("headers"), default=list, help_text=_("[name, value] pairs."))
    body = models.BinaryField(_("body"), blank=True)

    class Meta:
        db_table = "idempotency_idempotencyresponse"
        verbose_name = _("stored response")
        verbose_name_plural = _("stored responses")

    def __str__(self) -> str:
        return f"{self.status} for {self.idempotency_key_id}"
