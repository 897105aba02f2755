"""Provider time. The core never reads the wall clock: a driver hands it a ``Clock``.

Times are float seconds since the Unix epoch (Stripe's ``created`` fields are the
integer part). The simulation passes a virtual clock, the HTTP server a wall clock
wrapped in ``OffsetClock`` so that the admin API can move provider time forward
(like Stripe's test clocks) without touching the machine's clock.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

# 2024-01-01T00:00:00Z: a fixed, readable default start for deterministic runs.
DEFAULT_EPOCH_S = 1_704_067_200.0
ADVANCE_S_MAX = 400 * 86_400.0


class Clock(Protocol):
    def now(self) -> float:
        """Current provider time in seconds since the Unix epoch."""
        ...


@runtime_checkable
class AdvanceableClock(Protocol):
    def now(self) -> float: ...

    def advance(self, delta_s: float) -> None: ...


def _check_delta(delta_s: float) -> None:
    if not 0.0 <= delta_s <= ADVANCE_S_MAX:
        raise ValueError(f"delta_s must be within [0, {ADVANCE_S_MAX}], got {delta_s}")


class ManualClock:
    """A clock that only moves when told to: the test and simulation clock."""

    __slots__ = ("_now_s",)

    def __init__(self, start_s: float = DEFAULT_EPOCH_S) -> None:
        self._now_s = start_s

    def now(self) -> float:
        return self._now_s

    def advance(self, delta_s: float) -> None:
        _check_delta(delta_s)
        self._now_s += delta_s

    def set(self, now_s: float) -> None:
        # Time never runs backwards: events and deliveries are ordered by it.
        if now_s < self._now_s:
            raise ValueError(f"clock cannot go back from {self._now_s} to {now_s}")
        self._now_s = now_s


class OffsetClock:
    """Another clock shifted forward by an offset that ``advance`` grows."""

    __slots__ = ("_base", "_offset_s")

    def __init__(self, base: Clock) -> None:
        self._base = base
        self._offset_s = 0.0

    def now(self) -> float:
        return self._base.now() + self._offset_s

    def advance(self, delta_s: float) -> None:
        _check_delta(delta_s)
        self._offset_s += delta_s
