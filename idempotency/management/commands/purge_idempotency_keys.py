"""``manage.py purge_idempotency_keys``: delete expired keys and their stored responses.

Safe to run from cron while requests flow: each batch is its own short transaction
that deletes by primary key, locks only the rows it deletes (and skips rows a request
holds at that moment), and checks again, under that lock, that every row is still
expired and not held by a live lease. A key that a retry takes over between the
batch's selection and its deletion gets a new ``expires_at`` and survives.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction
from django.db.models import QuerySet
from django.utils import timezone

from idempotency.conf import idempotency_settings
from idempotency.models import IdempotencyKey
from idempotency.store import RUNNING, Quote, Store, sql_for
from idempotency.store import column as store_column

DEFAULT_BATCH_SIZE = 1000


def purgeable(alias: str, now: datetime) -> QuerySet[IdempotencyKey]:
    """Keys that may be deleted at ``now``: expired, and not held by a live lease.

    Every state expires: a completed key ``TTL`` after completion, a running or
    released one ``TTL`` after its claim. A running key whose lease is still live is
    never included, even past its ``expires_at``.
    """
    queryset: QuerySet[IdempotencyKey] = (
        IdempotencyKey.objects.using(alias)
        .filter(expires_at__lte=now)
        .exclude(state=RUNNING, lease_expires_at__gt=now)
    )
    return queryset


def select_batch(
    alias: str,
    now: datetime,
    size: int,
    *,
    after: datetime | None = None,
    strictly: bool = False,
) -> tuple[list[int], datetime | None]:
    """Up to ``size`` ids of purgeable keys, oldest expiry first, and the last one's expiry.

    ``after`` resumes where the previous batch ended, so that the expiry index is
    entered past the entries of rows already deleted instead of walking over them
    again. Only the last row's expiry is read: ids are cheap to load, datetimes are not.
    """
    queryset = purgeable(alias, now)
    if after is not None:
        lookup = "expires_at__gt" if strictly else "expires_at__gte"
        queryset = queryset.filter(**{lookup: after})
    ids = list(queryset.order_by("expires_at").values_list("id", flat=True)[:size])
    if not ids:
        return [], None
    last = (
        IdempotencyKey.objects.using(alias)
        .filter(pk=ids[-1])
        .values_list("expires_at", flat=True)
        .first()
    )
    return ids, last


@dataclass(frozen=True, slots=True)
class _SQL:
    postgresql: bool
    delete_keys: str
    count_responses: str


def _build_sql(vendor: str, quote: Quote) -> _SQL:
    def column(name: str) -> str:
        return store_column(IdempotencyKey, name, quote)

    kt = quote(IdempotencyKey._meta.db_table)
    kid, kexp, kstate = column("id"), column("expires_at"), column("state")
    klease, kstatus = column("lease_expires_at"), column("response_status")
    # purgeable(), in SQL; "IS NOT NULL" because NOT (x AND NULL) is NULL, not true.
    still_purgeable = (
        f"{kexp} <= %s AND NOT ({kstate} = '{RUNNING}' AND {klease} IS NOT NULL AND {klease} > %s)"
    )
    if vendor == "postgresql":
        # One statement, so one round trip and its own short transaction. It locks the
        # rows first, skipping those a request holds, and checks them again once locked.
        # A stored response is in its key's row, and goes with it.
        delete_keys = (
            f"WITH locked AS (SELECT {kid} FROM {kt} WHERE {kid} = ANY(%s::bigint[]) "
            f"AND {still_purgeable} "
            f"FOR UPDATE SKIP LOCKED), "
            f"gone AS (DELETE FROM {kt} WHERE {kid} IN (SELECT {kid} FROM locked) "
            f"RETURNING {kstatus}) "
            f"SELECT count(*), count({kstatus}) FROM gone"
        )
        return _SQL(postgresql=True, delete_keys=delete_keys, count_responses="")
    # Elsewhere two statements in a transaction: the stored responses among the keys
    # still purgeable are counted (locking them on MariaDB/MySQL, so that the count
    # is of the rows then deleted), then the keys go, checked again by the same
    # condition.
    marks = "{marks}"
    lock = " FOR UPDATE" if vendor == "mysql" else ""
    return _SQL(
        postgresql=False,
        count_responses=(
            f"SELECT COUNT({kstatus}) FROM {kt} WHERE {kid} IN ({marks}) AND {still_purgeable}"
            f"{lock}"
        ),
        delete_keys=f"DELETE FROM {kt} WHERE {kid} IN ({marks}) AND {still_purgeable}",
    )


def _chunks(ids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def delete_batch(alias: str, ids: Sequence[int], now: datetime) -> tuple[int, int]:
    """Delete the keys among ``ids`` still purgeable at ``now``, and their stored responses.

    ``ids`` may be stale: each row is checked again as it is deleted, so that a key
    taken over since it was selected (a new ``expires_at``, a live lease) is left
    alone with its new response. On PostgreSQL, rows that a request holds locked at
    that moment are skipped rather than waited for. One transaction; returns
    ``(keys deleted, responses deleted)``.
    """
    if not ids:
        return 0, 0
    conn = connections[alias]
    sql = sql_for(conn, _build_sql)
    when = conn.ops.adapt_datetimefield_value(now)
    if sql.postgresql:
        with conn.cursor() as cursor:
            # An array literal: adapting a list of 1000 ints costs more than the statement.
            ids_literal = "{" + ",".join(str(int(i)) for i in ids) + "}"
            cursor.execute(sql.delete_keys, [ids_literal, when, when])
            keys, responses = cursor.fetchone()
        return int(keys), int(responses)
    # Stay under the backend's limit on query parameters (999 for SQLite).
    limit = conn.features.max_query_params
    chunk_size = len(ids) if limit is None else max(limit - 2, 1)

    def work() -> tuple[int, int]:
        keys = responses = 0
        with transaction.atomic(using=alias), conn.cursor() as cursor:
            for chunk in _chunks(ids, chunk_size):
                marks = ", ".join(["%s"] * len(chunk))
                params = [*chunk, when, when]
                cursor.execute(sql.count_responses.format(marks=marks), params)
                responses += int(cursor.fetchone()[0])
                cursor.execute(sql.delete_keys.format(marks=marks), params)
                keys += cursor.rowcount
        return keys, responses

    # InnoDB may end a batch as a deadlock's victim (against a takeover of one of its
    # keys); the batch is its own transaction, so it is simply run again.
    return Store(alias).retrying(conn, work)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {value!r}") from None
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {value!r}")
    return number


def _checked(name: str, value: Any, parse: Callable[[str], Any]) -> Any:
    """Check an option that ``call_command(name=value)`` passes without parsing it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise CommandError(f"{name} must be a number, got {value!r}.")
    try:
        return parse(value)
    except argparse.ArgumentTypeError as exc:
        raise CommandError(f"{name} {exc}.") from None


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


