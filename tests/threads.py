"""Running a test's request in a thread of its own, and with the store unreachable."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from django.db import connections

#: Seconds; an upper bound for a helper thread, never reached when the tests pass.
THREAD_TIMEOUT = 60


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def point_at_nowhere(conn: Any) -> None:
    """Make ``conn`` (this thread's connection) unreachable: a closed port, a missing dir."""
    broken = dict(conn.settings_dict)
    if conn.vendor == "postgresql":
        broken["HOST"], broken["PORT"] = "127.0.0.1", closed_port()
    else:
        broken["NAME"] = f"/nonexistent-{uuid.uuid4().hex}/store.sqlite3"
    # Settings first: the SQLite backend ignores close() on an in-memory database.
    conn.settings_dict = broken
    conn.close()


def in_thread(target: Callable[[], Any]) -> Any:
    """Run ``target`` in a new thread (its own database connection) and return its result."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:
            result["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(THREAD_TIMEOUT)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    return result["value"]


def in_thread_restoring_connection(target: Callable[[], Any]) -> Any:
    """:func:`in_thread`, then put back the settings of that thread's connection.

    The thread's connection is its own (Django keeps one per thread), so whatever
    ``target`` does to it leaves the test's connection and an in-memory SQLite test
    database untouched.
    """

    def run() -> Any:
        conn = connections["default"]
        original = conn.settings_dict
        try:
            return target()
        finally:
            conn.close()
            conn.settings_dict = original
            conn.close()

    return in_thread(run)


def with_unreachable_store(target: Callable[[], Any]) -> Any:
    """Run ``target`` in a thread whose connection to the store's database points nowhere."""

    def run() -> Any:
        point_at_nowhere(connections["default"])
        return target()

    return in_thread_restoring_connection(run)
