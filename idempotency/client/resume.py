"""Finding operations that a crash or a give-up left unfinished, and sending them again."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from asgiref.sync import async_to_sync
from django.db import connections
from django.db.models import Q, QuerySet
from django.utils import timezone

from idempotency.client.operations import (
    InTransaction,
    OperationBusy,
    Outcome,
    OutcomeUnknown,
    OutgoingError,
    Provider,
    ProviderMismatch,
    adrive,
    drive,
    registered,
)
from idempotency.conf import idempotency_settings

if TYPE_CHECKING:
    from idempotency.models import OutgoingOperation

logger = logging.getLogger("idempotency.client")

#: An operation untouched for less than this many seconds is left alone: its call
#: may still be running.
DEFAULT_OLDER_THAN = 60.0


def unfinished(
    *, older_than: float = DEFAULT_OLDER_THAN, names: Iterable[str] | None = None
) -> QuerySet[OutgoingOperation]:
    """Operations ``pending`` or ``unknown``, untouched for ``older_than`` seconds, whose
    lease (if any) has run out: the ones :func:`resume_pending` sends again."""
    from idempotency.models import OutgoingOperation

    now = timezone.now()
    queryset = (
        OutgoingOperation.objects.using(idempotency_settings.get().database)
        .filter(
            state__in=["pending", "unknown"], updated_at__lte=now - timedelta(seconds=older_than)
        )
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
    )
    if names is not None:
        queryset = queryset.filter(name__in=list(names))
    ordered: QuerySet[OutgoingOperation] = queryset.order_by("updated_at", "pk")
    return ordered


def resume(operation: OutgoingOperation, provider: Provider | None = None) -> Outcome:
    """Send ``operation`` again with its own key, through ``provider`` or the one
    registered for its name. Raises as :func:`~idempotency.client.call` does."""
    if provider is None:
        provider = registered().get(operation.name)
        if provider is None:
            raise LookupError(
                f"No provider is registered for outgoing operations named {operation.name!r}."
            )
    if hasattr(provider.transport, "asend") and not hasattr(provider.transport, "send"):
        return async_to_sync(adrive)(provider, operation)
    return drive(provider, operation)


@dataclass
class ResumeReport:
    """What :func:`resume_pending` did, in counts, and each operation's result."""

    found: int = 0
    succeeded: int = 0
    failed: int = 0
    unknown: int = 0
    busy: int = 0
    skipped: int = 0
    errors: int = 0
    results: list[tuple[OutgoingOperation, str]] = field(default_factory=list)

    def add(self, operation: OutgoingOperation, result: str) -> None:
        setattr(self, result, getattr(self, result) + 1)
        self.results.append((operation, result))


def resume_pending(
    *,
    older_than: float = DEFAULT_OLDER_THAN,
    limit: int | None = None,
    names: Iterable[str] | None = None,
    providers: Mapping[str, Provider] | None = None,
    dry_run: bool = False,
) -> ResumeReport:
    """Send every :func:`unfinished` operation again, each with its own key.

    ``providers`` maps operation names to providers (default: those given to
    :func:`~idempotency.client.register`); an operation without one is skipped. Each
    operation is claimed by its lease first, so that two runs at once never send the
    same operation: the loser counts it ``busy``. With ``dry_run``, nothing is sent
    and every operation found counts as ``skipped`` or ``found`` only.
    """
    alias = idempotency_settings.get().database
    if connections[alias].in_atomic_block:
        raise InTransaction("resume_pending() must run outside a transaction on the store.")
    chosen = dict(registered() if providers is None else providers)
    queryset = unfinished(older_than=older_than, names=names)
    operations = list(queryset[:limit] if limit is not None else queryset)
    report = ResumeReport()
    for operation in operations:
        report.found += 1
        provider = chosen.get(operation.name)
        if provider is None:
            report.add(operation, "skipped")
            continue
        if dry_run:
            report.results.append((operation, "found"))
            continue
        try:
            outcome = resume(operation, provider)
        except OperationBusy:
            report.add(operation, "busy")
        except OutcomeUnknown:
            report.add(operation, "unknown")
        except ProviderMismatch:
            report.add(operation, "failed")
        except OutgoingError as exc:
            logger.warning("Outgoing operation %s was not resumed: %s", operation, exc)
            report.add(operation, "errors")
        except Exception:
            # One broken operation (a bad URL, a failing credentials function) must not
            # stop a cron run from resuming the others.
            logger.exception("Outgoing operation %s could not be resumed.", operation)
            report.add(operation, "errors")
        else:
            report.add(operation, "succeeded" if outcome.succeeded else "failed")
    return report
