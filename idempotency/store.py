"""The SQL behind the engine: claim, look up, take over, complete, release.

The fewest statements the guarantees need, in raw SQL, against one table: the
response is stored in the key's own row. On PostgreSQL the claim is one call of
the function ``idempotency_claim`` (migration 0006), which inserts the key or
reads the row that was there: a first request costs that call and a fenced
completion UPDATE, a replay the call alone. On SQLite, MariaDB and MySQL a
replay is one read, and a first request that read, an INSERT and the UPDATE.
The models keep serving migrations, the admin and the purge command.

MariaDB and MySQL share one path (Django's ``mysql`` vendor), in SQL both accept:
a plain INSERT whose duplicate-key error means "already claimed" (no ``RETURNING``,
no ``ON CONFLICT``, no ``INSERT IGNORE``, which would turn a too-long value into a
warning), the id from ``lastrowid``, and a locking read inside a transaction, where a
REPEATABLE READ snapshot may predate the row.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.db import IntegrityError, NotSupportedError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

from idempotency.conf import idempotency_settings
from idempotency.models import IdempotencyKey

RUNNING: str = IdempotencyKey.State.RUNNING.value  # type: ignore[attr-defined]
COMPLETED: str = IdempotencyKey.State.COMPLETED.value  # type: ignore[attr-defined]
RELEASED: str = IdempotencyKey.State.RELEASED.value  # type: ignore[attr-defined]

#: The ``connection.vendor`` values the store has SQL for (Django's own backends;
#: ``mysql`` is MariaDB and MySQL). Anywhere else it runs no SQL at all.
SUPPORTED_VENDORS = frozenset({"sqlite", "postgresql", "mysql"})

#: MariaDB/MySQL error codes: a duplicate key, and an InnoDB deadlock, after which the
#: server has rolled the whole transaction back.
ER_DUP_ENTRY = 1062
ER_LOCK_DEADLOCK = 1213
#: Attempts at a statement that runs in its own transaction and lost a deadlock.
DEADLOCK_ATTEMPTS = 4


class UnsupportedDatabase(NotSupportedError):
    """The store's database is not one the store has SQL for (check idempotency.E008)."""


def _error_code(exc: BaseException) -> int | None:
    code = exc.args[0] if exc.args else None
    return code if isinstance(code, int) else None


@dataclass(slots=True)
class Existing:
    """A key row that was already there, as the claim found it."""

    id: int
    fingerprint: str
    state: str
    fence: int
    lease_live: bool
    expired: bool
    status: int | None
    headers: list[list[str]] | None
    body: bytes | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Existing:
        headers = row[7]
        if isinstance(headers, str):
            headers = json.loads(headers)
        body = row[8]
        return cls(
            id=row[0],
            fingerprint=row[1],
            state=row[2],
            fence=row[3],
            lease_live=bool(row[4]),
            expired=bool(row[5]),
            status=row[6],
            headers=headers,
            body=bytes(body) if body is not None else None,
        )


@dataclass(frozen=True, slots=True)
class _SQL:
    insert: str
    #: The INSERT says whether it inserted (``RETURNING``); else a duplicate-key error does.
    insert_returns: bool
    fetch: str
    #: The read inside a transaction, where a plain read may see an old snapshot.
    fetch_locking: str
    #: Also clears the old response, in the same row and statement.
    takeover: str
    #: Stores the response in the row, fenced.
    complete: str
    release: str
    #: PostgreSQL: the claim and the read of an existing key in one call of the
    #: function of migration 0006 (a row with a NULL fingerprint is the id just claimed).
    claim_call: str | None


Quote = Callable[[str], str]
T = TypeVar("T")

_sql_cache: dict[tuple[Callable[..., Any], str], Any] = {}


def sql_for(conn: BaseDatabaseWrapper, build: Callable[[str, Quote], T]) -> T:
    """``build(vendor, quote_name)``, once per builder and database vendor."""
    key = (build, conn.vendor)
    sql = _sql_cache.get(key)
    if sql is None:
        sql = _sql_cache[key] = build(conn.vendor, conn.ops.quote_name)
    return sql  # type: ignore[no-any-return, unused-ignore]


