"""Defects planted in the engine to prove that the harness catches them.

``DEFECTS`` gathers every module's table; ``tests/simulation/test_planted_defects.py``
runs each in pytest and ``paychaos bench detect`` prints what was caught.
Each module holds one class of bug (``catalogue.Defect.blind_spot``).
"""

from __future__ import annotations

from loadtests.planted import classic, faults, ledger, recon, states
from loadtests.planted.catalogue import Defect, Patcher, Plant

DEFECTS: list[Defect] = [
    *classic.DEFECTS,
    *ledger.DEFECTS,
    *faults.DEFECTS,
    *states.DEFECTS,
    *recon.DEFECTS,
]

__all__ = ["DEFECTS", "Defect", "Patcher", "Plant"]
