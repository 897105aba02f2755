"""Turns on a SQLite file for the servers: connections wait in line instead of polling.

Every unit of work on SQLite starts with ``BEGIN IMMEDIATE``, so only one connection
at a time can do anything. When a second one asks, SQLite's busy handler makes it
sleep and retry (1, 2, 5, 10 ... 100 ms), so under load requests wait far longer
than the work in front of them takes, and the cores sit idle. Here a connection
takes its turn when it is checked out of the pool and gives it back when it is
checked in: threads of this process line up on a lock, and processes on one
database (``serve engine --workers N``) on an ``flock`` beside the file, which the
kernel hands over as soon as it is free (and frees if the holder dies).

This changes no guarantee: SQLite's own lock still decides; a process that does not
take turns (the CLI, a test) just meets the busy handler as before. In-memory
databases need none of it (one connection for everyone).
"""

from __future__ import annotations

import fcntl
import os
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from engine.adapters.database import IN_MEMORY_URLS

LOCK_SUFFIX = ".turns.lock"


class Turns:
    """One turn at a time across this process's threads and other processes."""

    def __init__(self, path: str) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # turns held by the thread holding the lock (a nested checkout)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def take(self) -> None:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._depth -= 1
                self._lock.release()
                raise

    def give_back(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()

    def close(self) -> None:
        os.close(self._fd)


def sqlite_file(engine: sa.Engine) -> str | None:
    """The database file of a SQLite engine, None for anything else."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or str(url) in IN_MEMORY_URLS or not url.database:
        return None
    if url.database == ":memory:":
        return None
    return url.database


def install(engine: sa.Engine) -> Turns | None:
    """Make this engine's connections take turns (a SQLite file only); None otherwise."""
    path = sqlite_file(engine)
    if path is None:
        return None
    turns = Turns(path + LOCK_SUFFIX)

    def checkout(_dbapi: Any, _record: Any, _proxy: Any) -> None:
        turns.take()

    def checkin(_dbapi: Any, _record: Any) -> None:
        turns.give_back()

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    return turns