def column(model: type[Model], name: str, quote: Quote) -> str:
    """The quoted column of a model field."""
    field = model._meta.get_field(name)
    assert isinstance(field, Field)
    return str(quote(str(field.column)))


def _build_sql(vendor: str, quote: Quote) -> _SQL:
    if vendor not in SUPPORTED_VENDORS:
        raise UnsupportedDatabase(
            f"The idempotency store has no SQL for the {vendor!r} database vendor; it "
            f"supports {', '.join(sorted(SUPPORTED_VENDORS))} (see idempotency.E008)."
        )
    mysql = vendor == "mysql"
    kt = quote(IdempotencyKey._meta.db_table)

    def kc(name: str) -> str:
        return column(IdempotencyKey, name, quote)

    kid, kscope, kkey, kfp = kc("id"), kc("scope"), kc("key"), kc("fingerprint")
    kstate, kfence, klease, kexp = (
        kc("state"),
        kc("fence"),
        kc("lease_expires_at"),
        kc("expires_at"),
    )
    kmethod, kpath, kcreated, kdone = kc("method"), kc("path"), kc("created_at"), kc("completed_at")
    rstatus, rheaders, rbody = kc("response_status"), kc("response_headers"), kc("response_body")
    json_param = "%s::jsonb" if vendor == "postgresql" else "%s"

    insert = (
        f"INSERT INTO {kt} ({kscope}, {kkey}, {kfp}, {kmethod}, {kpath}, {kstate}, {kfence}, "
        f"{klease}, {kcreated}, {kexp}) "
        f"VALUES (%s, %s, %s, %s, %s, '{RUNNING}', 1, %s, %s, %s)"
    )
    if not mysql:
        insert += f" ON CONFLICT ({kscope}, {kkey}) DO NOTHING RETURNING {kid}"
    # lease_live and expired are computed by the database against the caller's clock.
    existing_columns = (
        f"k.{kid}, k.{kfp}, k.{kstate}, k.{kfence}, "
        f"(k.{klease} IS NOT NULL AND k.{klease} > %s), (k.{kexp} <= %s), "
        f"k.{rstatus}, k.{rheaders}, k.{rbody}"
    )
    existing_from = f"FROM {kt} k WHERE k.{kscope} = %s AND k.{kkey} = %s"
    fetch = f"SELECT {existing_columns} {existing_from}"
    # InnoDB under REPEATABLE READ: a plain read in a transaction sees the snapshot of
    # its first read, which may predate a claim or completion that has since committed.
    # A locking read sees the latest committed row (and holds a shared lock on it until
    # the transaction ends, as a duplicate-key error does). READ COMMITTED would not
    # need it; checking which level is in force would cost a query.
    fetch_locking = f"{fetch} LOCK IN SHARE MODE" if mysql else fetch
    takeover = (
        f"UPDATE {kt} SET {kstate} = '{RUNNING}', {kfence} = {kfence} + 1, "
        f"{kfp} = %s, "
        f"{kmethod} = %s, {kpath} = %s, {klease} = %s, {kcreated} = %s, {kdone} = NULL, "
        f"{rstatus} = NULL, {rheaders} = NULL, {rbody} = NULL, "
        f"{kexp} = %s WHERE {kid} = %s AND {kfence} = %s AND ({kstate} = '{RELEASED}' "
        f"OR ({kstate} = '{COMPLETED}' AND {kexp} <= %s) "
        f"OR ({kstate} = '{RUNNING}' AND {klease} <= %s))"
    )
    # The TTL counts from the claim, which set expires_at: the completion leaves it, so
    # that no indexed column changes and PostgreSQL can update the row HOT (InnoDB then
    # skips the index too). Only a key whose TTL ran out while its view ran gets a
    # fresh one, so that a stored response is never born expired.
    complete = (
        f"UPDATE {kt} SET {kstate} = '{COMPLETED}', {klease} = NULL, {kdone} = %s, "
        f"{kexp} = CASE WHEN {kexp} > %s THEN {kexp} ELSE %s END, "
        f"{rstatus} = %s, {rheaders} = {json_param}, {rbody} = %s "
        f"WHERE {kid} = %s AND {kfence} = %s AND {kstate} = '{RUNNING}'"
    )
    release = (
        f"UPDATE {kt} SET {kstate} = '{RELEASED}', {klease} = NULL "
        f"WHERE {kid} = %s AND {kfence} = %s AND {kstate} = '{RUNNING}'"
    )
    # PostgreSQL: the function inserts and, on a conflict, reads the row, in one round
    # trip; PL/pgSQL keeps both plans for the server session (migration 0006).
    claim_call = None
    if vendor == "postgresql":
        claim_call = "SELECT * FROM idempotency_claim(%s, %s, %s, %s, %s, %s, %s, %s)"
    # MariaDB/MySQL: Django's backend connects with CLIENT.FOUND_ROWS, so an UPDATE's
    # row count is the rows it matched, not those it changed. Each fenced UPDATE here
    # changes the state or the fence it matched on, so matched and changed are the same
    # rows, and "rowcount == 1" means "this caller held the key" with or without the flag.
    return _SQL(
        insert=insert,
        insert_returns=not mysql,
        fetch=fetch,
        fetch_locking=fetch_locking,
        takeover=takeover,
        complete=complete,
        release=release,
        claim_call=claim_call,
    )


