"""The connector's state: device keys and enrolled people's reference photos (AES-GCM encrypted,
each bound to its row), the audit log, lockouts and unlocked sessions, the nonces of protocol v2
already spent, the device web sessions held open (their cookies AES-GCM encrypted, bound to the
serial), so a crash leaves none unknown, and the console's administrators (Argon2id hashes) and
their sessions (only the SHA-256 of each cookie).

Every rule is here, once; where the state lives is a Database (sqlite.py: one file, one
connector; postgres.py: one database, any number of connectors). Each write is one transaction
that commits whole or not at all; one that decides for a device names it (`lock`), so that
connectors sharing a database decide exactly as one would.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from faceid_core.contract import MAX_REFERENCES
from faceid_core.errors import FaceIdError, Refusal, StoreError, config_error, store_unavailable

from ..names import name_key
from .postgres import POOL_SIZE, URL_SCHEMES, PostgresDatabase
from .records import (
    AdminInfo,
    AuditEntry,
    DeviceWebSession,
    Enrollment,
    Gate,
    LockoutState,
    PersonInfo,
    Reference,
    ReferenceInfo,
    Session,
    Settlement,
)
from .schema import OLDEST_UPGRADABLE, SCHEMA_VERSION, Dialect, changes_since, statements
from .sqlite import SqliteDatabase

KEY_CHECK_PLAINTEXT = b"faceid store key check v1"
NONCE_BYTES = 12
AUDIT_PRUNE_EVERY = 1000
#: Spent nonces are forgotten, once past their window, every this many.
NONCE_PRUNE_EVERY = 1000


class Rows(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Transaction(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Rows: ...


class Database(Protocol):
    """Where the store's tables live: transactions, and what a removal must do afterwards."""

    dialect: Dialect
    where: str  # for messages: the file, or host:port/database

    def write(self, lock: str | None = None) -> AbstractContextManager[Any]: ...
    def read(self) -> AbstractContextManager[Any]: ...
    def migrating(self) -> AbstractContextManager[Any]: ...
    def legacy_fixups(self, tx: Any) -> None: ...
    def scrub(self, after: str) -> bool: ...
    def close(self) -> None: ...


def is_database_url(location: str) -> bool:
    return location.startswith(URL_SCHEMES)


def _aad(serial: str, person_id: int, reference_id: int) -> bytes:
    """Binds a ciphertext to its row: moving it to another row or person fails to decrypt."""
    return f"faceid-ref-v1|{serial}|{person_id}|{reference_id}".encode()


def _key_aad(serial: str) -> bytes:
    """Binds a device key to its serial: a key moved to another device's row fails to decrypt."""
    return f"faceid-device-key-v1|{serial}".encode()


def _web_session_aad(serial: str) -> bytes:
    """Binds a device web session's cookies to the device that issued them."""
    return f"faceid-device-session-v1|{serial}".encode()


def _version(number: int) -> bytes:
    """How meta holds the schema version (SQLite stores before 5 hold an integer: int() reads
    both)."""
    return str(number).encode()


def _inserted_id(rows: Rows) -> int:
    """The id an INSERT ... RETURNING id gave the new row."""
    return int(rows.fetchone()[0])


