"""The connector's state in one SQLite file: device keys and enrolled people's reference photos
(AES-GCM encrypted, each bound to its row), the audit log, lockouts and unlocked sessions, the
device web sessions held open (their cookies AES-GCM encrypted, bound to the serial), so a
crash leaves none unknown, and the console's administrators (Argon2id hashes) and their sessions
(only the SHA-256 of each cookie).

WAL mode with synchronous=FULL: a committed enrollment survives a power cut, an interrupted one
leaves nothing. Each thread gets its own connection, so reads on the verify path never wait for
each other; writers queue on SQLite's lock (busy_timeout).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from faceid_core.contract import MAX_REFERENCES
from faceid_core.errors import (
    FaceIdError,
    Refusal,
    StoreError,
    config_error,
    store_unavailable,
)
from faceid_core.logs import log

from .names import name_key

SCHEMA_VERSION = 4
#: Older schemas this connector upgrades in place (the new tables are created by SCHEMA, the
#: new columns by ADDED_COLUMNS).
UPGRADABLE_FROM = (1, 2, 3)
#: Columns added since schema 1: (table, column, type), added when missing.
ADDED_COLUMNS = (("audit", "actor", "TEXT"),)
KEY_CHECK_PLAINTEXT = b"faceid store key check v1"
NONCE_BYTES = 12
BUSY_TIMEOUT_S = 5.0
AUDIT_PRUNE_EVERY = 1000
#: Emptying the WAL after a removal: tries, and how long each waits for readers to move on.
CHECKPOINT_TRIES = 4
CHECKPOINT_WAIT_S = 0.25

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    serial TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (serial, name)
);
CREATE TABLE IF NOT EXISTS reference_images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reference_images_person ON reference_images (person_id, created);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    request_id TEXT,
    serial TEXT,
    action TEXT NOT NULL,
    outcome TEXT,
    code TEXT,
    person TEXT,
    score REAL,
    stages_ms TEXT,
    actor TEXT
);
CREATE INDEX IF NOT EXISTS audit_serial ON audit (serial, id);
CREATE TABLE IF NOT EXISTS lockout (
    serial TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    locked_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS device_keys (
    serial TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    serial TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    lease_until REAL NOT NULL,
    prior_failures INTEGER NOT NULL,
    prior_locked_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    serial TEXT PRIMARY KEY,
    person TEXT NOT NULL,
    unlocked_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS device_reports (
    serial TEXT PRIMARY KEY,
    reported_at REAL NOT NULL,
    push_id TEXT
);
CREATE TABLE IF NOT EXISTS device_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    serial TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS admins (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_sha256 TEXT PRIMARY KEY,
    admin TEXT NOT NULL REFERENCES admins(name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_admin ON console_sessions (admin);
"""


class Reference(NamedTuple):
    """A decrypted reference photo; unpacks as (person, image)."""

    person: str
    image: bytes


@dataclass(frozen=True)
class PersonInfo:
    name: str
    references: int
    created: float
    last_enrolled: float


@dataclass(frozen=True)
class ReferenceInfo:
    """A kept photo, without its image: what the console lists."""

    id: int
    created: float


@dataclass(frozen=True)
class AdminInfo:
    """A console administrator, without the password hash."""

    name: str
    created: float


@dataclass(frozen=True)
class Enrollment:
    person_id: int
    reference_id: int
    references: int  # this person's photos after the change
    dropped: int  # oldest photos removed to stay within the limit


@dataclass(frozen=True)
class AuditEntry:
    """One audited request. Facts only: never an image, a token or a password."""

    action: str
    outcome: str | None = None
    serial: str | None = None
    request_id: str | None = None
    code: str | None = None
    person: str | None = None
    score: float | None = None
    stages_ms: Mapping[str, float] | None = None
    # An administrator's command: the operating-system user who ran it; a console action (or a
    # login): the console administrator's name.
    actor: str | None = None
    time: float | None = None  # set when written
    id: int | None = None  # set when read back

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LockoutState:
    failures: int = 0
    locked_until: float = 0.0


@dataclass(frozen=True)
class Session:
    """An unlocked session: who matched, and when (which also tells one session from the next)."""

    person: str
    started: float


@dataclass(frozen=True)
class DeviceWebSession:
    """A device web session the connector opened and has not seen signed out."""

    entry: int
    serial: str
    created: float
    cookies: dict[str, str] | None = field(repr=False)  # None: failed its integrity check


