"""What the core needs from the outside world, as interfaces the caller provides.

The wall clock, randomness and id generation are the caller's: a simulation
passes virtual, seeded ones and gets a byte-identical run for one seed.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class IdSource(Protocol):
    def new_id(self, prefix: str) -> str: ...


class FixedClock:
    """A clock that moves only when told to: for tests and simulations."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        assert self._now.tzinfo is not None

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        assert delta >= timedelta(0)
        self._now += delta

    def set(self, moment: datetime) -> None:
        assert moment >= self._now and moment.tzinfo is not None
        self._now = moment


class SeededIds:
    """Ids from a seeded random source: ``pay_3f9a...``; same seed, same ids."""

    def __init__(self, rng: random.Random):
        self._rng = rng

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._rng.getrandbits(80):020x}"
