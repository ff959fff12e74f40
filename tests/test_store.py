"""The store on both databases: encrypted photos bound to their rows, all-or-nothing enrollments,
fair choice of references, the state lockouts and unlocked sessions keep across restarts; and what
only the SQLite file shows (its bytes, its WAL, its upgrades)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from faceid_core.errors import FaceIdError

from connector.store import AuditEntry, Session, Store
from devkit.procs import REPO
from devkit.samples import astronaut_jpeg, grace_hopper_jpeg

SERIAL = "FOC1234X5YZ"


def unlock(store: Store, person: str, now: float | None = None) -> None:
    """What a match does: an attempt through the gate, settled as a match for `person`."""
    gate = store.begin_attempt(SERIAL, lambda s: s, lease_s=20, max_wait_s=900, now=now)
    assert gate.decision == "go" and gate.token is not None
    store.finish_attempt(SERIAL, gate.token, "match", person=person, now=now)


def photo(n: int) -> bytes:
    """Distinct small JPEG-like payloads (the store does not decode images)."""
    return b"\xff\xd8\xff" + hashlib.sha256(n.to_bytes(4, "big")).digest() * 2


def file_bytes(sqlite_path: str) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(sqlite_path + suffix):
            with open(sqlite_path + suffix, "rb") as f:
                data += f.read()
    return data


def test_reference_photos_round_trip(store):
    alice, bob = grace_hopper_jpeg(), astronaut_jpeg()
    store.add_reference(SERIAL, "Alice Example", alice)
    store.add_reference(SERIAL, "Bob", bob)
    store.add_reference("OTHER", "Carol", photo(1))

    refs = store.references_for(SERIAL)
    assert sorted(refs) == sorted([("Alice Example", alice), ("Bob", bob)])
    assert refs[0].person in ("Alice Example", "Bob")
    assert store.count_people(SERIAL) == 2
    assert [(p.name, p.references) for p in store.people(SERIAL)] == [
        ("Alice Example", 1),
        ("Bob", 1),
    ]
    assert store.references_for("NOBODY") == []


def test_files_hold_no_window_of_any_photo(sqlite_store, sqlite_path):
    images = [grace_hopper_jpeg(), astronaut_jpeg()]
    for n, image in enumerate(images):
        sqlite_store.add_reference(SERIAL, f"person {n}", image)
    sqlite_store.record_audit(action="enroll", serial=SERIAL, person="person 0", outcome="enrolled")

    data = file_bytes(sqlite_path)
    assert len(data) > sum(map(len, images))  # the ciphertexts are in there
    windows = {data[i : i + 32] for i in range(len(data) - 31)}
    for image in images:
        found = [
            i
            for i in range(len(image) - 31)
            if len(set(image[i : i + 32])) > 1 and image[i : i + 32] in windows
        ]
        assert found == []


def test_a_new_store_file_is_private(sqlite_store, sqlite_path):
    assert stat.S_IMODE(os.stat(sqlite_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(sqlite_path)).st_mode) == 0o700


def test_a_wrong_key_is_refused_at_open(store, store_backend):
    store.add_reference(SERIAL, "Alice", photo(1))
    store.close()
    with pytest.raises(FaceIdError) as caught:
        store_backend.open(os.urandom(32))
    assert caught.value.code == "config_error"
    assert caught.value.message == "the store key does not match the one the store was created with"


def test_a_file_that_is_not_a_database_is_refused(tmp_path, key):
    bogus = tmp_path / "faceid.db"
    bogus.write_bytes(b"not a database at all" * 100)
    with pytest.raises(FaceIdError) as caught:
        Store.open(str(bogus), key)
    assert caught.value.code == "config_error" and str(bogus) in caught.value.message


def swap_ciphertexts(sqlite_path: str, a: int, b: int) -> None:
    with sqlite3.connect(sqlite_path) as db:
        rows = {
            rid: (nonce, ct)
            for rid, nonce, ct in db.execute(
                "SELECT id, nonce, ciphertext FROM reference_images WHERE id IN (?, ?)", (a, b)
            )
        }
        for target, source in ((a, b), (b, a)):
            db.execute(
                "UPDATE reference_images SET nonce = ?, ciphertext = ? WHERE id = ?",
                (*rows[source], target),
            )


def test_swapped_ciphertexts_fail_to_decrypt(sqlite_store, sqlite_path):
    a = sqlite_store.add_reference(SERIAL, "Alice", photo(1)).reference_id
    b = sqlite_store.add_reference(SERIAL, "Mallory", photo(2)).reference_id
    swap_ciphertexts(sqlite_path, a, b)
    with pytest.raises(FaceIdError) as caught:
        sqlite_store.references_for(SERIAL)
    assert caught.value.code == "internal_error" and "integrity" in caught.value.message


def test_a_photo_moved_to_another_person_fails_to_decrypt(sqlite_store, sqlite_path):
    sqlite_store.add_reference(SERIAL, "Alice", photo(1))
    mallory = sqlite_store.add_reference(SERIAL, "Mallory", photo(2))
    with sqlite3.connect(sqlite_path) as db:
        db.execute(
            "UPDATE reference_images SET person_id = ? WHERE person_id != ?",
            (mallory.person_id, mallory.person_id),
        )
    with pytest.raises(FaceIdError):
        sqlite_store.references_for(SERIAL)


def test_oldest_photos_but_the_first_are_dropped_beyond_the_per_person_limit(store):
    for n in range(4):
        store.add_reference(SERIAL, "Alice", photo(n), max_references_per_person=3, now=100.0 + n)
    result = store.add_reference(SERIAL, "Alice", photo(4), max_references_per_person=3, now=104.0)
    assert (result.references, result.dropped) == (3, 1)
    assert [img for _, img in store.references_for(SERIAL)] == [photo(4), photo(3), photo(0)]


def test_people_beyond_the_device_limit_are_refused(store):
    for n in range(3):
        store.add_reference(SERIAL, f"P{n}", photo(n), max_people=3)
    store.add_reference(SERIAL, "P0", photo(9), max_people=3)  # an existing person may add more
    with pytest.raises(FaceIdError) as caught:
        store.add_reference(SERIAL, "P3", photo(3), max_people=3)
    assert caught.value.code == "too_many_references"
    assert store.count_people(SERIAL) == 3


def test_only_if_empty_refuses_a_device_with_someone_enrolled(store):
    store.add_reference(SERIAL, "Alice", photo(1), only_if_empty=True)
    with pytest.raises(FaceIdError) as caught:
        store.add_reference(SERIAL, "Mallory", photo(2), only_if_empty=True)
    assert caught.value.code == "locked"
    assert [p.name for p in store.people(SERIAL)] == ["Alice"]


def test_references_are_chosen_round_robin_newest_first(store):
    t = 1000.0
    for person, count in (("A", 5), ("B", 5), ("C", 2)):
        for n in range(count):
            t += 1
            store.add_reference(SERIAL, person, f"{person}{n}".encode(), now=t)
    chosen = [img.decode() for _, img in store.references_for(SERIAL, limit=10)]
    # Round 1: everyone's newest; round 2: second newest; then B and A's third, then fourth.
    assert chosen[:3] == ["C1", "B4", "A4"]
    assert chosen[3:6] == ["C0", "B3", "A3"]
    assert chosen[6:] == ["B2", "A2", "B1", "A1"]


def test_a_failed_enrollment_leaves_nothing(store):
    store.add_reference(SERIAL, "Alice", photo(1))
    bad_audit = AuditEntry(action="enroll", stages_ms={"x": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        store.add_reference(SERIAL, "Bob", photo(2), audit=bad_audit)
    assert [p.name for p in store.people(SERIAL)] == ["Alice"]
    assert len(store.references_for(SERIAL)) == 1
    assert store.audit() == []


KILLED_INSIDE_ENROLLMENT = textwrap.dedent(
    """
    import os, signal, sys
    from connector.store import AuditEntry, Session, Store

    class Dying(Store):
        def _insert_audit(self, conn, entry, now):
            # Person and photo rows are written; the transaction is still open.
            os.kill(os.getpid(), signal.SIGKILL)

    store = Dying.open(sys.argv[1], bytes.fromhex(sys.argv[2]))
    store.add_reference("FOC1", "Bob", b"\\xff\\xd8\\xff" + os.urandom(200_000),
                        audit=AuditEntry(action="enroll"))
    """
)


@pytest.mark.slow
def test_an_enrollment_killed_midway_leaves_nothing(sqlite_store, sqlite_path, key):
    sqlite_store.add_reference("FOC1", "Alice", photo(1))
    result = subprocess.run(
        [sys.executable, "-c", KILLED_INSIDE_ENROLLMENT, sqlite_path, key.hex()],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    sqlite_store.close()
    reopened = Store.open(sqlite_path, key)
    try:
        assert [p.name for p in reopened.people("FOC1")] == ["Alice"]
        assert len(reopened.references_for("FOC1")) == 1
        assert reopened.audit() == []
    finally:
        reopened.close()


def test_concurrent_writers_all_land(store):
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        try:
            for i in range(10):
                store.add_reference(SERIAL, f"P{n}", photo(i), max_references_per_person=10)
                store.record_audit(action="verify", serial=SERIAL, outcome="no_match")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.references for p in store.people(SERIAL)] == [10] * 8
    assert len(store.audit(limit=1000)) == 80


def test_reading_references_is_fast_under_concurrency(store):
    image = grace_hopper_jpeg()  # ~60 KB, a large reference photo
    for n in range(10):
        store.add_reference(SERIAL, f"P{n}", image)
    timings: list[float] = []

    def work() -> None:
        for _ in range(20):
            started = time.perf_counter()
            assert len(store.references_for(SERIAL)) == 10
            timings.append(time.perf_counter() - started)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timings.sort()
    median, p95 = timings[len(timings) // 2], timings[int(len(timings) * 0.95)]
    print(f"references_for: 10 x {len(image)} B, 8 threads: median {median * 1000:.1f} ms, "
          f"p95 {p95 * 1000:.1f} ms")  # fmt: skip
    assert median < 0.05


def test_removing_a_person_removes_their_photos_and_session(store):
    store.add_reference(SERIAL, "Alice", photo(1))
    store.add_reference(SERIAL, "Bob", photo(2))
    unlock(store, "Alice")
    assert store.remove_person(SERIAL, "Alice") is True
    assert store.remove_person(SERIAL, "Alice") is False
    assert store.references_for(SERIAL) == [("Bob", photo(2))]
    assert not store.is_unlocked(SERIAL, 600)


NAME = "Ada Quuxbridge-Lovelace"  # a name nothing else in the files could contain


def sealed_photos(sqlite_path: str, person: str) -> list[bytes]:
    """The ciphertexts of `person`'s photos, as the table holds them."""
    conn = sqlite3.connect(sqlite_path)
    try:
        return [
            row[0]
            for row in conn.execute(
                "SELECT r.ciphertext FROM reference_images r "
                "JOIN people p ON p.id = r.person_id WHERE p.name = ?",
                (person,),
            )
        ]
    finally:
        conn.close()


