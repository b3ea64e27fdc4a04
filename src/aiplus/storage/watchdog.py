"""A client-side deadline on every wait for PostgreSQL, for when the network, not the server, is what failed.

``statement_timeout`` is enforced by the server, which never hears of a query lost on the way; TCP timeouts do not
fire when something in between (a proxy, a load balancer) acknowledges the bytes and then drops them. So each wait
for an answer — a statement, a commit or rollback, the ping on checkout — is given a deadline, and a watcher
thread shuts down the socket of a connection that passes it: the driver then fails at once (OperationalError),
SQLAlchemy discards the connection, and the caller answers 503 instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator

import sqlalchemy as sa

log = logging.getLogger(__name__)

PATIENT = "aiplus_patient"  # a connection whose ``info`` holds this is never cut (migrations, their lock)


class Watchdog:
    def __init__(self, statement_s: float, ping_s: float, tick_s: float = 0.25):
        self.statement_s = statement_s
        self.ping_s = ping_s
        self._tick = tick_s
        self._deadlines: dict[int, tuple[float, weakref.ref]] = {}  # id(dbapi connection) -> (deadline, it)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def attach(self, engine: sa.Engine) -> None:
        """Guard every connection of ``engine`` (a checkout ping replaces ``pool_pre_ping``)."""
        sa.event.listen(engine, "checkout", self._ping)
        sa.event.listen(engine, "checkin", lambda dbapi, _record: self.disarm(dbapi))
        sa.event.listen(engine, "close", lambda dbapi, _record: self.disarm(dbapi))
        sa.event.listen(engine, "invalidate", lambda dbapi, _record, _exc: self.disarm(dbapi))
        sa.event.listen(engine, "reset", lambda dbapi, _record, _state: self.arm(dbapi, self.statement_s))
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)
        sa.event.listen(engine, "handle_error", lambda ctx: self._disarm_conn(ctx.connection))
        sa.event.listen(engine, "commit", self._arm_conn)
        sa.event.listen(engine, "rollback", self._arm_conn)

    def arm(self, dbapi_connection, seconds: float) -> None:
        with self._lock:
            self._deadlines[id(dbapi_connection)] = (
                time.monotonic() + seconds,
                weakref.ref(dbapi_connection),
            )
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="aiplus-db-watchdog", daemon=True)
                self._thread.start()

    def disarm(self, dbapi_connection) -> None:
        with self._lock:
            self._deadlines.pop(id(dbapi_connection), None)

    def _ping(self, dbapi_connection, _record, _proxy) -> None:
        self.arm(dbapi_connection, self.ping_s)
        # in autocommit, as SQLAlchemy's own pre-ping does: the ping must not leave a transaction open, or the
        # caller could not choose its isolation level (psycopg refuses to change it inside a transaction)
        autocommit = dbapi_connection.autocommit
        try:
            dbapi_connection.autocommit = True
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.autocommit = autocommit
        except Exception as exc:  # the pool discards it and connects afresh (bounded by connect_timeout)
            raise sa.exc.DisconnectionError(f"connection lost: {exc}") from exc
        finally:
            self.disarm(dbapi_connection)

    def _arm_conn(self, conn: sa.Connection) -> None:
        if conn is None or conn.invalidated:  # nothing goes over the wire (and ``.connection`` would raise)
            return
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            if not conn.info.get(PATIENT):
                self.arm(conn.connection.dbapi_connection, self.statement_s)

    def _disarm_conn(self, conn: sa.Connection | None) -> None:
        if conn is None or conn.invalidated:
            return
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self.disarm(conn.connection.dbapi_connection)

    def _before(self, conn, _cursor, _statement, _parameters, _context, _executemany) -> None:
        self._arm_conn(conn)

    def _after(self, conn, _cursor, _statement, _parameters, _context, _executemany) -> None:
        self._disarm_conn(conn)

    def _watch(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                late = [key for key, (deadline, _ref) in self._deadlines.items() if deadline < now]
                connections = [self._deadlines.pop(key)[1]() for key in late]
                for connection in connections:  # under the lock: a disarm cannot slip in between
                    if connection is not None:
                        _shut(connection)


def _shut(dbapi_connection) -> None:
    """Shut its socket down (not close: the driver still owns the descriptor): its wait ends with an error."""
    try:
        if dbapi_connection.closed:
            return
        fd = dbapi_connection.fileno()  # asked now, so never a descriptor since closed and reused
        sock = socket.socket(fileno=os.dup(fd))
    except Exception:  # closed meanwhile: nothing to cut
        return
    log.warning("database: no answer in time; cutting the connection (fd %d)", fd)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextlib.contextmanager
def patient(conn: sa.Connection) -> Iterator[None]:
    """Let ``conn`` wait as long as its work takes (a migration, waiting for another migrator's lock)."""
    conn.info[PATIENT] = True
    try:
        yield
    finally:
        conn.info.pop(PATIENT, None)
