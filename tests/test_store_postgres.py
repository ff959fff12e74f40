"""What only the PostgreSQL store shows: a removal leaves no ciphertext in the table files, two
connectors starting at once create the schema once, the password never rides in the URL, a
server that is down is a clear refusal, and connections the server dropped are replaced."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path

import psycopg
import pytest
from faceid_core.errors import FaceIdError

from connector.store import SCHEMA_VERSION, Store
from devkit.postgres import PostgresServer
from devkit.samples import astronaut_jpeg, grace_hopper_jpeg

pytestmark = pytest.mark.slow  # a PostgreSQL server process

SERIAL = "FOC1234X5YZ"
NAME = "Grace Hopper"


@pytest.fixture
def store(pg_store_url: str, postgres: PostgresServer, key: bytes):
    s = Store.open(pg_store_url, key, password=postgres.password)
    yield s
    s.close()


def admin(postgres: PostgresServer, url: str) -> psycopg.Connection:
    """The server's superuser on the test's database: what only the test may do (CHECKPOINT)."""
    return psycopg.connect(url, password=postgres.password, autocommit=True)


def table_files(postgres: PostgresServer, url: str) -> bytes:
    """Every byte of the database's files (tables, TOAST, indexes), after a CHECKPOINT wrote
    the changes out of shared memory."""
    with admin(postgres, url) as conn:
        conn.execute("CHECKPOINT")
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        folder = Path(postgres.data_dir) / "base" / str(oid.fetchone()[0])
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def ciphertexts(postgres: PostgresServer, url: str, person: str) -> list[bytes]:
    with admin(postgres, url) as conn:
        rows = conn.execute(
            "SELECT r.ciphertext FROM reference_images r JOIN people p ON p.id = r.person_id "
            "WHERE p.name = %s",
            (person,),
        ).fetchall()
    return [bytes(row[0]) for row in rows]


def pieces(blob: bytes) -> list[bytes]:
    """48-byte pieces: TOAST stores a photo in chunks of about 2 kB, never in one piece (so a
    piece across two chunks is not found even while the photo is there)."""
    return [blob[i : i + 48] for i in range(0, len(blob) - 47, 48)]


def found(sealed: list[bytes], data: bytes) -> float:
    """The share of the ciphertexts' pieces that are in `data`."""
    every = [p for s in sealed for p in pieces(s)]
    return sum(p in data for p in every) / len(every)


@pytest.mark.parametrize("removal", ["remove_person", "remove_device", "remove_reference"])
def test_a_removal_leaves_no_ciphertext_of_the_person_in_the_table_files(
    store, postgres, pg_store_url, removal
):
    store.add_reference(SERIAL, NAME, grace_hopper_jpeg())
    store.add_reference(SERIAL, NAME, astronaut_jpeg())
    store.add_reference("OTHER", "Bob", astronaut_jpeg())
    sealed = ciphertexts(postgres, pg_store_url, NAME)
    data = table_files(postgres, pg_store_url)
    assert len(sealed) == 2 and found(sealed, data) > 0.9  # the scan sees them
    if removal == "remove_person":
        assert store.remove_person(SERIAL, NAME) is True
    elif removal == "remove_device":
        assert store.remove_device(SERIAL) == 1
    else:
        for reference in store.references(SERIAL, NAME):
            assert store.remove_reference(SERIAL, reference.id) is True
    data = table_files(postgres, pg_store_url)
    assert found(sealed, data) == 0
    assert NAME.encode() not in data
    assert [r.person for r in store.references_for("OTHER")] == ["Bob"]


def test_without_the_rewrite_the_table_files_still_hold_the_removed_person(
    store, postgres, pg_store_url, monkeypatch
):
    """What the test above guards against: a DELETE leaves the old row versions in the files."""
    store.add_reference(SERIAL, NAME, grace_hopper_jpeg())
    sealed = ciphertexts(postgres, pg_store_url, NAME)
    monkeypatch.setattr(Store, "scrub", lambda self, after: True)
    assert store.remove_person(SERIAL, NAME) is True
    data = table_files(postgres, pg_store_url)
    assert found(sealed, data) > 0.9


def test_connectors_starting_at_once_on_a_new_database_create_the_schema_once(
    pg_store_url, postgres, key
):
    stores: list[Store] = []
    errors: list[Exception] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait()
        try:
            stores.append(Store.open(pg_store_url, key, password=postgres.password))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(stores) == 4
        stores[0].add_reference(SERIAL, NAME, grace_hopper_jpeg())
        assert all(s.count_people(SERIAL) == 1 for s in stores)  # one store, seen by all
        with admin(postgres, pg_store_url) as conn:
            rows = conn.execute("SELECT name, value FROM meta ORDER BY name").fetchall()
        assert [(n, bytes(v)) for n, v in rows if n == "schema"] == [
            ("schema", str(SCHEMA_VERSION).encode())
        ]
        assert len(rows) == 2  # one key check: nobody created it twice
    finally:
        for s in stores:
            s.close()


