"""The planted-defect catalogue's shape: a defect, where it must be caught, by what.

A defect is a plant: a function that monkeypatches the engine through a
``Patcher`` (pytest's ``MonkeyPatch``, usable outside pytest through
``MonkeyPatch.context()``) into a small, plausible bug. ``scenario`` is the
shipped scenario that exists to catch it, run as ``paychaos run`` runs it
(its own duration and default seed) unless ``duration_s`` shortens it for the
test suite, and ``invariants`` are the ids of the invariants that must be named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

Patcher = pytest.MonkeyPatch
Plant = Callable[[Patcher], None]


@dataclass(frozen=True, slots=True)
class Defect:
    plant: Plant
    scenario: str
    duration_s: float | None  # None: the scenario's own duration
    invariants: frozenset[str]
    blind_spot: str = "classic"  # which class of bug it stands for

    @property
    def name(self) -> str:
        return self.plant.__name__
