"""What the core needs from the outside world, as interfaces the caller provides.

The wall clock, randomness and id generation are the caller's: a simulation
passes virtual, seeded ones and gets a byte-identical run for one seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from engine.domain.validation import contains_pan

ID_DRAWS_MAX = 64


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


def card_safe_id(prefix: str, draw: Callable[[], int]) -> str:
    """``prefix_`` and 20 hex digits, redrawn while they would pass for a card number.

    About one hex id in 1,300 holds a Luhn-valid run of 13+ decimal digits; the
    PAN guard would then refuse every command naming that payment.
    """
    for _ in range(ID_DRAWS_MAX):
        candidate = f"{prefix}_{draw():020x}"
        if not contains_pan(candidate):
            return candidate
    raise AssertionError(f"{ID_DRAWS_MAX} ids in a row looked like card numbers")


class SeededIds:
    """Ids from a seeded random source: ``pay_3f9a...``; same seed, same ids."""

    def __init__(self, rng: random.Random):
        self._rng = rng

    def new_id(self, prefix: str) -> str:
        return card_safe_id(prefix, lambda: self._rng.getrandbits(80))
