"""The in-memory database (``sqlite://``): SQLite's memdb VFS, one per ``Database``."""

from __future__ import annotations

import random

import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.domain.ports import FixedClock, SeededIds
from engine.service.engine import PaymentEngine
from tests.integration.helpers import create


def _payments(database: Database) -> int:
    with database.engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(t.payments)).scalar()
    return int(count or 0)


def test_each_in_memory_database_is_its_own_and_never_a_file() -> None:
    first, second = Database("sqlite://", migrate=True), Database("sqlite://", migrate=True)
    try:
        create(PaymentEngine(first, FixedClock(), SeededIds(random.Random(1))), "k-1")
        assert (_payments(first), _payments(second)) == (1, 0)
        assert first.url == second.url == "sqlite://"  # what was asked for, not the VFS name
        with first.engine.connect() as connection:
            vfs = connection.exec_driver_sql("PRAGMA database_list").fetchall()[0][2]
        assert vfs.startswith("/paychaos-memory-")  # a memdb name: nothing on disk
    finally:
        first.dispose()
        second.dispose()