def found_on_disk(sqlite_path: str, secrets: list[bytes]) -> list[bytes]:
    """Those of `secrets` whose bytes are in the database or its -wal file: the whole of a short
    one, or any 48-byte piece of a long one (a photo spans overflow pages, each headed by a
    pointer, so it never lies there in one piece)."""
    data = b""
    for suffix in ("", "-wal"):
        if os.path.exists(sqlite_path + suffix):
            with open(sqlite_path + suffix, "rb") as f:
                data += f.read()
    pieces = {s: [s[i : i + 48] for i in range(0, max(len(s) - 47, 1), 48)] for s in secrets}
    return [s for s in secrets if any(piece in data for piece in pieces[s])]


def enroll_to_remove(store: Store, sqlite_path: str) -> list[bytes]:
    """NAME with two real photos, and Bob, who stays; returns what must go with NAME."""
    store.add_reference(SERIAL, NAME, grace_hopper_jpeg())
    store.add_reference(SERIAL, NAME, astronaut_jpeg())
    store.add_reference("OTHER", "Bob", photo(1))
    secrets = [*sealed_photos(sqlite_path, NAME), NAME.encode()]
    assert (
        len(secrets) == 3 and found_on_disk(sqlite_path, secrets) == secrets
    )  # the scan sees them
    return secrets


