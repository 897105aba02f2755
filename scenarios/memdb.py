"""The simulated engine's database: in-memory SQLite that stays fast as it grows.

SQLite's classic in-memory database (``sqlite://``, ``:memory:``) keeps every
page in the pager's own cache, and its commits truncate that cache by walking
its hash table (``pager_end_transaction`` -> ``sqlite3PcacheTruncate`` ->
``pcache1TruncateUnsafe`` in SQLite 3.40): measured in a shard of the day, a
commit cost 16 us at the start and 90-150 us half an hour later, growing with
the database, so a day's run (millions of commits) was quadratic.

The ``memdb`` VFS keeps the database in one memory buffer instead, read
through an ordinary bounded page cache: a commit costs what it writes. Like
``sqlite://`` it is the process's memory and vanishes with its last
connection; each world gets its own name. Like ``sqlite://`` the engine gets
one shared connection (a static pool) that each thread keeps between units of
work (``Database``'s in-memory mode), and no WAL.

A memdb database is capped at 1 GiB by default (``SQLITE_MEMDB_DEFAULT_MAXSIZE``):
the cap is raised on the connection with
``sqlite3_file_control(SQLITE_FCNTL_SIZE_LIMIT)``, which Python's ``sqlite3``
does not expose, so through ``ctypes`` on the very library ``sqlite3`` uses.
It is raised to just under 2 GiB and no further: the buffer grows by
``sqlite3_realloc``, which refuses any size from 2 GiB up, and a database that
asked for more failed its commit with SQLITE_NOMEM (Python's ``MemoryError``).
At the cap a write fails with SQLITE_FULL instead, which the world reports
as a world too big for one database (``scenarios.world``); a sharded run keeps
its worlds well under it (``scenarios.shards``).
Where that cannot be done safely (another SQLite build, another layout of
Python's connection object) the world falls back to ``sqlite://``: the same
results, only slower on long runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import sqlite3
from typing import Any

from engine.adapters.database import IN_MEMORY_URL, Database, upgrade

SQLITE_FCNTL_SIZE_LIMIT = 36
# The largest buffer sqlite3_realloc makes is under 0x7fffff00 bytes; memdb asks
# for twice what it needs, up to this cap.
SIZE_LIMIT_BYTES = 0x7FFF0000
_names = itertools.count()


def memdb_url(name: str) -> str:
    # A name starting with "/" is shared by the process's connections to it.
    return f"sqlite:///file:/{name}?vfs=memdb&uri=true"


def _library() -> Any | None:
    """The SQLite library Python's ``sqlite3`` runs on, or None if it cannot be told."""
    path = ctypes.util.find_library("sqlite3")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        return None
    lib.sqlite3_db_filename.restype = ctypes.c_char_p
    lib.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.sqlite3_file_control.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
    ]  # fmt: skip
    return lib


def size_limit(dbapi_connection: sqlite3.Connection, limit: int) -> int | None:
    """Set the memdb size limit of ``dbapi_connection`` (-1 only reads it); the limit
    in force, or None when the connection's handle cannot be reached safely."""
    lib = _library()
    if lib is None:
        return None
    # CPython's sqlite3 Connection: the object header, then the ``sqlite3 *db``.
    handle = ctypes.c_void_p.from_address(id(dbapi_connection) + object.__basicsize__).value
    name = dbapi_connection.execute("PRAGMA database_list").fetchone()[2]
    if not handle or lib.sqlite3_db_filename(handle, b"main") != name.encode():
        return None
    value = ctypes.c_int64(limit)
    if lib.sqlite3_file_control(handle, b"main", SQLITE_FCNTL_SIZE_LIMIT, ctypes.byref(value)):
        return None
    return value.value


def world_database(name: str | None = None, *, migrate: bool = False) -> Database:
    """A world's engine database: on ``memdb`` with its size cap raised, else ``sqlite://``."""
    database = Database(memdb_url(name or f"paychaos-world-{next(_names)}"))
    raw = database.engine.raw_connection()  # the static pool's one connection
    try:
        connection = raw.driver_connection
        assert isinstance(connection, sqlite3.Connection)
        raised = size_limit(connection, SIZE_LIMIT_BYTES)
    finally:
        raw.close()
    if raised is None or raised < SIZE_LIMIT_BYTES:
        database.dispose()
        return Database(IN_MEMORY_URL, migrate=migrate)
    if migrate:
        upgrade(database.engine)
    return database