#: What begin_attempt decides (Gate).
Decision = Literal["go", "busy", "locked_out"]
#: How an attempt settles (finish_attempt): a match, a failure towards the lockout, or neither.
Settlement = Literal["match", "failure", "neutral"]


class Gate(NamedTuple):
    """What begin_attempt decided: "go" (the attempt holds the device, `token` names its hold),
    "busy" (another attempt does) or "locked_out"; `state` is the lockout as it now stands."""

    decision: Decision
    state: LockoutState
    token: str | None = None


def _aad(serial: str, person_id: int, reference_id: int) -> bytes:
    """Binds a ciphertext to its row: moving it to another row or person fails to decrypt."""
    return f"faceid-ref-v1|{serial}|{person_id}|{reference_id}".encode()


def _key_aad(serial: str) -> bytes:
    """Binds a device key to its serial: a key moved to another device's row fails to decrypt."""
    return f"faceid-device-key-v1|{serial}".encode()


def _web_session_aad(serial: str) -> bytes:
    """Binds a device web session's cookies to the device that issued them."""
    return f"faceid-device-session-v1|{serial}".encode()


def _refused(exc: sqlite3.Error) -> StoreError:
    """SQLite's own words (disk full, read-only, locked) name the cause and hold no data."""
    return store_unavailable(f"the store refused the operation: {exc}")


