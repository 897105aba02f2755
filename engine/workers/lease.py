"""One worker loop per database: a lease that at most one process holds at a time.

The workers stay correct when several run at once: every step re-reads its row
under a lock (``BEGIN IMMEDIATE`` on SQLite) and does nothing when another got
there first, a resend carries the attempt's own provider key, and consumers
dedupe by event id. So the lease is about not doing the work twice (asking the
provider twice about each open attempt, publishing each event twice), never
about money, and a lease lost for a moment costs at most some duplicate work.

    PostgreSQL        ``pg_try_advisory_lock`` on a connection of its own; the
                      lock belongs to that session, so a killed holder frees it
    SQLite file       ``flock`` on ``<database file>.workers.lock``, which the
                      kernel frees when the holder dies
    SQLite in memory  always held: no other process can see that database

``try_acquire`` never blocks: a process that does not get the lease stands by
and asks again on its next loop, so another takes over when the holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa

from engine.adapters.database import Database, is_in_memory

log = logging.getLogger("paychaos.worker.lease")
# A fixed 64-bit key in PostgreSQL's advisory lock space (per database).
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"paychaos.workers").digest()[:8], "big", signed=True)
LOCK_SUFFIX = ".workers.lock"


class Lease(Protocol):
    def try_acquire(self) -> bool:
        """True when this process holds the lease after the call (kept or newly taken)."""
        ...

    def release(self) -> None: ...


class AlwaysHeld:
    """The lease of a database only this process can see."""

    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


class FileLease:
    """An exclusive ``flock`` on a file beside the SQLite database."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class PostgresLease:
    """A session-level advisory lock, on a connection kept for as long as it is held."""

    def __init__(self, url: sa.URL, key: int = ADVISORY_KEY):
        self.key = key
        self._engine = sa.create_engine(url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
        self._connection: sa.Connection | None = None

    def try_acquire(self) -> bool:
        if self._connection is not None:
            try:  # the lock lives as long as this session: make sure it still does
                self._connection.exec_driver_sql("SELECT 1")
                return True
            except sa.exc.DBAPIError:
                log.warning("the worker lease's connection broke: taking it again")
                self._close()
        try:
            connection = self._engine.connect()
        except sa.exc.DBAPIError:
            return False  # the database is away: stand by, as a loop would skip
        try:
            query = sa.text("SELECT pg_try_advisory_lock(:key)")
            taken = bool(connection.execute(query, {"key": self.key}).scalar_one())
        except sa.exc.DBAPIError:
            taken = False
        if not taken:
            connection.close()
            return False
        self._connection = connection
        return True

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except sa.exc.DBAPIError:
                connection.invalidate()

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sa.exc.DBAPIError):  # closing the session frees it too
                self._connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key}
                )
        self._close()
        self._engine.dispose()


def lease_for(database: Database) -> Lease:
    """The lease that fits the database: advisory lock, lock file, or none needed."""
    if is_in_memory(database.url):
        return AlwaysHeld()
    url = database.engine.url
    if database.dialect == "sqlite":
        assert url.database, database.url
        return FileLease(Path(url.database + LOCK_SUFFIX))
    assert database.dialect == "postgresql", database.dialect
    return PostgresLease(url)