def test_a_nonce_one_connector_spent_is_refused_by_the_other(store, pg_store_url, postgres, key):
    other = Store.open(pg_store_url, key, password=postgres.password)
    try:
        assert store.spend_nonce(SERIAL, "n" * 22, now=1000.0, window_s=600) is True
        assert other.spend_nonce(SERIAL, "n" * 22, now=1001.0, window_s=600) is False
    finally:
        other.close()


def test_a_password_in_the_url_is_refused_before_connecting(postgres, pg_store_url, key):
    with_password = pg_store_url.replace("@", f":{postgres.password}@", 1)
    with pytest.raises(FaceIdError) as caught:
        Store.open(with_password, key)
    assert caught.value.code == "config_error"
    assert "must not hold a password" in caught.value.message
    assert postgres.password not in caught.value.message


def test_a_wrong_password_or_a_server_that_is_down_is_a_clear_config_error(pg_store_url, key):
    with pytest.raises(FaceIdError) as caught:
        Store.open(pg_store_url, key, password="not-the-password")
    assert caught.value.code == "config_error"
    assert "cannot be reached" in caught.value.message
    assert "password authentication failed" in caught.value.message
    assert "not-the-password" not in caught.value.message
    with pytest.raises(FaceIdError) as caught:
        Store.open("postgresql://faceid@127.0.0.1:9/faceid", key)
    assert caught.value.code == "config_error"
    assert "the store at 127.0.0.1:9/faceid cannot be reached" in caught.value.message


def test_connections_the_server_ended_are_replaced_and_a_stopped_query_fails_closed(
    store, postgres, pg_store_url
):
    store.add_reference(SERIAL, NAME, grace_hopper_jpeg())
    with admin(postgres, pg_store_url) as conn:
        ended = conn.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'faceid-connector') t"
        ).fetchone()[0]
    assert ended >= 1
    assert [r.person for r in store.references_for(SERIAL)] == [NAME]  # a new connection
    with pytest.raises(FaceIdError) as caught, store._db.read() as tx:
        tx.execute("SET LOCAL statement_timeout = 100")
        tx.execute("SELECT pg_sleep(5)")
    assert caught.value.code == "store_unavailable"
    assert "statement timeout" in caught.value.message


class CleartextAsker:
    """An impostor at the database's address: it asks for the password in clear (what libpq
    would send under the default sslmode=prefer) and keeps whatever it gets."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, conn: socket.socket) -> bytes:
        size = struct.unpack("!I", conn.recv(4))[0]
        return conn.recv(size - 4)

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            if struct.unpack("!I", self._read(conn)[:4])[0] == 80877103:  # SSLRequest
                conn.sendall(b"N")
                self._read(conn)
            conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                self.received = conn.recv(4096)


def test_the_password_is_never_sent_in_clear_even_when_asked_for_it(key):
    impostor = CleartextAsker()
    with pytest.raises(FaceIdError) as caught:
        Store.open(f"postgresql://faceid@127.0.0.1:{impostor.port}/faceid", key, password="pw-42")
    impostor.thread.join(10)
    assert caught.value.code == "config_error"
    assert b"pw-42" not in impostor.received
    impostor.server.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://faceid@db.example:5432/faceid",
        "postgresql://faceid@db.example/faceid?sslmode=require",
        "postgresql://faceid@db.example/faceid?sslmode=prefer",
        "postgresql://faceid@127.0.0.1/faceid?host=db.example",  # the query's host wins
        "postgresql://faceid@127.0.0.1:5432,db.example:5432/faceid",  # a standby elsewhere
        "postgresql://faceid@localhost/faceid?hostaddr=203.0.113.5",
        "postgresql://faceid@127.0.0.1%2Cdb.example/faceid",  # libpq decodes the comma
        "postgresql://faceid@127.db.example/faceid",  # a name, not a loopback address
        "postgresql://faceid@127.0.0.1/faceid?service=faceid",  # wherever the service file says
    ],
)
def test_a_database_off_this_host_needs_its_certificate_checked(key, url):
    with pytest.raises(FaceIdError) as caught:
        Store.open(url, key, password="pw")  # refused before any connection is tried
    assert caught.value.code == "config_error"
    assert "sslmode=verify-full" in caught.value.message


def test_a_transaction_older_than_the_removal_is_waited_for_then_reported(
    store, postgres, pg_store_url, capsys
):
    """VACUUM FULL keeps the rows an older snapshot can still see: the scrub waits for it, and
    when it stays open says so instead of claiming the rows are gone."""
    store.add_reference(SERIAL, NAME, grace_hopper_jpeg())
    sealed = ciphertexts(postgres, pg_store_url, NAME)
    with admin(postgres, pg_store_url) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        # Its snapshot still sees NAME's rows; it reads another table, so it holds no lock on
        # those that are rewritten (which would only make the rewrite time out).
        reader.execute("SELECT count(*) FROM audit").fetchone()
        assert store.remove_person(SERIAL, NAME) is True
        assert (
            "removed row versions are still seen by an older transaction" in capsys.readouterr().out
        )
        reader.execute("COMMIT")
    assert found(sealed, table_files(postgres, pg_store_url)) > 0.9  # not claimed gone: kept
    assert store.scrub("the reader ended") is True
    assert found(sealed, table_files(postgres, pg_store_url)) == 0
