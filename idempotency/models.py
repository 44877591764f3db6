from __future__ import annotations

from typing import Any

from django.db import NotSupportedError, models
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
    # The stored response lives in the key's own row: a completion is one UPDATE, a
    # replay one read of one row, a purge one DELETE. IdempotencyResponse shows it.
    response_status = models.PositiveSmallIntegerField(_("response status"), null=True, blank=True)
    response_headers = models.JSONField(
        _("response headers"), null=True, blank=True, help_text=_("[name, value] pairs.")
    )
    response_body = models.BinaryField(_("response body"), null=True, blank=True)

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
    """The stored response of a completed key, replayed to retries.

    Read-only: a database view over the ``response_*`` columns of the key's own row
    (:class:`IdempotencyKey`), one per completed key, for code and the admin that
    want the response as an object of its own. The store writes those columns; they
    go when the key is deleted or taken over.
    """

    idempotency_key = models.OneToOneField(
        IdempotencyKey,
        on_delete=models.DO_NOTHING,
        primary_key=True,
        related_name="response",
        db_column="key_id",
        verbose_name=_("idempotency key"),
    )
    status = models.PositiveSmallIntegerField(_("status"))
    headers = models.JSONField(_("headers"), default=list, help_text=_("[name, value] pairs."))
    body = models.BinaryField(_("body"), blank=True)

    class Meta:
        managed = False
        db_table = "idempotency_idempotencyresponse"
        verbose_name = _("stored response")
        verbose_name_plural = _("stored responses")

    def __str__(self) -> str:
        return f"{self.status} for {self.idempotency_key_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupportedError(
            "IdempotencyResponse is a read-only view of the key's response_* columns; "
            "set those on the IdempotencyKey instead."
        )

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise NotSupportedError(
            "IdempotencyResponse is a read-only view; delete the IdempotencyKey instead."
        )


class OutgoingOperation(models.Model):
    """One logical call to another API, made through :mod:`idempotency.client`.

    The row is committed before the first request is sent, so that every retry (after
    an exception, a restart, or on another host) finds it and sends the same key.
    """

    class State(models.TextChoices):
        PENDING = "pending", _("pending")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")
        UNKNOWN = "unknown", _("unknown")

    name = ExactCharField(_("name"), max_length=100)
    reference = ExactCharField(
        _("reference"), max_length=255, help_text=_("The caller's stable reference.")
    )
    key = ExactCharField(_("key"), max_length=255, help_text=_("The idempotency key it sends."))
    header = models.CharField(
        _("header"),
        max_length=64,
        blank=True,
        help_text=_("The header the key is sent in; empty for a provider without keys."),
    )
    method = models.CharField(_("method"), max_length=16)
    url = models.TextField(_("URL"))
    request_headers = models.JSONField(
        _("request headers"),
        default=list,
        help_text=_("[name, value] pairs; credentials are never stored."),
    )
    request_body = models.BinaryField(_("request body"), blank=True)
    fingerprint = models.CharField(_("fingerprint"), max_length=64)
    state = models.CharField(
        _("state"), max_length=16, choices=State.choices, default=State.PENDING
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    lease_token = models.CharField(_("lease token"), max_length=32, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), default=timezone.now)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(_("response status"), null=True, blank=True)
    response_headers = models.JSONField(
        _("response headers"), default=list, help_text=_("A few [name, value] pairs.")
    )
    response_body = models.BinaryField(
        _("response body"), blank=True, help_text=_("The first bytes of the body.")
    )
    response_truncated = models.BooleanField(_("response truncated"), default=False)
    error = models.TextField(_("last error"), blank=True)

    class Meta:
        db_table = "idempotency_outgoingoperation"
        verbose_name = _("outgoing operation")
        verbose_name_plural = _("outgoing operations")
        constraints = [
            models.UniqueConstraint(
                fields=["name", "reference"], name="idempotency_outgoing_name_ref_uniq"
            ),
        ]
        indexes = [
            models.Index(fields=["state", "updated_at"], name="idempotency_outgoing_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.reference}"


class OutgoingAttempt(models.Model):
    """One request sent for an :class:`OutgoingOperation`, and what came of it."""

    operation = models.ForeignKey(
        OutgoingOperation,
        on_delete=models.CASCADE,
        related_name="attempt_set",
        verbose_name=_("operation"),
    )
    number = models.PositiveIntegerField(_("number"))
    started_at = models.DateTimeField(_("started at"), default=timezone.now)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    status = models.PositiveSmallIntegerField(_("status"), null=True, blank=True)
    error = models.CharField(_("error"), max_length=255, blank=True)
    verdict = models.CharField(
        _("verdict"),
        max_length=16,
        blank=True,
        help_text=_("succeeded, failed, mismatch or retry; empty while it runs, or if it died."),
    )

    class Meta:
        db_table = "idempotency_outgoingattempt"
        verbose_name = _("outgoing attempt")
        verbose_name_plural = _("outgoing attempts")
        ordering = ["operation", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["operation", "number"], name="idempotency_outgoing_attempt_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number}"