@pytest.mark.parametrize("removal", ["remove_person", "remove_device", "remove_reference"])
def test_a_removal_leaves_no_byte_of_the_person_in_the_database_or_its_wal(
    sqlite_store, sqlite_path, removal
):
    secrets = enroll_to_remove(sqlite_store, sqlite_path)
    if removal == "remove_person":
        assert sqlite_store.remove_person(SERIAL, NAME) is True
    elif removal == "remove_device":
        assert sqlite_store.remove_device(SERIAL) == 1
    else:  # photo by photo: the person goes with the last one
        for reference in sqlite_store.references(SERIAL, NAME):
            assert sqlite_store.remove_reference(SERIAL, reference.id) is True
        assert sqlite_store.people(SERIAL) == []
    assert os.path.getsize(sqlite_path + "-wal") == 0
    assert found_on_disk(sqlite_path, secrets) == []
    assert sqlite_store.references_for("OTHER") == [("Bob", photo(1))]


def test_without_the_checkpoint_the_wal_still_holds_the_removed_person(
    sqlite_store, sqlite_path, monkeypatch
):
    """What the test above guards against: secure_delete zeroes the deleted rows in the newest
    pages, but the -wal file keeps the frames written before, photos and name in them."""
    secrets = enroll_to_remove(sqlite_store, sqlite_path)
    monkeypatch.setattr(Store, "scrub", lambda self, after: True)
    assert sqlite_store.remove_person(SERIAL, NAME) is True
    assert sqlite_store.people(SERIAL) == []
    assert found_on_disk(sqlite_path, secrets) == secrets
    monkeypatch.undo()
    assert sqlite_store.scrub("the test") is True
    assert found_on_disk(sqlite_path, secrets) == []


