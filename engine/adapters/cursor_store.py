"""The event catch-up's cursor: how far each provider event feed was read completely.

One row per feed (``event_cursors``): every event the feed created before
``read_to_at`` was listed and taken through the webhook intake. The cursor only
moves forward: a pass that saves an older time than the one kept (a second worker
process, a slow pass overtaken by another) changes nothing.

Every read and write is a unit of work (``Database.transaction``), as the API
keys' are. One process per database runs the workers (``engine.workers.lease``),
so the first save of a feed is not raced.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database

FEED_LENGTH_MAX = 64


class CursorStore:
    def __init__(self, database: Database):
        self.db = database

    def read(self, feed: str) -> datetime | None:
        """Where the feed was read to, or None if it never was."""
        c = t.event_cursors.c
        with self.db.transaction() as unit:  # read only: rolled back on exit
            found: datetime | None = unit.execute(
                sa.select(c.read_to_at).where(c.feed == feed)
            ).scalar()
        return found

    def save(self, feed: str, read_to_at: datetime, at: datetime) -> bool:
        """Move the feed's cursor to ``read_to_at``; False when it was there or beyond."""
        assert 0 < len(feed) <= FEED_LENGTH_MAX and read_to_at.tzinfo is not None
        c = t.event_cursors.c
        with self.db.transaction() as unit:
            moved = unit.execute(
                t.event_cursors.update()
                .where(c.feed == feed, c.read_to_at < read_to_at)
                .values(read_to_at=read_to_at, updated_at=at)
            ).rowcount
            if not moved:
                if unit.execute(sa.select(c.feed).where(c.feed == feed)).first() is not None:
                    return False
                unit.execute(
                    t.event_cursors.insert().values(feed=feed, read_to_at=read_to_at, updated_at=at)
                )
            unit.commit()
        return True
