"""The store in PostgreSQL, for two or more connectors serving one fleet (psycopg 3 and its pool).

Every connector on the database sees the same people, keys, lockouts, sessions and spent nonces.
A transaction that decides something for a device (an attempt through the lockout gate, its
settlement, an enrollment's limits) first locks that device's row in `locks`: the next one, from
this connector or another, waits for it to commit and then reads what it wrote (READ COMMITTED
reads afresh at each statement). Reads run REPEATABLE READ: one snapshot for several SELECTs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
from faceid_core.errors import StoreError, config_error, store_unavailable
from faceid_core.logs import log
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from .schema import POSTGRESQL, Dialect

CONNECT_TIMEOUT_S = 5
#: Connections a connector holds open at most, unless store.pool_size says otherwise.
POOL_SIZE = 10
#: How long a request waits for a pooled connection, for a row lock, for a statement.
POOL_WAIT_S = 5.0
LOCK_TIMEOUT_MS = 5000
STATEMENT_TIMEOUT_MS = 15000
#: Rewriting the tables after a removal waits at most this long for readers to let go of them,
#: and this long for transactions older than the removal to end.
SCRUB_LOCK_TIMEOUT_MS = 2000
SCRUB_SNAPSHOT_WAIT_S = 2.0
#: VACUUM VERBOSE's count of the row versions it had to keep.
KEPT_ROWS_RE = re.compile(r"(\d+) dead row versions cannot be removed yet")
#: The tables a removal can leave a person's name, photo or a device key behind in.
SCRUBBED_TABLES = ("people", "reference_images", "sessions", "device_keys")
#: Held while a connector creates or upgrades the schema, so two starting at once take turns.
MIGRATION_LOCK = 0x46414345  # "FACE"


URL_SCHEMES = ("postgresql://", "postgres://")
#: What a URL must ask of TLS to reach a database off this host: the server's certificate checked.
CHECKED_TLS = ("verify-full", "verify-ca")
#: The environment libpq reads for what a URL leaves out: where to connect, and how.
LIBPQ_ENVIRONMENT = ("PGHOST", "PGHOSTADDR", "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE")


def _parameters(url: str) -> dict[str, str]:
    """The connection parameters as libpq itself reads the URL (several hosts, the query's
    host= and hostaddr=, percent-encoding); raises ValueError for a URL it cannot read."""
    try:
        parsed = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(str(exc)) from None
    return {key: str(value) for key, value in parsed.items() if value is not None}


def holds_password(url: str) -> bool:
    """A password in the user part or the query: the configuration must give it apart, as a
    secret reference. A URL that cannot be read is taken to hold one."""
    try:
        return "password" in _parameters(url)
    except ValueError:
        return True


def _loopback(host: str) -> bool:
    if host.startswith(("/", "@")) or host == "localhost":  # a socket, or this host's name
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def off_host_without_checked_tls(url: str) -> bool:
    """A database reached over the network with its certificate unchecked: whoever answers at
    its address could relay the login and rewrite lockouts and spent nonces. Every host and
    address the URL names must be this machine's, or sslmode must check the certificate; a
    service file, or libpq's PG* environment, could point anywhere, so they count as off-host."""
    try:
        params = _parameters(url)
    except ValueError:
        return True
    if "service" in params or any(os.environ.get(name) for name in LIBPQ_ENVIRONMENT):
        local = False
    else:
        named = f"{params.get('host', '')},{params.get('hostaddr', '')}".split(",")
        local = all(_loopback(host) for host in named if host)
    return not local and params.get("sslmode") not in CHECKED_TLS


def url_problem(url: str) -> str | None:
    """What is wrong with a store.url, said after its name; None when nothing is. The value is
    never repeated (it might hold a password)."""
    if not url.startswith(URL_SCHEMES):
        return "must start with postgresql:// or postgres:// (its value is not shown)"
    if holds_password(url):
        return "must not hold a password: give it as store.password, a secret reference"
    if off_host_without_checked_tls(url):
        return (
            "reaches a database off this host without checking its certificate: add "
            "?sslmode=verify-full (and sslrootcert=...)"
        )
    return None


def _local_socket_only(url: str) -> bool:
    """Only Unix sockets named (peer or trust authentication may apply there)."""
    try:
        params = _parameters(url)
    except ValueError:
        return False
    hosts = [h for h in params.get("host", "").split(",") if h]
    return not params.get("hostaddr") and all(h.startswith(("/", "@")) for h in hosts)


def describe(url: str) -> str:
    """host:port/database, for messages: never the user's password (there is none in the URL)."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
    except ValueError:
        return "the database of store.url"


def _first_line(exc: psycopg.Error) -> str:
    """The server's first line (connection refused, password refused, timeout, read-only) names
    the cause; a statement's parameters are never part of it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refused(exc: psycopg.Error) -> StoreError:
    return store_unavailable(f"the store refused the operation: {_first_line(exc)}")