#: From this size on, a response body goes to PostgreSQL as a binary parameter.
BINARY_BODY_MIN = 64 * 1024


def _binds_binary(conn: BaseDatabaseWrapper) -> bool:
    """Whether ``conn`` is PostgreSQL through psycopg 3, which can bind parameters
    server-side and in binary."""
    if conn.vendor != "postgresql":
        return False
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3)


def _execute_binary(conn: BaseDatabaseWrapper, statement: str, params: list[Any]) -> int:
    """Run ``statement`` with server-side binding; return its row count.

    Django's default psycopg 3 cursor binds client-side: it escapes a ``bytea``
    parameter into the query text, so a 5 MiB body would be held four times over
    (escaped bytes, query text, its encoding, libpq's buffer). Bound server-side
    the body travels as binary, as it is. The statement joins the connection's
    current transaction like any other, but bypasses Django's cursor wrapper, so it
    is not in ``connection.queries``.
    """
    import psycopg

    conn.ensure_connection()
    with conn.wrap_database_errors, psycopg.Cursor(conn.connection) as cursor:
        # Never a named prepared statement, whatever OPTIONS["prepare_threshold"] says:
        # behind a pooler in transaction mode (PgBouncer) the next transaction may run
        # on a server connection where it does not exist, or already does.
        cursor.execute(statement, params, prepare=False)
        return int(cursor.rowcount)


#: Room left beside a response's escaped body for the rest of its completion statement
#: on MariaDB/MySQL (the SQL, the key's id, the escaped headers), by the system check
#: idempotency.W007 when it says how large a body the server takes.
STATEMENT_MARGIN = 64 * 1024

#: The bytes that MariaDB/MySQL string escaping (``mysql_real_escape_string``) turns
#: into two: a body goes to the server as an escaped literal in the query text.
_MYSQL_ESCAPED = (b"\\", b"'", b'"', b"\x00", b"\n", b"\r", b"\x1a")

#: From this size on, a body is measured against the server's ``max_allowed_packet``
#: before it is sent; below it, it fits any server the app supports.
PACKET_CHECK_MIN = 64 * 1024

_PACKET_ATTR = "_idempotency_max_allowed_packet"

#: The completion statement without its values, and the quotes around them, at most.
_STATEMENT_SQL = 1024


