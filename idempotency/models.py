from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class IdempotencyKey(models.Model):
    """One client operation: a key, claimed by the first request that carried it."""

    class State(models.TextChoices):
        RUNNING = "running", _("running")
        COMPLETED = "completed", _("completed")
        RELEASED = "released", _("released")

    scope = models.CharField(_("scope"), max_length=255)
    key = models.CharField(_("key"), max_length=255, help_text=_("The key as the client sent it."))
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
