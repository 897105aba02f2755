"""Proof that the harness catches bugs: known defects planted in the engine.

The defects and where each must be caught are ``loadtests.planted.DEFECTS``
(``paychaos bench detect`` prints the same table at the scenarios' own length).

Each defect is monkeypatched into the engine inside its test (never a switch in
engine code), then a *shipped* scenario runs, shortened, on fixed seeds, and
must name the right invariant. A control runs the same scenarios, durations and
seeds on the unpatched engine: they pass, so the catch is the defect's doing.

Swept over seeds 1-20, each scenario run for the length its test uses;
"first" is the first seed that catches (measured again after the engine
subscribed to the events it acts on only):

| defect                                     | scenario (run s)          | named  | first | caught |
|--------------------------------------------|---------------------------|--------|-------|--------|
| idempotency keys ignored                   | double-click (120)        | I6     | 1     | 20/20  |
| ledger written outside the state change    | happy-path (120)          | I3     | 1     | 19/20  |
| provider timeout treated as a decline      | psp-timeouts (120)        | I2, I7 | 1     | 20/20  |
| capture allowed after void                 | happy-path (120)          | I4     | 1     | 17/20  |
| refund posted twice on a duplicate webhook | webhook-storm (120)       | I7     | 1     | 18/20  |
| webhook dedupe by event id skipped         | webhook-storm (120)       | I6     | 1     | 20/20  |
| ledger written after the state change      | crash-recovery (600)      | I3     | 1     | 20/20  |
| platform fee rounded down, not half up     | marketplace-split (120)   | F      | 1     | 20/20  |
| a refund's seller debit kept off a wallet  | marketplace-split (120)   | I5     | 1     | 20/20  |
| a settlement row silently ignored          | settlement-mismatch (120) | R      | 1     | 20/20  |
| a dispute debited twice                    | dispute-storm (300)       | I9     | 1     | 20/20  |
| a payout beyond the available balance      | payout-failure (1200)     | I5     | 1     | 20/20  |
"""

from __future__ import annotations

import pytest

from loadtests.planted import DEFECTS, Defect
from scenarios.runner import RunResult, run_scenario
from scenarios.schema import library_paths, load_scenario

LIBRARY = {path.stem: path for path in library_paths()}
# The first of SEEDS that catches is enough (seed 1 catches each today); the others keep
# the test meaningful if a harmless change to the harness reshuffles a run.
SEEDS = (1, 2, 3)


def run(defect: Defect, seed: int, planted: bool = True) -> RunResult:
    scenario = load_scenario(LIBRARY[defect.scenario])
    if defect.duration_s is not None:
        scenario = scenario.model_copy(update={"duration_s": defect.duration_s})
    with pytest.MonkeyPatch.context() as mp:
        if planted:
            defect.plant(mp)
        return run_scenario(scenario, seed)


def violated(result: RunResult) -> set[str]:
    return {inv.id for inv in result.violated}


@pytest.mark.parametrize("defect", DEFECTS, ids=[d.name for d in DEFECTS])
def test_a_planted_defect_is_caught_by_a_shipped_scenario_naming_its_invariant(
    defect: Defect,
) -> None:
    seen: dict[int, set[str]] = {}
    for seed in SEEDS:
        seen[seed] = violated(run(defect, seed))
        if defect.invariants <= seen[seed]:
            return
    pytest.fail(f"{defect.name} not caught by {defect.scenario}: violated per seed {seen}")


# One control per scenario and length: the unpatched engine passes the same runs.
CONTROLS = sorted({(d.scenario, d.duration_s or 0.0): d for d in DEFECTS}.items())


@pytest.mark.parametrize(
    "defect", [d for _, d in CONTROLS], ids=[f"{s}-{int(t)}" for (s, t), _ in CONTROLS]
)
def test_the_unpatched_engine_passes_the_same_runs(defect: Defect) -> None:
    result = run(defect, SEEDS[0], planted=False)
    assert result.ok, (defect.scenario, violated(result), result.problems)
