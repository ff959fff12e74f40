"""The store in one SQLite file: the embedded default for a single connector (and `make demo`).

WAL mode with synchronous=FULL: a committed enrollment survives a power cut, an interrupted one
leaves nothing. Each thread gets its own connection, so reads on the verify path never wait for
each other; writers queue on a lock in this process and on SQLite's lock across processes (the
admin commands). A write transaction is IMMEDIATE: it holds the whole file, so every decision
inside it is atomic.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from faceid_core.errors import StoreError, config_error, store_unavailable
from faceid_core.logs import log

from .schema import SQLITE, Dialect

BUSY_TIMEOUT_S = 5.0
#: Emptying the WAL after a removal: tries, and how long each waits for readers to move on.
CHECKPOINT_TRIES = 4
CHECKPOINT_WAIT_S = 0.25


def _refused(exc: sqlite3.Error) -> StoreError:
    """SQLite's own words (disk full, read-only, locked) name the cause and hold no data."""
    return store_unavailable(f"the store refused the operation: {exc}")


class SqliteDatabase:
    dialect: Dialect = SQLITE

    def __init__(self, path: str) -> None:
        self.path = self.where = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: str) -> SqliteDatabase:
        """The file, created if missing (mode 0600, in a 0700 folder), in WAL mode."""
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            if not os.path.exists(path):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise config_error(f"the store {path} cannot be created ({exc.strerror})") from None
        database = cls(path)
        try:
            mode = database._conn().execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            database.close()
            raise config_error(f"the store {path} cannot be opened ({exc})") from None
        if mode.lower() != "wal":
            database.close()
            raise config_error(f"the store {path} cannot use WAL mode (network filesystem?)")
        return database

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise store_unavailable("the store is closed")
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._connections.append(conn)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA secure_delete=ON")  # removed people leave no ciphertext behind
        self._local.conn = conn
        return conn

    @contextmanager
    def write(self, lock: str | None = None) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: everything inside commits together or not at all, and
        `lock` needs nothing more (the file is held). This process's writers queue on a lock:
        under load, SQLite's busy timeout would otherwise turn a slow turn (threads waiting for
        the CPU) into "database is locked"; the timeout still covers other processes."""
        del lock
        try:
            conn = self._conn()
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise _refused(exc) from None

    migrating = write

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for several SELECTs."""
        try:
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _refused(exc) from None

    def legacy_fixups(self, conn: sqlite3.Connection) -> None:
        """Before SCHEMA: leases of attempts in flight only, from a development build that had
        no token column, are safe to drop (SCHEMA makes the table again)."""
        columns = {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}
        if columns and "token" not in columns:
            conn.execute("DROP TABLE attempts")

    def scrub(self, after: str) -> bool:
        """Copy the WAL into the database and truncate it to 0 bytes. secure_delete zeroes what
        a removal deletes, but the -wal file still holds the older frames (photos, names) until
        a checkpoint. A reader on an older snapshot keeps it from completing: a few short tries,
        then a warning (the removal has committed; SQLite's own checkpoints finish the job)."""
        outcome = "busy"
        try:
            conn = self._conn()
            conn.execute(f"PRAGMA busy_timeout = {int(CHECKPOINT_WAIT_S * 1000)}")
            for attempt in range(CHECKPOINT_TRIES):
                if attempt:
                    time.sleep(CHECKPOINT_WAIT_S)
                if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0:
                    return True
        except (sqlite3.Error, StoreError) as exc:
            outcome = f"failed ({getattr(exc, 'message', exc)})"
        finally:
            with suppress(sqlite3.Error, StoreError):
                self._conn().execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        log(
            "WARNING",
            f"after {after}: could not empty the store's write-ahead log ({outcome}); the removed "
            f"data stays in {self.path}-wal until SQLite's next checkpoint",
        )
        return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