class Store:
    """Thread-safe access to the store; open with Store.open(location, key)."""

    def __init__(self, db: Database, key: bytes, max_audit_rows: int) -> None:
        self._db = db
        self.path = db.where
        self._aead = AESGCM(key)
        self._max_audit_rows = max_audit_rows
        self._spent = 0

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        key: bytes,
        *,
        password: str | None = None,
        pool_size: int = POOL_SIZE,
        max_audit_rows: int = 100_000,
    ) -> Store:
        """The store at `location`: a SQLite file (created if missing, mode 0600) or a
        postgresql:// URL (its password given apart). The schema is created or upgraded, and the
        key checked against the one the store was created with; a mismatch is a config_error,
        before anything is read or written."""
        if len(key) != 32:
            raise config_error("the store key must be 32 bytes")
        location = os.fspath(location)
        db: Database
        if is_database_url(location):
            db = PostgresDatabase.open(location, password, pool_size)
        else:
            db = SqliteDatabase.open(location)
        store = cls(db, key, max_audit_rows)
        try:
            store._initialise()
        except FaceIdError as exc:
            store.close()
            if isinstance(exc, StoreError):  # the database refused the schema
                raise config_error(
                    f"the store {db.where} cannot be opened ({exc.message})"
                ) from None
            raise
        return store

    def _initialise(self) -> None:
        """In one transaction, which anything refused rolls back whole: a store this connector
        cannot read (a wrong key, a newer schema) is left exactly as it was."""
        with self._db.migrating() as tx:
            self._db.legacy_fixups(tx)
            for statement in statements(self._db.dialect):
                tx.execute(statement)
            rows = dict(tx.execute("SELECT name, value FROM meta").fetchall())
            if "key_check" not in rows:
                nonce = os.urandom(NONCE_BYTES)
                check = nonce + self._aead.encrypt(nonce, KEY_CHECK_PLAINTEXT, b"key-check")
                tx.execute("INSERT INTO meta VALUES ('key_check', ?)", (check,))
                tx.execute("INSERT INTO meta VALUES ('schema', ?)", (_version(SCHEMA_VERSION),))
                return
            self._check_key(bytes(rows["key_check"]))
            schema = int(rows.get("schema", 0))
            if schema > SCHEMA_VERSION:
                raise config_error(
                    f"the store {self.path} has schema {schema}, newer than this connector reads "
                    f"(schema {SCHEMA_VERSION}): run the connector version that wrote it, or newer"
                )
            if schema < OLDEST_UPGRADABLE:
                raise config_error(
                    f"the store {self.path} has schema {schema}, this connector reads schema "
                    f"{SCHEMA_VERSION} and upgrades from {OLDEST_UPGRADABLE}"
                )
            for statement in changes_since(schema):
                tx.execute(statement)
            if schema < SCHEMA_VERSION:
                tx.execute(
                    "UPDATE meta SET value = ? WHERE name = 'schema'", (_version(SCHEMA_VERSION),)
                )

    def _check_key(self, check: bytes) -> None:
        try:
            plain = self._aead.decrypt(check[:NONCE_BYTES], check[NONCE_BYTES:], b"key-check")
        except InvalidTag:
            plain = b""
        if plain != KEY_CHECK_PLAINTEXT:
            raise config_error("the store key does not match the one the store was created with")

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        """For /healthz: the store answers and still opens with our key."""
        with self._db.read() as tx:
            row = tx.execute("SELECT value FROM meta WHERE name='key_check'").fetchone()
        if row is None:
            raise store_unavailable("the store has lost its key check")
        self._check_key(bytes(row[0]))

    def scrub(self, after: str) -> bool:
        """After a removal: leave none of the removed data in the database's files."""
        return self._db.scrub(after)

    # --- spent nonces (protocol.ReplayCache) -----------------------------------------------

    def spend_nonce(self, serial: str, nonce: str, now: float, window_s: float) -> bool:
        """True the first time (serial, nonce) is seen within window_s, by any connector sharing
        this store; of the same request sent to several at once, exactly one gets True. Each
        nonce is kept for its own window (request nonces minutes, event ids days)."""
        with self._db.write() as tx:
            fresh = tx.execute(
                "INSERT INTO nonces (serial, nonce, kept_until) VALUES (?, ?, ?) "
                "ON CONFLICT (serial, nonce) DO UPDATE SET kept_until = excluded.kept_until "
                "WHERE nonces.kept_until < ?",
                (serial, nonce, now + window_s, now),
            ).rowcount
            self._spent += 1
            if self._spent % NONCE_PRUNE_EVERY == 0:
                tx.execute("DELETE FROM nonces WHERE kept_until < ?", (now,))
        return fresh == 1

    # --- device keys ----------------------------------------------------------------------

    def set_device_key(self, serial: str, key: bytes, *, audit: AuditEntry | None = None) -> None:
        """Store (or replace) the device's protocol key, encrypted; enrollments are kept."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, key, _key_aad(serial))
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO device_keys (serial, nonce, ciphertext, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (serial) DO UPDATE SET nonce = excluded.nonce, "
                "ciphertext = excluded.ciphertext, created = excluded.created",
                (serial, nonce, sealed, time.time()),
            )
            if audit is not None:
                self._insert_audit(conn, audit, time.time())

    def device_key(self, serial: str) -> bytes | None:
        """The device's key; None when it has none. A key that fails its integrity check is an
        error, never None (that would read as "unknown device" and hide the damage)."""
        with self._db.read() as conn:
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
        with self._db.write() as conn:
            return _inserted_id(
                conn.execute(
                    "INSERT INTO device_sessions (serial, nonce, ciphertext, created) "
                    "VALUES (?, ?, ?, ?) RETURNING id",
                    (serial, nonce, sealed, time.time()),
                )
            )

    def forget_device_session(self, entry: int) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM device_sessions WHERE id = ?", (entry,))

    def record_report(self, serial: str, push_id: str | None, now: float) -> None:
        """A device's macro reported in (signed POST /v1/status): `admin provision` waits for
        the push it made to report."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO device_reports (serial, reported_at, push_id) VALUES (?, ?, ?) "
                "ON CONFLICT (serial) DO UPDATE SET reported_at = excluded.reported_at, "
                "push_id = excluded.push_id",
                (serial, now, push_id),
            )

    def last_report(self, serial: str) -> tuple[float, str | None] | None:
        """(when, push id) of the device's last report, None if it never reported."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT reported_at, push_id FROM device_reports WHERE serial = ?", (serial,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def device_sessions(self) -> list[DeviceWebSession]:
        """Every recorded session, oldest first (what a crash left open, at start-up)."""
        with self._db.read() as conn:
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
        with self._db.read() as conn:
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
        with self._db.write(lock=f"device:{serial}") as conn:
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
                person_id = _inserted_id(
                    conn.execute(
                        "INSERT INTO people (serial, name, created) VALUES (?, ?, ?) RETURNING id",
                        (serial, person, now),
                    )
                )
            ref_id = _inserted_id(
                conn.execute(
                    "INSERT INTO reference_images (person_id, nonce, ciphertext, created) "
                    "VALUES (?, ?, ?, ?) RETURNING id",
                    (person_id, b"", b"", now),
                )
            )
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
        with self._db.read() as conn:
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
        return [
            Reference(name, self._open_photo(serial, person_id, ref_id, *sealed[ref_id]))
            for *_, ref_id, person_id, name in chosen
        ]

    def _open_photo(
        self, serial: str, person_id: int, ref_id: int, nonce: bytes, ciphertext: bytes
    ) -> bytes:
        """A photo that fails its integrity check is an error, never skipped or swapped."""
        try:
            return self._aead.decrypt(nonce, ciphertext, _aad(serial, person_id, ref_id))
        except InvalidTag:
            raise StoreError(
                "internal_error",
                f"Stored reference {ref_id} failed its integrity check: "
                "the store was modified or damaged",
            ) from None

    def anchor_of(self, serial: str, person: str) -> bytes | None:
        """The person's first photo, which is never dropped (add_reference) and which every
        update of their photo from the device must match."""
        mine = [r for r in self.references_for(serial, limit=10**6) if r.person == person]
        return mine[-1].image if mine else None  # newest first within a person

    @staticmethod
    def _count_people(conn: Transaction, serial: str) -> int:
        return int(
            conn.execute("SELECT count(*) FROM people WHERE serial = ?", (serial,)).fetchone()[0]
        )

    def count_people(self, serial: str) -> int:
        with self._db.read() as conn:
            return self._count_people(conn, serial)

    def people(self, serial: str) -> list[PersonInfo]:
        with self._db.read() as conn:
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
        with self._db.write(lock=f"device:{serial}") as conn:
            removed = conn.execute(
                "DELETE FROM people WHERE serial = ? AND name = ?", (serial, person)
            ).rowcount
            conn.execute("DELETE FROM sessions WHERE serial = ? AND person = ?", (serial, person))
            if audit is not None and removed:
                self._insert_audit(conn, audit, time.time())
        self.scrub(f"removing a person of {serial}")
        return removed > 0

    def references(self, serial: str, person: str) -> list[ReferenceInfo]:
        """The person's kept photos, newest first (none: no such person)."""
        with self._db.read() as conn:
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
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT p.id, p.name, r.nonce, r.ciphertext FROM reference_images r "
                "JOIN people p ON p.id = r.person_id WHERE p.serial = ? AND r.id = ?",
                (serial, reference_id),
            ).fetchone()
        if row is None:
            return None
        person_id, name, nonce, ciphertext = row
        return str(name), self._open_photo(serial, person_id, reference_id, nonce, ciphertext)

    def remove_reference(
        self, serial: str, reference_id: int, *, audit: AuditEntry | None = None
    ) -> bool:
        """Delete one photo; the person goes with their last one (their unlocked session too,
        as in remove_person), else their next oldest photo becomes their anchor. `audit` is
        written only if the device had such a photo."""
        with self._db.write(lock=f"device:{serial}") as conn:
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
        self.scrub(f"removing a photo of {serial}")
        return True

    def remove_device(self, serial: str, *, audit: AuditEntry | None = None) -> int:
        """Forget everything about a device but its audit history; returns people removed."""
        with self._db.write(lock=f"device:{serial}") as conn:
            removed = conn.execute("DELETE FROM people WHERE serial = ?", (serial,)).rowcount
            conn.execute("DELETE FROM lockout WHERE serial = ?", (serial,))
            conn.execute("DELETE FROM sessions WHERE serial = ?", (serial,))
            conn.execute("DELETE FROM device_keys WHERE serial = ?", (serial,))
            conn.execute("DELETE FROM attempts WHERE serial = ?", (serial,))
            conn.execute("DELETE FROM device_reports WHERE serial = ?", (serial,))
            if audit is not None:
                self._insert_audit(conn, audit, time.time())
        self.scrub(f"removing device {serial}")
        return int(removed)

    # --- audit ----------------------------------------------------------------------------

    def _insert_audit(self, conn: Transaction, entry: AuditEntry, now: float) -> None:
        stages = None if entry.stages_ms is None else json.dumps(dict(entry.stages_ms))
        audit_id = conn.execute(
            "INSERT INTO audit (time, request_id, serial, action, outcome, code, person, score, "
            "stages_ms, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
        ).fetchone()[0]
        if audit_id % AUDIT_PRUNE_EVERY == 0:
            conn.execute("DELETE FROM audit WHERE id <= ?", (audit_id - self._max_audit_rows,))

    def record_audit(self, **fields: Any) -> None:
        """Keyword arguments are AuditEntry's fields (action is required)."""
        self.add_audit(AuditEntry(**fields))

    def add_audit(self, entry: AuditEntry) -> None:
        with self._db.write() as conn:
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
        with self._db.read() as conn:
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
        with self._db.read() as conn:
            return self._lockout(conn, serial)

    def clear_lockout(self, serial: str, *, audit: AuditEntry | None = None) -> LockoutState:
        """End a lockout and forget the failures towards the next one (`admin unlock-lockout`);
        returns the state it ended. An attempt in flight still settles against the state it
        began with."""
        with self._db.write(lock=f"device:{serial}") as conn:
            before = self._lockout(conn, serial)
            conn.execute("DELETE FROM lockout WHERE serial = ?", (serial,))
            if audit is not None:
                self._insert_audit(conn, audit, time.time())
        return before

    @staticmethod
    def _lockout(conn: Transaction, serial: str) -> LockoutState:
        row = conn.execute(
            "SELECT failures, locked_until FROM lockout WHERE serial = ?", (serial,)
        ).fetchone()
        return LockoutState() if row is None else LockoutState(row[0], row[1])

    @staticmethod
    def _set_lockout(conn: Transaction, serial: str, state: LockoutState) -> None:
        if state == LockoutState():
            conn.execute("DELETE FROM lockout WHERE serial = ?", (serial,))
        else:
            conn.execute(
                "INSERT INTO lockout (serial, failures, locked_until) VALUES (?, ?, ?) "
                "ON CONFLICT (serial) DO UPDATE SET failures = excluded.failures, "
                "locked_until = excluded.locked_until",
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
        with self._db.write(lock=f"device:{serial}") as conn:
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
                "INSERT INTO attempts VALUES (?, ?, ?, ?, ?) ON CONFLICT (serial) DO UPDATE SET "
                "token = excluded.token, lease_until = excluded.lease_until, "
                "prior_failures = excluded.prior_failures, "
                "prior_locked_until = excluded.prior_locked_until",
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
        with self._db.write(lock=f"device:{serial}") as conn:
            held = conn.execute(
                "SELECT prior_failures, prior_locked_until FROM attempts "
                "WHERE serial = ? AND token = ?",
                (serial, token),
            ).fetchone()
            conn.execute("DELETE FROM attempts WHERE serial = ? AND token = ?", (serial, token))
            if result == "match":
                state = LockoutState()
                conn.execute(
                    "INSERT INTO sessions (serial, person, unlocked_at, ended_at) "
                    "VALUES (?, ?, ?, NULL) ON CONFLICT (serial) DO UPDATE SET "
                    "person = excluded.person, unlocked_at = excluded.unlocked_at, ended_at = NULL",
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
    def _end_session(conn: Transaction, serial: str, now: float) -> int:
        return int(
            conn.execute(
                "UPDATE sessions SET ended_at = ? WHERE serial = ? AND ended_at IS NULL",
                (now, serial),
            ).rowcount
        )

    def end_unlocked(self, serial: str, now: float | None = None) -> bool:
        """End the unlocked session; False when none was open."""
        with self._db.write(lock=f"device:{serial}") as conn:
            return self._end_session(conn, serial, time.time() if now is None else now) > 0

    @staticmethod
    def _session_row(conn: Transaction, serial: str) -> Session | None:
        row = conn.execute(
            "SELECT person, unlocked_at FROM sessions WHERE serial = ? AND ended_at IS NULL",
            (serial,),
        ).fetchone()
        return None if row is None else Session(str(row[0]), float(row[1]))

    def _session_open(
        self, conn: Transaction, serial: str, session: Session, ttl_s: float, now: float
    ) -> bool:
        return self._session_row(conn, serial) == session and 0 <= now - session.started < ttl_s

    def unlocked_session(
        self, serial: str, ttl_s: float, now: float | None = None
    ) -> Session | None:
        """The device's open unlocked session, while younger than ttl_s."""
        now = time.time() if now is None else now
        with self._db.read() as conn:
            session = self._session_row(conn, serial)
            if session is None or not self._session_open(conn, serial, session, ttl_s, now):
                return None
        return session

    def is_unlocked(self, serial: str, ttl_s: float, now: float | None = None) -> bool:
        return self.unlocked_session(serial, ttl_s, now) is not None

    # --- console administrators and their sessions ----------------------------------------

    def add_admin(self, name: str, password_hash: str, *, audit: AuditEntry | None = None) -> None:
        """A new console administrator; Refusal admin_exists if the name is taken."""
        with self._db.write(lock="admins") as conn:
            if conn.execute("SELECT 1 FROM admins WHERE name = ?", (name,)).fetchone():
                raise Refusal("admin_exists", f"There is already an administrator {name!r}")
            conn.execute(
                "INSERT INTO admins (name, password_hash, created) VALUES (?, ?, ?)",
                (name, password_hash, time.time()),
            )
            if audit is not None:
                self._insert_audit(conn, audit, time.time())

    def admin_hash(self, name: str) -> str | None:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT password_hash FROM admins WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else str(row[0])

    def set_admin_hash(self, name: str, password_hash: str) -> None:
        """The same password hashed again (with newer parameters)."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE admins SET password_hash = ? WHERE name = ?", (password_hash, name)
            )

    def remove_admin(self, name: str, *, audit: AuditEntry | None = None) -> bool:
        """Remove the administrator and end their sessions; `audit` is written only if there was
        such an administrator."""
        with self._db.write() as conn:
            conn.execute("DELETE FROM console_sessions WHERE admin = ?", (name,))
            removed = conn.execute("DELETE FROM admins WHERE name = ?", (name,)).rowcount
            if audit is not None and removed:
                self._insert_audit(conn, audit, time.time())
        return removed > 0

    def admins(self) -> list[AdminInfo]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT name, created FROM admins ORDER BY name").fetchall()
        return [AdminInfo(str(name), float(created)) for name, created in rows]

    def create_console_session(
        self, token_sha256: str, admin: str, csrf: str, now: float, *, idle_s: float
    ) -> None:
        """A session of `admin`, known by the SHA-256 of its cookie. Sessions idle for longer
        than `idle_s` are forgotten meanwhile: every login tidies up."""
        with self._db.write() as conn:
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
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT admin, csrf, last_seen FROM console_sessions "
                "WHERE token_sha256 = ? AND created > ?",
                (token_sha256, float("-inf") if created_after is None else created_after),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), float(row[2]))

    def touch_console_session(self, token_sha256: str, now: float) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE console_sessions SET last_seen = ? WHERE token_sha256 = ?",
                (now, token_sha256),
            )

    def end_console_session(self, token_sha256: str) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM console_sessions WHERE token_sha256 = ?", (token_sha256,))

    def end_admin_sessions(self, admin: str) -> int:
        """End every session of `admin`; returns how many there were."""
        with self._db.write() as conn:
            return int(
                conn.execute("DELETE FROM console_sessions WHERE admin = ?", (admin,)).rowcount
            )