def test_a_reader_keeping_the_wal_busy_is_reported_and_the_removal_stands(
    sqlite_store, sqlite_path, capsys
):
    secrets = enroll_to_remove(sqlite_store, sqlite_path)
    reader = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM people").fetchone()  # a snapshot from before
        started = time.monotonic()
        assert sqlite_store.remove_person(SERIAL, NAME) is True
        assert time.monotonic() - started < 3  # a few short tries, not the 5 s busy timeout each
    finally:
        reader.close()
    assert "could not empty the store's write-ahead log (busy)" in capsys.readouterr().out
    assert sqlite_store.people(SERIAL) == []
    assert sqlite_store.scrub("the reader left") is True
    assert found_on_disk(sqlite_path, secrets) == []


def test_removing_a_device_forgets_it_but_keeps_its_audit(store):
    store.add_reference(SERIAL, "Alice", photo(1))
    store.add_reference("OTHER", "Carol", photo(2))
    unlock(store, "Alice")
    store.begin_attempt(SERIAL, lambda s: type(s)(3, 0.0), lease_s=20, max_wait_s=900)  # flying
    store.record_audit(action="verify", serial=SERIAL, outcome="match")
    assert store.remove_device(SERIAL) == 1
    assert store.count_people(SERIAL) == 0 and store.count_people("OTHER") == 1
    assert store.lockout_state(SERIAL).failures == 0
    assert store.begin_attempt(SERIAL, lambda s: s, lease_s=20, max_wait_s=900).decision == "go"
    assert not store.is_unlocked(SERIAL, 600)
    assert len(store.audit(serial=SERIAL)) == 1


def test_audit_is_newest_first_and_filtered_by_device(store):
    store.record_audit(action="verify", serial=SERIAL, outcome="no_match", code="not_recognized")
    store.record_audit(
        action="verify",
        serial=SERIAL,
        request_id="a" * 32,
        outcome="match",
        person="Alice",
        score=0.71,
        stages_ms={"snapshot": 410.5, "function": 950.0},
    )
    store.record_audit(action="lock", serial="OTHER", outcome="locked")
    entries = store.audit(limit=10, serial=SERIAL)
    assert [e.outcome for e in entries] == ["match", "no_match"]
    assert entries[0].stages_ms == {"snapshot": 410.5, "function": 950.0}
    assert entries[0].to_json()["person"] == "Alice" and entries[0].time > 0
    assert len(store.audit(limit=2)) == 2


def test_unlocked_session_lasts_its_ttl_until_locked(store):
    unlock(store, "Alice", now=1000.0)
    assert store.unlocked_session(SERIAL, 600, now=1599.0) == Session("Alice", 1000.0)
    assert not store.is_unlocked(SERIAL, 600, now=1600.0)
    assert store.end_unlocked(SERIAL, now=1100.0) is True
    assert not store.is_unlocked(SERIAL, 600, now=1200.0)
    assert store.end_unlocked(SERIAL) is False