class Store:
    """Thread-safe access to the store; open with Store.open(path, key)."""

    def __init__(self, path: str, key: bytes, max_audit_rows: int) -> None:
        self.path = path
        self._aead = AESGCM(key)
        self._max_audit_rows = max_audit_rows
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], key: bytes, *, max_audit_rows: int = 100_000
    ) -> Store:
        """Create the store if missing (mode 0600) and check the key against the one it was
        created with; a mismatch is a config_error, before anything is read or written."""
        if len(key) != 32:
            raise config_error("the store key must be 32 bytes")
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            if not os.path.exists(path):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise config_error(f"the store {path} cannot be created ({exc.strerror})") from None
        store = cls(path, key, max_audit_rows)
        try:
            store._initialise()
        except FaceIdError:
            store.close()
            raise
        except sqlite3.DatabaseError as exc:
            store.close()
            raise config_error(f"the store {path} cannot be opened ({exc})") from None
        return store

    def _initialise(self) -> None:
        conn = self._conn()
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise config_error(f"the store {self.path} cannot use WAL mode (network filesystem?)")
        with self._write() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}
            if columns and "token" not in columns:
                # Leases of attempts in flight only, from a development build: safe to drop.
                conn.execute("DROP TABLE attempts")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for table, column, kind in ADDED_COLUMNS:
                if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            rows = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            if "key_check" not in rows:
                nonce = os.urandom(NONCE_BYTES)
                check = nonce + self._aead.encrypt(nonce, KEY_CHECK_PLAINTEXT, b"key-check")
                conn.execute("INSERT INTO meta VALUES ('key_check', ?)", (check,))
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                return
            self._check_key(rows["key_check"])  # a wrong key rolls everything back
            schema = int(rows.get("schema", 0))
            if schema in UPGRADABLE_FROM:
                conn.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (SCHEMA_VERSION,))
                schema = SCHEMA_VERSION
        if schema != SCHEMA_VERSION:
            raise config_error(
                f"the store {self.path} has schema {rows.get('schema')}, "
                f"this connector reads schema {SCHEMA_VERSION}"
            )

    def _check_key(self, check: bytes) -> None:
        try:
            plain = self._aead.decrypt(check[:NONCE_BYTES], check[NONCE_BYTES:], b"key-check")
        except InvalidTag:
            plain = b""
        if plain != KEY_CHECK_PLAINTEXT:
            raise config_error("the store key does not match the one the store was created with")

    # --- connections and transactions -----------------------------------------------------

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
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: everything inside commits together or not at all. This
        process's writers queue on a lock: under load, SQLite's busy timeout would otherwise
        turn a slow turn (threads waiting for the CPU) into "database is locked"; the timeout
        still covers other processes (the admin commands)."""
        conn = self._conn()
        try:
            with self._write_lock:
                yield from self._transaction(conn)
        except sqlite3.Error as exc:
            raise _refused(exc) from None

    @staticmethod
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for several SELECTs."""
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _refused(exc) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def check(self) -> None:
        """For /healthz: the file answers and still opens with our key."""
        try:
            row = self._conn().execute("SELECT value FROM meta WHERE name='key_check'").fetchone()
        except sqlite3.Error as exc:
            raise store_unavailable(f"the store does not answer ({type(exc).__name__})") from None
        if row is None:
            raise store_unavailable("the store has lost its key check")
        self._check_key(row[0])

    # --- device keys ----------------------------------------------------------------------

    def set_device_key(self, serial: str, key: bytes, *, audit: AuditEntry | None = None) -> None:
        """Store (or replace) the device's protocol key, encrypted; enrollments are kept."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, key, _key_aad(serial))
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO device_keys (serial, nonce, ciphertext, created) "
                "VALUES (?, ?, ?, ?)",
                (serial, nonce, sealed, time.time()),
            )
            if audit is not None:
                self._insert_audit(conn, audit, time.time())

    def device_key(self, serial: str) -> bytes | None:
        """The device's key; None when it has none. A key that fails its integrity check is an
        error, never None (that would read as "unknown device" and hide the damage)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT nonce, ciphertext FROM device_keys WHERE serial = ?", (serial,)
            ).fetchone()
        if row is None:
            return None
        try:
            return self._aead.decrypt(row[0], row[1], _key_aad(serial))
        except InvalidTag:
            raise store_unavailable(
                f"the key of device {serial} failed its integrity check: the store was modified "
                "or damaged"
            ) from None

    # --- device web sessions (device.SessionLedger) ---------------------------------------

    def record_device_session(self, serial: str, cookies: Mapping[str, str]) -> int:
        """Write down an open device web session (its cookies, encrypted) before it is used;
        returns its entry. The device never ends it by itself: forget it once signed out."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(
            nonce, json.dumps(dict(cookies)).encode(), _web_session_aad(serial)
        )
        with self._write() as conn:
            entry = conn.execute(
                "INSERT INTO device_sessions (serial, nonce, ciphertext, created) "
                "VALUES (?, ?, ?, ?)",
                (serial, nonce, sealed, time.time()),
            ).lastrowid
        assert entry is not None
        return int(entry)

    def forget_device_session(self, entry: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM device_sessions WHERE id = ?", (entry,))

    def record_report(self, serial: str, push_id: str | None, now: float) -> None:
        """A device's macro reported in (signed POST /v1/status): `admin provision` waits for
        the push it made to report."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO device_reports (serial, reported_at, push_id) VALUES (?, ?, ?) "
                "ON CONFLICT (serial) DO UPDATE SET reported_at = excluded.reported_at, "
                "push_id = excluded.push_id",
                (serial, now, push_id),
            )

    def last_report(self, serial: str) -> tuple[float, str | None] | None:
        """(when, push id) of the device's last report, None if it never reported."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT reported_at, push_id FROM device_reports WHERE serial = ?", (serial,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def device_sessions(self) -> list[DeviceWebSession]:
        """Every recorded session, oldest first (what a crash left open, at start-up)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, serial, nonce, ciphertext, created FROM device_sessions ORDER BY id"
            ).fetchall()
        sessions = []
        for entry, serial, nonce, sealed, created in rows:
            try:
                plain = self._aead.decrypt(nonce, sealed, _web_session_aad(serial))
                cookies: dict[str, str] | None = dict(json.loads(plain))
            except (InvalidTag, ValueError, TypeError):
                cookies = None
            sessions.append(DeviceWebSession(int(entry), str(serial), float(created), cookies))
        return sessions

    def count_device_sessions(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM device_sessions").fetchone()[0])

    # --- people and reference photos ------------------------------------------------------

    def add_reference(
        self,
        serial: str,
        person: str,
        jpeg: bytes,
        *,
        audit: AuditEntry | None = None,
        max_references_per_person: int = 5,
        max_people: int = MAX_REFERENCES,
        only_if_empty: bool = False,
        session: Session | None = None,
        session_ttl_s: float = 0.0,
        now: float | None = None,
    ) -> Enrollment:
        """Store one photo of `person` (creating the person), drop their oldest photos beyond the
        limit and write `audit`, all in one transaction, in which the conditions are checked
        too, so that no race gets past them: only_if_empty, "nobody is enrolled yet"; `session`,
        that very unlocked session is still open (younger than session_ttl_s) and `person` is
        an existing person's name. A new name whose name_key is another person's is refused
        (name_taken)."""
        now = time.time() if now is None else now
        with self._write() as conn:
            names = dict(conn.execute("SELECT name, id FROM people WHERE serial = ?", (serial,)))
            count = len(names)
            if only_if_empty and count > 0:
                raise Refusal("locked", "Someone is already enrolled on this device")
            if session is not None and not self._session_open(
                conn, serial, session, session_ttl_s, now
            ):
                raise Refusal("session_ended", "The unlocked session ended first")
            person_id = names.get(person)
            if person_id is None and session is not None:
                raise Refusal("new_person_needs_admin", f"{person!r} is not enrolled")
            if person_id is None:
                key = name_key(person)
                taken = next((name for name in names if name_key(name) == key), None)
                if taken is not None:
                    raise Refusal(
                        "name_taken",
                        f"{person!r} reads as {taken!r}, who is already enrolled on this device",
                    )
                if count >= max_people:
                    raise Refusal(
                        "too_many_references",
                        f"This device already has {count} people enrolled (at most {max_people})",
                    )
                person_id = conn.execute(
                    "INSERT INTO people (serial, name, created) VALUES (?, ?, ?)",
                    (serial, person, now),
                ).lastrowid
            assert person_id is not None
            ref_id = conn.execute(
                "INSERT INTO reference_images (person_id, nonce, ciphertext, created) "
                "VALUES (?, x'', x'', ?)",
                (person_id, now),
            ).lastrowid
            assert ref_id is not None
            nonce = os.urandom(NONCE_BYTES)
            sealed = self._aead.encrypt(nonce, jpeg, _aad(serial, person_id, ref_id))
            conn.execute(
                "UPDATE reference_images SET nonce = ?, ciphertext = ? WHERE id = ?",
                (nonce, sealed, ref_id),
            )
            # The person's first photo (an administrator's, or the first enrollment's) is their
            # anchor and is never dropped: updates replace only the others, so no chain of
            # updates can walk a person's photos away from their own face.
            dropped = conn.execute(
                "DELETE FROM reference_images WHERE person_id = ? AND id NOT IN "
                "(SELECT id FROM reference_images WHERE person_id = ? "
                "ORDER BY created DESC, id DESC LIMIT ?) AND id != "
                "(SELECT id FROM reference_images WHERE person_id = ? "
                "ORDER BY created, id LIMIT 1)",
                (person_id, person_id, max(1, max_references_per_person - 1), person_id),
            ).rowcount
            kept = conn.execute(
                "SELECT count(*) FROM reference_images WHERE person_id = ?", (person_id,)
            ).fetchone()[0]
            if audit is not None:
                self._insert_audit(conn, audit, now)
        return Enrollment(person_id, ref_id, kept, dropped)

    def references_for(self, serial: str, limit: int = MAX_REFERENCES) -> list[Reference]:
        """At most `limit` decrypted photos, chosen fairly: every person's newest photo first,
        then every person's second newest, and so on (newer first within a round). A photo
        that fails its integrity check is an error, never skipped or swapped."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT r.id, p.id, p.name, r.created FROM reference_images r "
                "JOIN people p ON p.id = r.person_id WHERE p.serial = ? "
                "ORDER BY p.id, r.created DESC, r.id DESC",
                (serial,),
            ).fetchall()
            rank: dict[int, int] = {}
            ranked = []
            for ref_id, person_id, name, created in rows:
                rank[person_id] = rank.get(person_id, -1) + 1
                ranked.append((rank[person_id], -created, -ref_id, ref_id, person_id, name))
            chosen = sorted(ranked)[:limit]
            if not chosen:
                return []
            ids = [c[3] for c in chosen]
            sealed = dict(
                (ref_id, (nonce, ciphertext))
                for ref_id, nonce, ciphertext in conn.execute(
                    "SELECT id, nonce, ciphertext FROM reference_images WHERE id IN "  # noqa: S608
                    f"({','.join('?' * len(ids))})",  # placeholders only
                    ids,
                )
            )
        references = []
        for *_, ref_id, person_id, name in chosen:
            nonce, ciphertext = sealed[ref_id]
            try:
                image = self._aead.decrypt(nonce, ciphertext, _aad(serial, person_id, ref_id))
            except InvalidTag:
                raise StoreError(
                    "internal_error",
                    f"Stored reference {ref_id} failed its integrity check: "
                    "the store was modified or damaged",
                ) from None
            references.append(Reference(name, image))
        return references

    def anchor_of(self, serial: str, person: str) -> bytes | None:
        """The person's first photo, which is never dropped (add_reference) and which every
        update of their photo from the device must match."""
        mine = [r for r in self.references_for(serial, limit=10**6) if r.person == person]
        return mine[-1].image if mine else None  # newest first within a person

    @staticmethod
    def _count_people(conn: sqlite3.Connection, serial: str) -> int:
        return int(
            conn.execute("SELECT count(*) FROM people WHERE serial = ?", (serial,)).fetchone()[0]
        )

    def count_people(self, serial: str) -> int:
        with self._read() as conn:
            return self._count_people(conn, serial)

    def people(self, serial: str) -> list[PersonInfo]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT p.name, count(r.id), p.created, coalesce(max(r.created), p.created) "
                "FROM people p LEFT JOIN reference_images r ON r.person_id = p.id "
                "WHERE p.serial = ? GROUP BY p.id ORDER BY p.name",
                (serial,),
            ).fetchall()
        return [PersonInfo(*row) for row in rows]

    def remove_person(self, serial: str, person: str, *, audit: AuditEntry | None = None) -> bool:
        """Delete the person and their photos; their unlocked session, if any, ends too.
        `audit` is written only if there was such a person."""
        with self._write() as conn:
            removed = conn.execute(
                "DELETE FROM people WHERE serial = ? AND name = ?", (serial, person)
            ).rowcount
            conn.execute("DELETE FROM sessions WHERE serial = ? AND person = ?", (serial, person))
            if audit is not None and removed:
                self._insert_audit(conn, audit, time.time())
        self.empty_wal(f"removing a person of {serial}")
        return removed > 0

    def references(self, serial: str, person: str) -> list[ReferenceInfo]:
        """The person's kept photos, newest first (none: no such person)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT r.id, r.created FROM reference_images r "
                "JOIN people p ON p.id = r.person_id WHERE p.serial = ? AND p.name = ? "
                "ORDER BY r.created DESC, r.id DESC",
                (serial, person),
            ).fetchall()
        return [ReferenceInfo(int(ref_id), float(created)) for ref_id, created in rows]

    def reference_image(self, serial: str, reference_id: int) -> tuple[str, bytes] | None:
        """(person, decrypted image) of one photo of the device; None if it has no such photo.
        A photo that fails its integrity check is an error, as in references_for."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT p.id, p.name, r.nonce, r.ciphertext FROM reference_images r "
                "JOIN people p ON p.id = r.person_id WHERE p.serial = ? AND r.id = ?",
                (serial, reference_id),
            ).fetchone()
        if row is None:
            return None
        person_id, name, nonce, ciphertext = row
        try:
            image = self._aead.decrypt(nonce, ciphertext, _aad(serial, person_id, reference_id))
        except InvalidTag:
            raise StoreError(
                "internal_error",
                f"Stored reference {reference_id} failed its integrity check: "
                "the store was modified or damaged",
            ) from None
        return str(name), image

    def remove_reference(
        self, serial: str, reference_id: int, *, audit: AuditEntry | None = None
    ) -> bool:
        """Delete one photo; the person goes with their last one (their unlocked session too,
        as in remove_person), else their next oldest photo becomes their anchor. `audit` is
        written only if the device had such a photo."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT p.id, p.name FROM reference_images r JOIN people p "
                "ON p.id = r.person_id WHERE p.serial = ? AND r.id = ?",
                (serial, reference_id),
            ).fetchone()
            if row is None:
                return False
            person_id, person = row
            conn.execute("DELETE FROM reference_images WHERE id = ?", (reference_id,))
            left = conn.execute(
                "SELECT count(*) FROM reference_images WHERE person_id = ?", (person_id,)
            ).fetchone()[0]
            if not left:
                conn.execute("DELETE FROM people WHERE id = ?", (person_id,))
                conn.execute(
                    "DELETE FROM sessions WHERE serial = ? AND person = ?", (serial, person)
                )
            if audit is not None:
                self._insert_audit(conn, audit, time.time())
        self.empty_wal(f"removing a photo of {serial}")
        return True

    def remove_device(self, serial: str, *, audit: AuditEntry | None = None) -> int:
        """Forget everything about a device but its audit history; returns people removed."""
        with self._write() as conn:
            removed = conn.execute("DELETE FROM people WHERE serial = ?", (serial,)).rowcount
            conn.execute("DELETE FROM lockout WHERE serial = ?", (serial,))
            conn.execute("DELETE FROM sessions WHERE serial = ?", (serial,))
            conn.execute("DELETE FROM device_keys WHERE serial = ?", (serial,))
            conn.execute("DELETE FROM attempts WHERE serial = ?", (serial,))
            conn.execute("DELETE FROM device_reports WHERE serial = ?", (serial,))
            if audit is not None:
                self._insert_audit(conn, audit, time.time())
        self.empty_wal(f"removing device {serial}")
        return int(removed)

    def empty_wal(self, after: str) -> bool:
        """Copy the WAL into the database and truncate it to 0 bytes. secure_delete zeroes what
        a removal deletes, but the -wal file still holds the older frames (photos, names) until
        a checkpoint. A reader on an older snapshot keeps it from completing: a few short tries,
        then a warning (the removal has committed; SQLite's own checkpoints finish the job)."""
        conn = self._conn()
        outcome = "busy"
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(CHECKPOINT_WAIT_S * 1000)}")
            for attempt in range(CHECKPOINT_TRIES):
                if attempt:
                    time.sleep(CHECKPOINT_WAIT_S)
                if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0:
                    return True
        except sqlite3.Error as exc:
            outcome = f"failed ({exc})"
        finally:
            with suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        log(
            "WARNING",
            f"after {after}: could not empty the store's write-ahead log ({outcome}); the removed "
            f"data stays in {self.path}-wal until SQLite's next checkpoint",
        )
        return False

    # --- audit ----------------------------------------------------------------------------

    def _insert_audit(self, conn: sqlite3.Connection, entry: AuditEntry, now: float) -> None:
        stages = None if entry.stages_ms is None else json.dumps(dict(entry.stages_ms))
        audit_id = conn.execute(
            "INSERT INTO audit (time, request_id, serial, action, outcome, code, person, score, "
            "stages_ms, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.time if entry.time is not None else now,
                entry.request_id,
                entry.serial,
                entry.action,
                entry.outcome,
                entry.code,
                entry.person,
                entry.score,
                stages,
                entry.actor,
            ),
        ).lastrowid
        if audit_id is not None and audit_id % AUDIT_PRUNE_EVERY == 0:
            conn.execute("DELETE FROM audit WHERE id <= ?", (audit_id - self._max_audit_rows,))

    def record_audit(self, **fields: Any) -> None:
        """Keyword arguments are AuditEntry's fields (action is required)."""
        self.add_audit(AuditEntry(**fields))

    def add_audit(self, entry: AuditEntry) -> None:
        with self._write() as conn:
            self._insert_audit(conn, entry, time.time())

    def audit(self, limit: int = 100, serial: str | None = None) -> list[AuditEntry]:
        """Newest first."""
        return self.audit_page(serial=serial, limit=limit)

    def audit_page(
        self,
        *,
        serial: str | None = None,
        person: str | None = None,
        outcome: str | None = None,
        code: str | None = None,
        action: str | None = None,
        since: float | None = None,
        until: float | None = None,
        device_only: bool = False,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[AuditEntry]:
        """Newest first, each filter exact; since/until bound the time (until excluded);
        before_id pages on (the id of the last entry of the page before); device_only keeps
        the entries a device's own requests wrote (no administrator named)."""
        equal = {
            "serial": serial,
            "person": person,
            "outcome": outcome,
            "code": code,
            "action": action,
        }
        where = [f"{column} = ?" for column, value in equal.items() if value is not None]
        params: list[Any] = [value for value in equal.values() if value is not None]
        for condition, value in (("time >= ?", since), ("time < ?", until), ("id < ?", before_id)):
            if value is not None:
                where.append(condition)
                params.append(value)
        if device_only:
            where.append("actor IS NULL")
        query = (
            "SELECT id, time, request_id, serial, action, outcome, code, person, score, stages_ms, "
            "actor FROM audit"
        )
        if where:
            query += " WHERE " + " AND ".join(where)  # fixed column names, values as parameters
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [
            AuditEntry(
                id=row[0],
                time=row[1],
                request_id=row[2],
                serial=row[3],
                action=row[4],
                outcome=row[5],
                code=row[6],
                person=row[7],
                score=row[8],
                stages_ms=None if row[9] is None else json.loads(row[9]),
                actor=row[10],
            )
            for row in rows
        ]

    # --- lockout and unlocked sessions ----------------------------------------------------

    def lockout_state(self, serial: str) -> LockoutState:
        with self._read() as conn:
            return self._lockout(conn, serial)

    def clear_lockout(self, serial: str, *, audit: AuditEntry | None = None) -> LockoutState:
        """End a lockout and forget the failures towards the next one (`admin unlock-lockout`);
        returns the state it ended. An attempt in flight still settles against the state it
        began with."""
        with self._write() as conn:
            before = self._lockout(conn, serial)
            conn.execute("DELETE FROM lockout WHERE serial = ?", (serial,))
            if audit is not None:
                self._insert_audit(conn, audit, time.time())
        return before

    @staticmethod
    def _lockout(conn: sqlite3.Connection, serial: str) -> LockoutState:
        row = conn.execute(
            "SELECT failures, locked_until FROM lockout WHERE serial = ?", (serial,)
        ).fetchone()
        return LockoutState() if row is None else LockoutState(row[0], row[1])

    @staticmethod
    def _set_lockout(conn: sqlite3.Connection, serial: str, state: LockoutState) -> None:
        if state == LockoutState():
            conn.execute("DELETE FROM lockout WHERE serial = ?", (serial,))
        else:
            conn.execute(
                "INSERT OR REPLACE INTO lockout (serial, failures, locked_until) VALUES (?, ?, ?)",
                (serial, state.failures, state.locked_until),
            )

    def begin_attempt(
        self,
        serial: str,
        reserve: Callable[[LockoutState], LockoutState],
        *,
        lease_s: float,
        max_wait_s: float,
        now: float | None = None,
    ) -> Gate:
        """Decide in one transaction, before the device is contacted, whether a verify may run:
        not while locked out, not while another attempt holds the device (its lease), and if it
        may, count it as a failure at once (`reserve`), so that a crash or a race can never
        give more comparisons than the lockout allows. finish_attempt settles the count.
        A lockout or a lease further ahead than max_wait_s or lease_s (a clock set back) is
        brought back to them: neither outlasts its longest length."""
        now = time.time() if now is None else now
        with self._write() as conn:
            state = self._lockout(conn, serial)
            if state.locked_until > now + max_wait_s:
                state = LockoutState(state.failures, now + max_wait_s)
                self._set_lockout(conn, serial, state)
            if state.locked_until > now:
                return Gate("locked_out", state)
            lease = conn.execute(
                "SELECT lease_until FROM attempts WHERE serial = ?", (serial,)
            ).fetchone()
            if lease is not None and now < lease[0] <= now + lease_s:
                return Gate("busy", state)
            reserved = reserve(state)
            self._set_lockout(conn, serial, reserved)
            token = os.urandom(12).hex()
            conn.execute(
                "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?)",
                (serial, token, now + lease_s, state.failures, state.locked_until),
            )
        return Gate("go", reserved, token)

    def finish_attempt(
        self,
        serial: str,
        token: str,
        result: Settlement,
        *,
        person: str | None = None,
        now: float | None = None,
    ) -> LockoutState:
        """Settle what begin_attempt reserved for the attempt holding `token`, and end the
        device's unlocked session unless this attempt opened a new one. result: "match" (the
        count is cleared and a session for `person` starts), "failure" (the reserved failure
        stands) or "neutral" (nothing was compared: the count goes back to what it was, but only
        while this attempt still held the device; one that outlived its lease keeps its
        failure, and leaves the newer attempt's hold alone)."""
        now = time.time() if now is None else now
        with self._write() as conn:
            held = conn.execute(
                "SELECT prior_failures, prior_locked_until FROM attempts "
                "WHERE serial = ? AND token = ?",
                (serial, token),
            ).fetchone()
            conn.execute("DELETE FROM attempts WHERE serial = ? AND token = ?", (serial, token))
            if result == "match":
                state = LockoutState()
                conn.execute(
                    "INSERT OR REPLACE INTO sessions (serial, person, unlocked_at, ended_at) "
                    "VALUES (?, ?, ?, NULL)",
                    (serial, person, now),
                )
            else:
                state = self._lockout(conn, serial)
                if result == "neutral" and held is not None:
                    state = LockoutState(held[0], held[1])
                self._end_session(conn, serial, now)
            self._set_lockout(conn, serial, state)
        return state

    @staticmethod
    def _end_session(conn: sqlite3.Connection, serial: str, now: float) -> int:
        return int(
            conn.execute(
                "UPDATE sessions SET ended_at = ? WHERE serial = ? AND ended_at IS NULL",
                (now, serial),
            ).rowcount
        )

    def end_unlocked(self, serial: str, now: float | None = None) -> bool:
        """End the unlocked session; False when none was open."""
        with self._write() as conn:
            return self._end_session(conn, serial, time.time() if now is None else now) > 0

    @staticmethod
    def _session_row(conn: sqlite3.Connection, serial: str) -> Session | None:
        row = conn.execute(
            "SELECT person, unlocked_at FROM sessions WHERE serial = ? AND ended_at IS NULL",
            (serial,),
        ).fetchone()
        return None if row is None else Session(str(row[0]), float(row[1]))

    def _session_open(
        self, conn: sqlite3.Connection, serial: str, session: Session, ttl_s: float, now: float
    ) -> bool:
        return self._session_row(conn, serial) == session and 0 <= now - session.started < ttl_s

    def unlocked_session(
        self, serial: str, ttl_s: float, now: float | None = None
    ) -> Session | None:
        """The device's open unlocked session, while younger than ttl_s."""
        now = time.time() if now is None else now
        with self._read() as conn:
            session = self._session_row(conn, serial)
            if session is None or not self._session_open(conn, serial, session, ttl_s, now):
                return None
        return session

    def is_unlocked(self, serial: str, ttl_s: float, now: float | None = None) -> bool:
        return self.unlocked_session(serial, ttl_s, now) is not None

    # --- console administrators and their sessions ----------------------------------------

    def add_admin(self, name: str, password_hash: str, *, audit: AuditEntry | None = None) -> None:
        """A new console administrator; Refusal admin_exists if the name is taken."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM admins WHERE name = ?", (name,)).fetchone():
                raise Refusal("admin_exists", f"There is already an administrator {name!r}")
            conn.execute(
                "INSERT INTO admins (name, password_hash, created) VALUES (?, ?, ?)",
                (name, password_hash, time.time()),
            )
            if audit is not None:
                self._insert_audit(conn, audit, time.time())

    def admin_hash(self, name: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT password_hash FROM admins WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else str(row[0])

    def set_admin_hash(self, name: str, password_hash: str) -> None:
        """The same password hashed again (with newer parameters)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE admins SET password_hash = ? WHERE name = ?", (password_hash, name)
            )

    def remove_admin(self, name: str, *, audit: AuditEntry | None = None) -> bool:
        """Remove the administrator and end their sessions; `audit` is written only if there was
        such an administrator."""
        with self._write() as conn:
            conn.execute("DELETE FROM console_sessions WHERE admin = ?", (name,))
            removed = conn.execute("DELETE FROM admins WHERE name = ?", (name,)).rowcount
            if audit is not None and removed:
                self._insert_audit(conn, audit, time.time())
        return removed > 0

    def admins(self) -> list[AdminInfo]:
        with self._read() as conn:
            rows = conn.execute("SELECT name, created FROM admins ORDER BY name").fetchall()
        return [AdminInfo(str(name), float(created)) for name, created in rows]

    def create_console_session(
        self, token_sha256: str, admin: str, csrf: str, now: float, *, idle_s: float
    ) -> None:
        """A session of `admin`, known by the SHA-256 of its cookie. Sessions idle for longer
        than `idle_s` are forgotten meanwhile: every login tidies up."""
        with self._write() as conn:
            conn.execute("DELETE FROM console_sessions WHERE last_seen < ?", (now - idle_s,))
            conn.execute(
                "INSERT INTO console_sessions (token_sha256, admin, csrf, created, last_seen) "
                "VALUES (?, ?, ?, ?, ?)",
                (token_sha256, admin, csrf, now, now),
            )

    def console_session(
        self, token_sha256: str, *, created_after: float | None = None
    ) -> tuple[str, str, float] | None:
        """(admin, csrf, last_seen) of the session, None if there is none (or it began at or
        before `created_after`: too old to use, it is forgotten once idle)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT admin, csrf, last_seen FROM console_sessions "
                "WHERE token_sha256 = ? AND created > ?",
                (token_sha256, float("-inf") if created_after is None else created_after),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), float(row[2]))

    def touch_console_session(self, token_sha256: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE console_sessions SET last_seen = ? WHERE token_sha256 = ?",
                (now, token_sha256),
            )

    def end_console_session(self, token_sha256: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM console_sessions WHERE token_sha256 = ?", (token_sha256,))

    def end_admin_sessions(self, admin: str) -> int:
        """End every session of `admin`; returns how many there were."""
        with self._write() as conn:
            return int(
                conn.execute("DELETE FROM console_sessions WHERE admin = ?", (admin,)).rowcount
            )
