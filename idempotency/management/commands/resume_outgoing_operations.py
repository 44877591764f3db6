"""``manage.py resume_outgoing_operations``: send unfinished outgoing operations again.

An operation left ``pending`` by a process that died between committing it and
recording its outcome, or ``unknown`` after a call gave up on transient errors, is
sent again with its own key, so the provider runs it at most once. Safe to run from
cron, several at once: each operation is claimed by a lease before it is sent, and
one whose lease is live (its call is still running) is left alone.

Only operations whose name has a provider (``idempotency.client.register``) are
sent; credentials come from the provider, never from the stored request.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from idempotency.client.resume import DEFAULT_OLDER_THAN, resume_pending
from idempotency.management.commands.purge_idempotency_keys import (
    _checked,
    _count,
    _non_negative_float,
    _positive_int,
)


class Command(BaseCommand):
    help = (
        "Send outgoing operations left pending (a crash) or unknown (a call that gave up) "
        "again, each with its own idempotency key. Safe to run from cron."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=_non_negative_float,
            default=DEFAULT_OLDER_THAN,
            metavar="SECONDS",
            help="Leave operations touched less than SECONDS ago alone "
            f"(default: {DEFAULT_OLDER_THAN:g}).",
        )
        parser.add_argument(
            "--limit",
            type=_positive_int,
            default=None,
            metavar="N",
            help="Resume at most N operations; the rest waits for the next run.",
        )
        parser.add_argument(
            "--name",
            action="append",
            default=None,
            metavar="NAME",
            help="Only operations with this name (repeatable).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count the operations that would be resumed; send nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        older_than: float = _checked("--older-than", options["older_than"], _non_negative_float)
        limit: int | None = options["limit"]
        if limit is not None:
            limit = _checked("--limit", limit, _positive_int)
        names = options["name"]
        if names is not None and (
            isinstance(names, str) or not all(isinstance(n, str) and n for n in names)
        ):
            raise CommandError(f"--name must be given operation names, got {names!r}.")
        verbosity: int = options["verbosity"]
        report = resume_pending(
            older_than=older_than, limit=limit, names=names, dry_run=options["dry_run"]
        )
        if verbosity >= 2:
            for operation, result in report.results:
                self.stdout.write(f"{operation.name} {operation.reference}: {result}")
        if options["dry_run"]:
            would = report.found - report.skipped
            self.stdout.write(
                f"Would resume {_count(would, 'outgoing operation')}; "
                f"{report.skipped} without a registered provider."
            )
            return
        self.stdout.write(
            f"Resumed {_count(report.found - report.skipped, 'outgoing operation')}: "
            f"{report.succeeded} succeeded, {report.failed} failed, {report.unknown} unknown, "
            f"{report.busy} busy, {report.errors} refused; "
            f"{report.skipped} skipped without a registered provider."
        )