def test_state_survives_reopening(store, store_backend, key):
    store.add_reference(SERIAL, "Alice", photo(1))
    unlock(store, "Alice", now=1000.0)
    store.close()
    reopened = store_backend.open(key)
    try:
        assert reopened.references_for(SERIAL) == [("Alice", photo(1))]
        assert reopened.is_unlocked(SERIAL, 600, now=1001.0)
        reopened.check()
    finally:
        reopened.close()


def test_a_closed_store_answers_store_unavailable(store):
    store.close()
    for call in (store.check, lambda: store.references_for(SERIAL)):
        with pytest.raises(FaceIdError) as caught:
            call()
        assert caught.value.code == "store_unavailable"


def test_device_keys_are_kept_encrypted_and_replaced_by_a_rotation(sqlite_store, sqlite_path, key):
    first, second = os.urandom(32), os.urandom(32)
    assert sqlite_store.device_key(SERIAL) is None
    sqlite_store.set_device_key(SERIAL, first)
    assert sqlite_store.device_key(SERIAL) == first
    sqlite_store.set_device_key(
        SERIAL, second, audit=AuditEntry("rotate_key", "done", serial=SERIAL)
    )
    assert sqlite_store.device_key(SERIAL) == second
    assert [e.action for e in sqlite_store.audit(serial=SERIAL)] == ["rotate_key"]
    data = file_bytes(sqlite_path)
    for secret in (first, second):
        assert secret not in data and secret.hex().encode() not in data
    sqlite_store.close()
    reopened = Store.open(sqlite_path, key)
    try:
        assert reopened.device_key(SERIAL) == second
    finally:
        reopened.close()


def test_a_device_key_moved_to_another_serial_fails_its_integrity_check(sqlite_store, sqlite_path):
    sqlite_store.set_device_key(SERIAL, os.urandom(32))
    with sqlite3.connect(sqlite_path) as db:
        db.execute("UPDATE device_keys SET serial = 'OTHER' WHERE serial = ?", (SERIAL,))
    with pytest.raises(FaceIdError) as caught:
        sqlite_store.device_key("OTHER")
    assert caught.value.code == "store_unavailable" and "integrity" in caught.value.message


def test_removing_a_device_forgets_its_key(store):
    store.set_device_key(SERIAL, os.urandom(32))
    store.remove_device(SERIAL)
    assert store.device_key(SERIAL) is None


def test_a_schema_1_store_is_upgraded_in_place(sqlite_store, sqlite_path, key):
    """Schemas 2 to 4 upgrade the same way: SCHEMA's new tables, then each later version's
    changes (schema.MIGRATIONS)."""
    sqlite_store.add_reference(SERIAL, "Alice Example", photo(1))
    sqlite_store.close()
    with sqlite3.connect(sqlite_path) as db:
        for table in ("device_keys", "device_reports", "console_sessions", "admins", "nonces"):
            db.execute(f"DROP TABLE {table}")
        db.execute("ALTER TABLE audit DROP COLUMN actor")
        db.execute("UPDATE meta SET value = 1 WHERE name = 'schema'")
    upgraded = Store.open(sqlite_path, key)
    try:
        assert [p.name for p in upgraded.people(SERIAL)] == ["Alice Example"]
        upgraded.set_device_key(SERIAL, os.urandom(32))
        upgraded.record_audit(action="rotate_key", serial=SERIAL, actor="alice")
        assert upgraded.audit(limit=1)[0].actor == "alice"
        upgraded.record_report(SERIAL, "push-1", now=5.0)
        assert upgraded.last_report(SERIAL) == (5.0, "push-1")
        upgraded.add_admin("alice", "hash")
        upgraded.create_console_session("digest", "alice", "csrf", 5.0, idle_s=900)
        assert upgraded.console_session("digest") == ("alice", "csrf", 5.0)
        assert upgraded.spend_nonce(SERIAL, "n" * 22, now=5.0, window_s=600)
    finally:
        upgraded.close()
    with sqlite3.connect(sqlite_path) as db:
        assert int(db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0]) == 5


def test_a_store_newer_than_the_connector_is_refused_untouched(store, store_backend, key):
    store.add_reference(SERIAL, "Alice Example", photo(1))
    with store._db.write() as tx:
        tx.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (b"6",))
        tx.execute("DROP TABLE nonces")  # as if schema 6 had done without it
    store.close()
    with pytest.raises(FaceIdError) as caught:
        store_backend.open(key)
    assert caught.value.code == "config_error"
    assert "has schema 6, newer than this connector reads (schema 5)" in caught.value.message
    assert "nonces" not in store_backend.tables()  # refused untouched: not made again


