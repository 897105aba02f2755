"""The simulated engine's database: memdb, past memdb's default 1 GiB cap, one per world."""

from __future__ import annotations

import sqlite3

from engine.adapters.database import Database
from scenarios.memdb import SIZE_LIMIT_BYTES, size_limit, world_database


def _raw(database: Database) -> sqlite3.Connection:
    connection = database.engine.raw_connection().driver_connection
    assert isinstance(connection, sqlite3.Connection)
    return connection


def test_the_world_database_is_memdb_with_its_size_cap_raised():
    database = world_database(migrate=True)
    try:
        assert "vfs=memdb" in database.url
        assert size_limit(_raw(database), -1) == SIZE_LIMIT_BYTES
    finally:
        database.dispose()


def test_two_worlds_never_share_a_database():
    first, second = world_database(), world_database()
    try:
        _raw(first).execute("CREATE TABLE only_here (x)")
        tables = _raw(second).execute("SELECT name FROM sqlite_master").fetchall()
        assert first.url != second.url and ("only_here",) not in tables
    finally:
        first.dispose()
        second.dispose()