def max_allowed_packet(conn: BaseDatabaseWrapper) -> int:
    """The largest statement, in bytes, that the MariaDB/MySQL server of ``conn`` takes.

    Read once per connection: the session value is fixed when the connection opens.
    """
    conn.ensure_connection()
    raw = conn.connection
    # Kept with the connection it was read on (not its id, which a new one may reuse).
    cached = getattr(conn, _PACKET_ATTR, None)
    if cached is not None and cached[0] is raw:
        return int(cached[1])
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@max_allowed_packet")
        row = cursor.fetchone()
    packet = int(row[0])
    setattr(conn, _PACKET_ATTR, (raw, packet))
    return packet


def mysql_statement_size(body: bytes, headers_json: str) -> int:
    """An upper bound of the size of the statement that stores ``body`` on MariaDB/MySQL."""
    escaped = len(body) + sum(body.count(byte) for byte in _MYSQL_ESCAPED)
    return escaped + 2 * len(headers_json.encode()) + _STATEMENT_SQL


#: psycopg's prepare_threshold while one of the store's statements runs prepared on a
#: connection that has none: no other statement is run that many times.
_ONLY_WHEN_ASKED = 2**62

#: The server-binding psycopg 3 cursor classes, by (prepare, binary results).
_cursor_classes: dict[tuple[bool, bool], type[Any]] = {}


def _server_binding_class(prepare: bool, binary: bool) -> type[Any]:
    found = _cursor_classes.get((prepare, binary))
    if found is None:
        import psycopg

        class ServerBindingCursor(psycopg.Cursor[Any]):
            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                # A named prepared statement only where PREPARED_STATEMENTS asks for
                # one, whatever OPTIONS["prepare_threshold"] says (see _execute_binary).
                if not prepare:
                    return super().execute(query, params, prepare=False, binary=binary)
                # Django opens connections with prepare_threshold=None, which turns
                # psycopg's prepared statements off even for prepare=True: for this
                # statement only, a threshold that nothing else reaches.
                conn = self.connection
                saved = conn.prepare_threshold
                if saved is None:
                    conn.prepare_threshold = _ONLY_WHEN_ASKED
                try:
                    return super().execute(query, params, prepare=True, binary=binary)
                finally:
                    if saved is None:
                        conn.prepare_threshold = None

            def _send_query_prepared(self, name: Any, pgq: Any, *args: Any, **kw: Any) -> Any:
                # psycopg keeps the query it ran for a statement it did not prepare
                # only; Django's query log (DEBUG, CaptureQueriesContext) reads it.
                self._query = pgq
                return super()._send_query_prepared(name, pgq, *args, **kw)

        found = _cursor_classes[prepare, binary] = ServerBindingCursor
    return found


def _store_cursor(conn: BaseDatabaseWrapper, *, binary: bool = False) -> Any:
    """A cursor for the store's own statements.

    On PostgreSQL through psycopg 3, a cursor that binds server-side: prepared once
    per connection when ``PREPARED_STATEMENTS`` is on, so that a statement is no
    longer parsed and planned on every request; and, for the reads that may carry a
    stored body back (``binary``), with binary results. Django's default cursor
    binds client-side and gets its results as text: a ``bytea`` comes back
    hex-escaped, twice its size, and is unescaped into a third and a fourth buffer
    before it is a ``bytes``, so a replay held five times the body; in binary the
    body arrives as it is, and becomes ``bytes`` in one copy. The cursor is wrapped
    like any Django cursor, so it joins the connection's transaction and is counted
    in ``connection.queries``. Elsewhere, and for the rest, it is the connection's
    own cursor.
    """
    if not _binds_binary(conn):
        return conn.cursor()
    prepare = idempotency_settings.get().prepared_statements
    if not (prepare or binary):
        return conn.cursor()
    conn.close_if_health_check_failed()
    conn.ensure_connection()
    with conn.wrap_database_errors:
        raw = _server_binding_class(prepare, binary)(conn.connection)
    conn.validate_thread_sharing()
    return conn.make_debug_cursor(raw) if conn.queries_logged else conn.make_cursor(raw)