class Transaction:
    """The store's SQL is written with SQLite's `?`; psycopg takes `%s`."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._conn.execute(sql.replace("?", "%s"), params)


class PostgresDatabase:
    dialect: Dialect = POSTGRESQL

    def __init__(self, pool: ConnectionPool[Any], where: str) -> None:
        self._pool, self.where = pool, where

    @classmethod
    def open(cls, url: str, password: str | None, pool_size: int) -> PostgresDatabase:
        """A pool of up to `pool_size` connections; the first is opened now, so that a wrong
        address or password stops the start with the server's reason."""
        where = describe(url)
        problem = url_problem(url)
        if problem is not None:
            raise config_error(f"store.url {problem}")
        options = f"-c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}"
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": options,
            "application_name": "faceid-connector",
        }
        if password is not None:
            kwargs["password"] = password
        if password is not None or not _local_socket_only(url):
            # Never send a password in clear or as MD5, whatever the server (or an impostor)
            # asks for, be it given here or read from a passfile.
            kwargs["require_auth"] = "scram-sha-256"
        try:
            pool: ConnectionPool[Any] = ConnectionPool(
                url,
                kwargs=kwargs,
                min_size=1,
                max_size=max(1, pool_size),
                timeout=POOL_WAIT_S,
                check=ConnectionPool.check_connection,
                open=False,
                name="faceid-store",
            )
        except psycopg.ProgrammingError as exc:  # a malformed URL
            raise config_error(f"store.url cannot be used ({exc})") from None
        try:
            # One connection first: the pool would retry a refused password until its timeout,
            # then give only that it timed out.
            psycopg.connect(url, **kwargs).close()
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except psycopg.Error as exc:
            pool.close()
            raise config_error(
                f"the store at {where} cannot be reached ({_first_line(exc)})"
            ) from None
        return cls(pool, where)

    @contextmanager
    def _transaction(self, *setup: str) -> Iterator[Transaction]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                for statement in setup:
                    conn.execute(statement)
                yield Transaction(conn)
        except psycopg.Error as exc:
            raise _refused(exc) from None

    @contextmanager
    def write(self, lock: str | None = None) -> Iterator[Transaction]:
        """One transaction; with `lock`, it first holds that row of `locks` (a device's serial,
        or a name such as "admins") until it commits."""
        with self._transaction() as tx:
            if lock is not None:
                tx.execute(
                    "INSERT INTO locks (name) VALUES (?) "
                    "ON CONFLICT (name) DO UPDATE SET name = excluded.name",
                    (lock,),
                )
            yield tx

    @contextmanager
    def migrating(self) -> Iterator[Transaction]:
        """Schema changes are transactional in PostgreSQL: all of a migration or none."""
        with self._transaction(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})") as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        with self._transaction("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY") as tx:
            yield tx

    def legacy_fixups(self, tx: Transaction) -> None:
        """No PostgreSQL store predates the current schema's tables."""

    def scrub(self, after: str) -> bool:
        """A DELETE leaves the old row versions in the table files until VACUUM reuses the space
        (and even then their bytes may stay): VACUUM FULL writes the tables anew, TOAST (where
        photos live) included, and truncates the old files. It keeps the rows that a transaction
        begun before the removal may still see, so it first waits (briefly) for those to end;
        it takes each table's exclusive lock, waiting at most a moment for readers. When it
        cannot do its whole job it says so in a WARNING, and the removal stands."""
        try:
            with self._pool.connection() as conn:
                self._wait_for_older_snapshots(conn)
                problem = self._rewrite(conn)
        except psycopg.Error as exc:
            problem = _first_line(exc)
        if not problem:
            return True
        log(
            "WARNING",
            f"after {after}: could not rewrite the store's tables ({problem}); the removed data "
            f"stays in the table files at {self.where} until a VACUUM FULL of "
            f"{', '.join(SCRUBBED_TABLES)}",
        )
        return False

    @staticmethod
    def _wait_for_older_snapshots(conn: psycopg.Connection[Any]) -> None:
        """Give transactions begun before the removal (which may still see the removed rows) a
        moment to end: a session of another role shows no start time, so any such session with
        a snapshot is waited for. Best effort; the rewrite's own count says what it kept."""
        since = conn.execute("SELECT clock_timestamp()").fetchone()
        deadline = time.monotonic() + SCRUB_SNAPSHOT_WAIT_S
        while time.monotonic() < deadline:
            held = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL "
                "AND (xact_start IS NULL OR xact_start < %s)",
                since,
            ).fetchone()
            if not held or not held[0]:
                return
            time.sleep(0.05)

    @staticmethod
    def _rewrite(conn: psycopg.Connection[Any]) -> str:
        """'' when VACUUM FULL rewrote every table without a removed row; else why not: a table
        it skipped (not ours), or row versions it had to keep because a transaction, a prepared
        one, a replication slot or a standby may still see them (VERBOSE counts them)."""
        heard: list[str] = []

        def notice(diagnostic: psycopg.errors.Diagnostic) -> None:
            heard.append(f"{diagnostic.message_primary or ''} {diagnostic.message_detail or ''}")

        conn.add_notice_handler(notice)
        conn.execute(f"SET lock_timeout = {SCRUB_LOCK_TIMEOUT_MS}")
        conn.execute("SET statement_timeout = 0")  # the rewrite takes as long as the tables
        try:
            conn.execute(f"VACUUM (FULL, VERBOSE) {', '.join(SCRUBBED_TABLES)}")
        finally:
            conn.remove_notice_handler(notice)
            conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        kept = sum(int(n) for text in heard for n in KEPT_ROWS_RE.findall(text))
        problems = [text.strip() for text in heard if "skipping" in text]
        if kept:
            problems.append(
                f"{kept} removed row versions are still seen by an older transaction, a prepared "
                "transaction, a replication slot or a standby"
            )
        return "; ".join(problems)

    def close(self) -> None:
        self._pool.close()
