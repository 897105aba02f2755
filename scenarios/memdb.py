"""The simulated engine's database: in-memory SQLite that stays fast as it grows.

SQLite's classic in-memory database (``sqlite://``, ``:memory:``) keeps every
page in the pager's own cache, and every commit truncates that cache to the
database's size by walking its hash table (``pager_end_transaction`` ->
``sqlite3PcacheTruncate`` -> ``pcache1TruncateUnsafe`` in SQLite 3.40): a
commit costs in proportion to the whole database, and a day's run, with
millions of commits over a growing database, is quadratic.

The ``memdb`` VFS keeps the database in one memory buffer instead, read
through an ordinary bounded page cache: a commit costs what it writes. Like
``sqlite://`` it is one process's memory and vanishes with its last
connection; each world gets its own name. Like ``sqlite://`` the engine gets
one shared connection (a static pool) that each thread keeps between units of
work (``Database``'s in-memory mode), and no WAL.
"""

from __future__ import annotations

import itertools
import threading

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from engine.adapters import database as adapters
from engine.adapters.database import Database

_names = itertools.count()


def memdb_url(name: str) -> str:
    # A name starting with "/" is shared by the process's connections to it.
    return f"sqlite:///file:/{name}?vfs=memdb&uri=true"


class MemDatabase(Database):
    """An in-memory engine database on SQLite's ``memdb`` VFS (see the module docstring)."""

    def __init__(self, name: str | None = None, *, migrate: bool = False) -> None:
        url = memdb_url(name or f"paychaos-world-{next(_names)}")
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False}, poolclass=StaticPool
        )
        sa.event.listen(engine, "connect", adapters._sqlite_pragmas)
        sa.event.listen(engine, "begin", adapters._sqlite_begin)
        self.url = url
        self.engine = engine
        self.dialect = engine.dialect.name
        self._kept = threading.local()
        if migrate:
            adapters.upgrade(engine)