def _reading_cursor(conn: BaseDatabaseWrapper) -> Any:
    """The cursor for the reads that may carry a stored body back (:func:`_store_cursor`)."""
    return _store_cursor(conn, binary=True)


class Store:
    """Statements against one database alias."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.alias]

    def _prepare(self) -> tuple[BaseDatabaseWrapper, _SQL]:
        conn = self.connection
        return conn, sql_for(conn, _build_sql)

    def retrying(self, conn: BaseDatabaseWrapper, work: Callable[[], T]) -> T:
        """``work()``, run again when InnoDB chose it as a deadlock's victim.

        The server has then rolled back the transaction the statements ran in. When
        that transaction was their own (autocommit, or a block opened by the store),
        running them again is what the client would do, minus a round trip. Inside
        the caller's transaction (``ATOMIC``, ``ATOMIC_REQUESTS``) it is gone with
        whatever else it held: the error goes on, and the block is marked for
        rollback so that Django does not commit what was run after it.
        """
        outer = conn.in_atomic_block
        attempt = 1
        while True:
            try:
                return work()
            except OperationalError as exc:
                if conn.vendor != "mysql" or _error_code(exc) != ER_LOCK_DEADLOCK:
                    raise
                if outer:
                    transaction.set_rollback(True, using=self.alias)
                    raise
                if attempt >= DEADLOCK_ATTEMPTS:
                    raise
            # Apart, so that the same transactions do not meet again at once.
            time.sleep(random.uniform(0.001, 0.005) * attempt)
            attempt += 1

    def claim(
        self,
        *,
        scope: str,
        key: str,
        fingerprint: str,
        method: str,
        path: str,
        now: datetime,
        lease_until: datetime,
        expires_at: datetime,
    ) -> int | Existing | None:
        """Insert a running key. Returns its id, the row that was there, or None
        when the row vanished between the insert and the read (call again)."""
        conn, sql = self._prepare()
        ts = conn.ops.adapt_datetimefield_value
        insert_params: list[Any] = [scope, key, fingerprint, method, path]
        insert_params += [ts(lease_until), ts(now), ts(expires_at)]

        def work() -> int | Existing | None:
            if sql.claim_call is not None:
                # PostgreSQL: one call claims, or reads the row that was there.
                with _reading_cursor(conn) as cursor:
                    cursor.execute(sql.claim_call, insert_params)
                    found = cursor.fetchone()
                if found is None:
                    return None
                return int(found[0]) if found[1] is None else Existing.from_row(found)
            # InnoDB inside a transaction: what a plain read finds is read again with a
            # lock (see _build_sql). Only a row that is there: a locking read of a
            # missing key would lock its gap in the index under REPEATABLE READ, and
            # two requests holding that gap would deadlock on their INSERTs.
            relock = conn.in_atomic_block and sql.fetch_locking != sql.fetch
            fetch_params = [ts(now), ts(now), scope, key]
            with _store_cursor(conn) as cursor:
                # A read first. SQLite: an INSERT takes the database's single write lock
                # even when it conflicts, so a replay reads and never writes. InnoDB: a
                # conflicting INSERT is an error and a lock; a read is neither.
                cursor.execute(sql.fetch, fetch_params)
                row = cursor.fetchone()
                if row is not None and not relock:
                    return Existing.from_row(row)
                if row is not None:
                    pass  # read again below, with a lock
                elif sql.insert_returns:
                    # SQLite: the INSERT writes nothing when a claim came in between.
                    cursor.execute(sql.insert, insert_params)
                    row = cursor.fetchone()
                    if row is not None:
                        return int(row[0])
                else:
                    # MariaDB/MySQL: a duplicate key undoes only this statement, never
                    # the transaction around it, so no savepoint is needed to go on.
                    try:
                        cursor.execute(sql.insert, insert_params)
                    except IntegrityError as exc:
                        if _error_code(exc) != ER_DUP_ENTRY:
                            raise
                    else:
                        return int(cursor.lastrowid)
            with _reading_cursor(conn) as cursor:
                cursor.execute(sql.fetch_locking if relock else sql.fetch, fetch_params)
                row = cursor.fetchone()
            return Existing.from_row(row) if row is not None else None

        return self.retrying(conn, work)

    def fetch(self, *, scope: str, key: str, now: datetime) -> Existing | None:
        conn, sql = self._prepare()
        ts = conn.ops.adapt_datetimefield_value

        def work() -> Existing | None:
            fetch = sql.fetch_locking if conn.in_atomic_block else sql.fetch
            with _reading_cursor(conn) as cursor:
                cursor.execute(fetch, [ts(now), ts(now), scope, key])
                row = cursor.fetchone()
            return Existing.from_row(row) if row is not None else None

        return self.retrying(conn, work)

    def take_over(
        self,
        existing: Existing,
        *,
        fingerprint: str,
        method: str,
        path: str,
        now: datetime,
        lease_until: datetime,
        expires_at: datetime,
    ) -> bool:
        """Claim a released, expired or abandoned key; True if this caller won it."""
        conn, sql = self._prepare()
        ts = conn.ops.adapt_datetimefield_value
        params: list[Any] = [fingerprint, method, path, ts(lease_until), ts(now), ts(expires_at)]
        params += [existing.id, existing.fence, ts(now), ts(now)]

        def work() -> bool:
            with _store_cursor(conn) as cursor:
                cursor.execute(sql.takeover, params)
                return bool(cursor.rowcount == 1)

        return self.retrying(conn, work)

    def refusal(self, body: bytes, headers: list[list[str]]) -> str | None:
        """Why the database would refuse a statement that stores ``body``, or None.

        MariaDB and MySQL refuse a statement larger than ``max_allowed_packet``, and
        the body travels in it escaped (each quote, backslash, NUL, CR, LF and ^Z is
        sent as two bytes). Sent anyway, the completion fails, and the server may
        close the connection, so that the key cannot even be released. SQLite and
        PostgreSQL take a value of up to 1 GB.
        """
        conn = self.connection
        if conn.vendor != "mysql" or len(body) < PACKET_CHECK_MIN:
            return None
        packet = max_allowed_packet(conn)
        headers_json = json.dumps(headers, separators=(",", ":"))
        if 2 * len(body) + 2 * len(headers_json.encode()) + _STATEMENT_SQL <= packet:
            return None  # fits however much of it escaping doubles: no need to count
        needed = mysql_statement_size(body, headers_json)
        if needed <= packet:
            return None
        return (
            f"its statement ({needed} bytes, escaped) is larger than the server's "
            f"max_allowed_packet ({packet} bytes)"
        )

    def complete(
        self,
        key_id: int,
        fence: int,
        *,
        now: datetime,
        expires_at: datetime,
        status: int,
        headers: list[list[str]],
        body: bytes,
    ) -> bool:
        """Store the response if this caller still holds the key (its fence).

        The key keeps the expiry its claim gave it; ``expires_at`` replaces it only
        when that has already passed at ``now``.
        """
        conn, sql = self._prepare()
        ts = conn.ops.adapt_datetimefield_value
        headers_json = json.dumps(headers, separators=(",", ":"))
        at = ts(now)
        params = [at, at, ts(expires_at), status, headers_json, body, key_id, fence]
        if len(body) >= BINARY_BODY_MIN and _binds_binary(conn):
            return _execute_binary(conn, sql.complete, params) == 1

        def work() -> bool:
            with _store_cursor(conn) as cursor:
                cursor.execute(sql.complete, params)
                return bool(cursor.rowcount == 1)

        return self.retrying(conn, work)

    def release(self, key_id: int, fence: int) -> bool:
        """Free a running key with nothing stored. It keeps its fingerprint and expiry:
        a retry takes it over, another request under the key is a mismatch."""
        conn, sql = self._prepare()

        def work() -> bool:
            with _store_cursor(conn) as cursor:
                cursor.execute(sql.release, [key_id, fence])
                return bool(cursor.rowcount == 1)

        return self.retrying(conn, work)
