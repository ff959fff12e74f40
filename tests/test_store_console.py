"""The store's part of the console: administrators and their sessions (only the SHA-256 of a
cookie), a person's photos one by one (listed, decrypted, removed, the person with the last one),
and a schema 3 store gaining the console's tables in place."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from faceid_core.errors import FaceIdError

from connector.store import AuditEntry, Store

SERIAL = "FOC1234X5YZ"


def photo(n: int) -> bytes:
    return b"\xff\xd8\xff" + hashlib.sha256(n.to_bytes(4, "big")).digest()


def test_an_administrator_is_added_once_listed_and_removed_with_their_sessions(store):
    store.add_admin("alice", "hash-a", audit=AuditEntry("add_admin", "done", actor="root"))
    store.add_admin("bob", "hash-b")
    with pytest.raises(FaceIdError) as caught:
        store.add_admin("alice", "other")
    assert caught.value.code == "admin_exists"
    assert [a.name for a in store.admins()] == ["alice", "bob"]
    assert store.admin_hash("alice") == "hash-a" and store.admin_hash("carol") is None
    store.set_admin_hash("alice", "hash-a2")
    assert store.admin_hash("alice") == "hash-a2"
    for digest in ("s1", "s2"):
        store.create_console_session(digest, "alice", "csrf", 10.0, idle_s=900)
    store.create_console_session("s3", "bob", "csrf", 10.0, idle_s=900)
    assert store.remove_admin("alice", audit=AuditEntry("remove_admin", "done")) is True
    assert store.console_session("s1") is None and store.console_session("s2") is None
    assert store.console_session("s3") == ("bob", "csrf", 10.0)
    assert store.remove_admin("alice", audit=AuditEntry("remove_admin", "done")) is False
    assert [e.action for e in store.audit()] == ["remove_admin", "add_admin"]  # once each


def test_console_sessions_are_touched_ended_and_forgotten_when_idle_at_a_login(store):
    store.add_admin("alice", "hash")
    store.create_console_session("old", "alice", "c1", 100.0, idle_s=900)
    store.create_console_session("new", "alice", "c2", 500.0, idle_s=900)
    store.touch_console_session("new", 600.0)
    assert store.console_session("new") == ("alice", "c2", 600.0)
    store.create_console_session("newest", "alice", "c3", 1100.0, idle_s=900)
    assert store.console_session("old") is None  # idle for 1000 s: gone at that login
    assert store.console_session("new") is not None
    store.end_console_session("new")
    assert store.console_session("new") is None
    assert store.end_admin_sessions("alice") == 1
    assert store.console_session("newest") is None


def test_a_session_of_an_unknown_administrator_cannot_be_created(store):
    with pytest.raises(FaceIdError) as caught:
        store.create_console_session("digest", "nobody", "csrf", 1.0, idle_s=900)
    assert caught.value.code == "store_unavailable"  # the foreign key refuses it


def test_a_persons_photos_are_listed_newest_first_and_read_one_by_one(store):
    first = store.add_reference(SERIAL, "Grace", photo(1), now=1.0).reference_id
    second = store.add_reference(SERIAL, "Grace", photo(2), now=2.0).reference_id
    other = store.add_reference("OTHER", "Grace", photo(3), now=3.0).reference_id
    assert [(r.id, r.created) for r in store.references(SERIAL, "Grace")] == [
        (second, 2.0),
        (first, 1.0),
    ]
    assert store.references(SERIAL, "Nobody") == []
    assert store.reference_image(SERIAL, first) == ("Grace", photo(1))
    assert store.reference_image(SERIAL, other) is None  # another device's photo
    assert store.reference_image(SERIAL, 999) is None


def test_a_photo_that_fails_its_integrity_check_is_an_error(sqlite_store, sqlite_path):
    ref = sqlite_store.add_reference(SERIAL, "Grace", photo(1)).reference_id
    with sqlite3.connect(sqlite_path) as db:
        db.execute("UPDATE reference_images SET ciphertext = ? WHERE id = ?", (b"\0" * 64, ref))
    with pytest.raises(FaceIdError) as caught:
        sqlite_store.reference_image(SERIAL, ref)
    assert caught.value.code == "internal_error" and "integrity" in caught.value.message


def test_removing_a_photo_keeps_the_person_until_their_last_one_and_their_session_with_it(store):
    first = store.add_reference(SERIAL, "Grace", photo(1), now=1.0).reference_id
    second = store.add_reference(SERIAL, "Grace", photo(2), now=2.0).reference_id
    gate = store.begin_attempt(SERIAL, lambda s: s, lease_s=20, max_wait_s=900, now=10.0)
    assert gate.token is not None
    store.finish_attempt(SERIAL, gate.token, "match", person="Grace", now=10.0)
    audit = AuditEntry("console_remove_photo", "done", serial=SERIAL, actor="alice")
    assert store.remove_reference("OTHER", first, audit=audit) is False  # not that device's
    assert store.remove_reference(SERIAL, first, audit=audit) is True
    assert store.anchor_of(SERIAL, "Grace") == photo(2)  # the next oldest is the anchor now
    assert store.is_unlocked(SERIAL, 600, now=20.0)
    assert store.remove_reference(SERIAL, second, audit=audit) is True
    assert store.people(SERIAL) == [] and not store.is_unlocked(SERIAL, 600, now=20.0)
    assert store.remove_reference(SERIAL, second, audit=audit) is False
    assert [e.actor for e in store.audit()] == ["alice", "alice"]  # only what was removed


def test_a_schema_3_store_gains_the_consoles_tables_in_place(sqlite_store, sqlite_path, key):
    sqlite_store.add_reference(SERIAL, "Grace", photo(1))
    sqlite_store.close()
    with sqlite3.connect(sqlite_path) as db:
        db.execute("DROP TABLE console_sessions")
        db.execute("DROP TABLE admins")
        db.execute("UPDATE meta SET value = 3 WHERE name = 'schema'")
    upgraded = Store.open(sqlite_path, key)
    try:
        upgraded.add_admin("alice", "hash")
        assert [a.name for a in upgraded.admins()] == ["alice"]
        assert [p.name for p in upgraded.people(SERIAL)] == ["Grace"]
    finally:
        upgraded.close()
    with sqlite3.connect(sqlite_path) as db:
        assert int(db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0]) == 5
