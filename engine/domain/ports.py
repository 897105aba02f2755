"""What the core needs from the outside world, as interfaces the caller provides.

The wall clock, randomness and id generation are the caller's: a simulation
passes virtual, seeded ones and gets a byte-identical run for one seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from engine.domain.validation import passes_for_pan_anywhere

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
    """``prefix_`` and 20 hex digits, redrawn while some of them could pass for a card
    number to a plain scanner.

    About one hex id in 1,300 holds a Luhn-valid run of 13+ decimal digits. The
    engine's own guard does not take a run inside a hex token for a card number,
    but the ids go out (in a provider's metadata and idempotency keys, in logs),
    and a provider that reads runs bare would refuse every call naming the payment.
    """
    for _ in range(ID_DRAWS_MAX):
        candidate = f"{prefix}_{draw():020x}"
        if not passes_for_pan_anywhere(candidate):
            return candidate
    raise AssertionError(f"{ID_DRAWS_MAX} ids in a row looked like card numbers")


class SeededIds:
    """Ids from a seeded random source: ``pay_3f9a...``; same seed, same ids."""

    def __init__(self, rng: random.Random):
        self._rng = rng

    def new_id(self, prefix: str) -> str:
        return card_safe_id(prefix, lambda: self._rng.getrandbits(80))