def test_pruning_forgets_each_nonce_only_after_its_own_window(store, monkeypatch):
    monkeypatch.setattr("connector.store.core.NONCE_PRUNE_EVERY", 1)  # prune at every spend
    assert store.spend_nonce(SERIAL, "event:0123456789abcdef", now=0.0, window_s=30 * 86400)
    assert store.spend_nonce(SERIAL, "b" * 22, now=5000.0, window_s=600)  # prunes
    assert not store.spend_nonce(SERIAL, "event:0123456789abcdef", now=6000.0, window_s=30 * 86400)


def test_a_nonce_is_spent_once_within_its_window_and_again_after_it(store):
    assert store.spend_nonce(SERIAL, "a" * 22, now=1000.0, window_s=600) is True
    assert store.spend_nonce(SERIAL, "a" * 22, now=1500.0, window_s=600) is False
    assert store.spend_nonce("OTHER", "a" * 22, now=1500.0, window_s=600) is True
    assert store.spend_nonce(SERIAL, "a" * 22, now=1601.0, window_s=600) is True


def test_a_name_that_reads_as_another_persons_is_name_taken(store):
    store.add_reference(SERIAL, "Grace Hopper", photo(1))
    for lookalike in ("grace hopper", "GRACE  HOPPER", "Ｇｒａｃｅ Ｈｏｐｐｅｒ", "Grаce Hоpper"):
        with pytest.raises(FaceIdError) as caught:
            store.add_reference(SERIAL, lookalike, photo(2))
        assert caught.value.code == "name_taken" and "Grace Hopper" in caught.value.message
    store.add_reference(SERIAL, "Grace Hopper", photo(3))  # the same name adds a photo
    store.add_reference("OTHER", "grace hopper", photo(4))  # another device is another namespace
    assert [p.references for p in store.people(SERIAL)] == [2]


def test_an_update_is_kept_only_while_its_session_is_open(store):
    store.add_reference(SERIAL, "Alice", photo(1))
    unlock(store, "Alice", now=1000.0)
    session = store.unlocked_session(SERIAL, 600, now=1001.0)
    assert session is not None
    store.add_reference(SERIAL, "Alice", photo(2), session=session, session_ttl_s=600, now=1002.0)
    with pytest.raises(FaceIdError) as late:
        store.add_reference(
            SERIAL, "Alice", photo(3), session=session, session_ttl_s=600, now=1600.0
        )
    store.end_unlocked(SERIAL, now=1003.0)
    with pytest.raises(FaceIdError) as ended:
        store.add_reference(
            SERIAL, "Alice", photo(4), session=session, session_ttl_s=600, now=1004.0
        )
    unlock(store, "Alice", now=1005.0)  # a new session is not the old one
    with pytest.raises(FaceIdError) as other:
        store.add_reference(
            SERIAL, "Alice", photo(5), session=session, session_ttl_s=600, now=1006.0
        )
    assert {late.value.code, ended.value.code, other.value.code} == {"session_ended"}
    assert [p.references for p in store.people(SERIAL)] == [2]


def test_a_session_cannot_create_a_person(store):
    store.add_reference(SERIAL, "Alice", photo(1))
    unlock(store, "Alice", now=1000.0)
    session = store.unlocked_session(SERIAL, 600, now=1000.0)
    assert session is not None
    with pytest.raises(FaceIdError) as caught:
        store.add_reference(
            SERIAL, "Mallory", photo(2), session=session, session_ttl_s=600, now=1001.0
        )
    assert caught.value.code == "new_person_needs_admin"
    assert [p.name for p in store.people(SERIAL)] == ["Alice"]


def test_a_persons_first_photo_is_never_dropped_by_later_ones(store):
    store.add_reference(SERIAL, "Alice", photo(0))  # the anchor
    for n in range(1, 9):
        store.add_reference(SERIAL, "Alice", photo(n), max_references_per_person=5)
    kept = [image for _, image in store.references_for(SERIAL)]
    assert kept == [photo(8), photo(7), photo(6), photo(5), photo(0)]
    assert store.anchor_of(SERIAL, "Alice") == photo(0)
    assert store.anchor_of(SERIAL, "Nobody") is None