class Command(BaseCommand):
    help = (
        "Delete expired idempotency keys and their stored responses, in batches of short "
        "transactions. Keys held by a live lease are kept. Safe to run while traffic flows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=_positive_int,
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"Keys deleted per transaction (default: {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count the keys that would be deleted; delete nothing.",
        )
        parser.add_argument(
            "--max-batches",
            type=_positive_int,
            default=None,
            metavar="N",
            help="Stop after N batches; the rest is left for the next run (default: no limit).",
        )
        parser.add_argument(
            "--sleep",
            type=_non_negative_float,
            default=0.0,
            metavar="SECONDS",
            help="Pause between batches, to spread the load (default: 0).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size: int = _checked("--batch-size", options["batch_size"], _positive_int)
        max_batches: int | None = options["max_batches"]
        if max_batches is not None:
            max_batches = _checked("--max-batches", max_batches, _positive_int)
        pause: float = _checked("--sleep", options["sleep"], _non_negative_float)
        verbosity: int = options["verbosity"]
        alias = idempotency_settings.get().database
        now = timezone.now()

        if options["dry_run"]:
            self._dry_run(alias, now, batch_size, max_batches, verbosity)
            return

        started = time.monotonic()
        keys = responses = batches = 0
        after: datetime | None = None
        strictly = False
        exhausted = False
        while max_batches is None or batches < max_batches:
            if batches and pause:
                time.sleep(pause)
            ids, last = select_batch(alias, now, batch_size, after=after, strictly=strictly)
            if not ids:
                exhausted = True
                break
            deleted, gone = delete_batch(alias, ids, now)
            batches += 1
            keys += deleted
            responses += gone
            if last is not None:  # else another purge deleted that row: keep the floor
                after = last
            # A batch that deleted nothing (its rows were busy or taken over) must not be
            # selected again: move strictly past it, so that the command always ends.
            strictly = deleted == 0
            if verbosity >= 2:
                self.stdout.write(
                    f"Batch {batches}: deleted {_count(deleted, 'key')} and "
                    f"{_count(gone, 'stored response')} ({keys} so far)."
                )
            if len(ids) < batch_size:
                exhausted = True
                break

        if verbosity >= 2:
            self.stdout.write(
                f"{_count(batches, 'batch', 'batches')}, "
                f"{_count(responses, 'stored response')}, "
                f"{time.monotonic() - started:.1f} s."
            )
        if verbosity >= 1:
            self.stdout.write(f"Deleted {_count(keys, 'expired idempotency key')}.")
            if not exhausted and select_batch(alias, now, 1, after=after, strictly=strictly)[0]:
                self.stdout.write(
                    f"Stopped after --max-batches={max_batches}; expired keys remain."
                )

    def _dry_run(
        self,
        alias: str,
        now: datetime,
        batch_size: int,
        max_batches: int | None,
        verbosity: int,
    ) -> None:
        total = purgeable(alias, now).count()
        count = total if max_batches is None else min(total, max_batches * batch_size)
        if verbosity >= 2:
            batches = -(-count // batch_size)
            self.stdout.write(
                f"{_count(total, 'expired key')} to delete; this run would take "
                f"{_count(batches, 'batch', 'batches')} of up to {batch_size}."
            )
        if verbosity >= 1:
            self.stdout.write(f"Would delete {_count(count, 'expired idempotency key')}.")
