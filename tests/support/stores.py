"""One place where store tests choose their database: the same tests run on SQLite and on a real
PostgreSQL server (the `postgres` fixture), so both keep the same promises."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from connector.store import Store

#: The parameter every store test runs with; PostgreSQL starts a server process: slow.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


@dataclass(frozen=True)
class StoreBackend:
    """Where a test's store lives; open() opens it (again) there."""

    name: str
    location: str
    password: str | None = None

    def open(self, key: bytes, **options: object) -> Store:
        return Store.open(self.location, key, password=self.password, **options)  # type: ignore[arg-type]

    def tables(self) -> set[str]:
        """The tables there, read around the store (to see what it left untouched)."""
        if self.name == "sqlite":
            with sqlite3.connect(self.location) as db:
                rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                return {name for (name,) in rows}
        with psycopg.connect(self.location, password=self.password) as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
            return {name for (name,) in rows}


def backend_for(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    if request.param == "sqlite":
        return StoreBackend("sqlite", str(tmp_path / "state" / "faceid.db"))
    url = request.getfixturevalue("pg_store_url")
    return StoreBackend("postgresql", url, request.getfixturevalue("postgres").password)
