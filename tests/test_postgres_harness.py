"""The throwaway PostgreSQL server of the tests and benchmarks (devkit/postgres.py): it starts, its
only door is a password given apart from the URL, its databases are separate, and it leaves no
process behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from connector.secretref import resolve_secret
from devkit import postgres as pg
from devkit.postgres import PostgresServer, PostgresUnavailable, start_postgres
from devkit.proc_group import child_pids


def _query(url: str, password: str | None, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, password=password, connect_timeout=10, autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


@pytest.mark.slow
def test_url_names_no_password_and_the_password_file_opens_it(
    postgres: PostgresServer, pg_store_url: str
) -> None:
    assert urlsplit(pg_store_url).password is None
    assert stat.S_IMODE(postgres.password_file.stat().st_mode) == 0o600
    password = resolve_secret(postgres.password_ref, "store.password")  # as the connector will
    [(user, db)] = _query(pg_store_url, password, "SELECT current_user, current_database()")
    assert (user, db) == ("faceid", urlsplit(pg_store_url).path.lstrip("/"))


@pytest.mark.slow
def test_without_the_password_or_with_a_wrong_one_the_server_refuses(
    postgres: PostgresServer, pg_store_url: str
) -> None:
    for password in (None, "", "wrong-" + postgres.password):
        with pytest.raises(psycopg.OperationalError):
            _query(pg_store_url, password, "SELECT 1")


@pytest.mark.slow
def test_it_listens_on_loopback_only_and_has_no_unix_socket(postgres: PostgresServer) -> None:
    settings = dict(
        _query(
            postgres.url("postgres"),
            postgres.password,
            "SELECT name, setting FROM pg_settings"
            " WHERE name IN ('listen_addresses', 'unix_socket_directories', 'password_encryption')",
        )
    )
    assert settings == {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",
        "password_encryption": "scram-sha-256",
    }


@pytest.mark.slow
def test_two_databases_are_separate(postgres: PostgresServer) -> None:
    first = postgres.create_database("harness_separate_a")
    second = postgres.create_database("harness_separate_b")
    try:
        _query(first, postgres.password, "CREATE TABLE only_here (x int)")
        assert _query(first, postgres.password, "SELECT to_regclass('only_here') IS NOT NULL") == [
            (True,)
        ]
        assert _query(second, postgres.password, "SELECT to_regclass('only_here') IS NULL") == [
            (True,)
        ]
    finally:
        postgres.drop_database("harness_separate_a")
        postgres.drop_database("harness_separate_b")


@pytest.mark.slow
def test_stop_ends_every_process_of_the_server_and_its_folder(tmp_path: Path) -> None:
    server = start_postgres(tmp_path)
    assert os.stat(server.data_dir).st_mode & 0o077 == 0
    if os.geteuid() == 0:  # run as the postgres user, which owns the cluster
        assert os.stat(server.data_dir).st_uid == pg.pwd.getpwnam(pg.OS_USER).pw_uid
    url = server.create_database("harness_stop")
    with psycopg.connect(url, password=server.password, connect_timeout=10):
        postmaster = server.process.pid
        # Its workers and this session's backend, each the leader of a group of its own.
        assert postmaster is not None and len(child_pids(postmaster)) > 1
        server.stop()  # with a session still open: fast shutdown ends it
    assert server.process.returncode is not None
    assert child_pids(postmaster) == []
    assert not (server.data_dir / "postmaster.pid").exists()
    assert "database system is shut down" in server.process.stderr()
    server.stop()  # a second stop does nothing


def test_without_postgresql_installed_it_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pg.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pg.shutil, "which", lambda name: None)
    with pytest.raises(PostgresUnavailable, match=r"make system-packages"):
        pg.find_binaries()


def test_as_root_without_the_postgres_user_it_refuses_and_creates_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_such_user(name: str) -> None:
        raise KeyError(name)

    monkeypatch.setattr(pg.os, "geteuid", lambda: 0)
    monkeypatch.setattr(pg.pwd, "getpwnam", no_such_user)
    monkeypatch.setattr(pg, "find_binaries", lambda: tmp_path)
    with pytest.raises(PostgresUnavailable, match=r"'postgres' OS user"):
        start_postgres(tmp_path / "work")
    assert not (tmp_path / "work").exists()
