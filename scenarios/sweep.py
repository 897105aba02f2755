"""``paychaos sweep``: one scenario over many seeds, judged as a whole.

A seed fails as a run does: an invariant violated or an expectation not met
(payments, paths reached, quiescence). A seed in which a declared fault never
fired is inconclusive: it proves nothing about that fault, but another seed may.
So coverage is judged over all the seeds: the sweep fails on coverage only when
a declared fault fired in none of them; inconclusive seeds are counted and
listed, and do not fail it. The seeds run in parallel processes and their
outcomes are merged here, so the judgement is the same for any ``--jobs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from scenarios.runner import FAILED, INCONCLUSIVE, PASSED, expected_faults
from scenarios.schema import Scenario
from scenarios.world import WorldTooBig


@dataclass(frozen=True, slots=True)
class SeedOutcome:
    """What the sweep keeps of one seed's run (small: it crosses processes)."""

    seed: int
    status: str
    reasons: tuple[str, ...] = ()  # why it failed
    fired: tuple[str, ...] = ()  # fault kinds that fired at least once
    unfired: tuple[str, ...] = ()  # expected fault kinds that did not


def run_seed(args: tuple[Scenario, int]) -> SeedOutcome:
    from scenarios.shards import run_sharded

    scenario, seed = args
    try:
        # A seed's worlds (one, unless it is too big) run in turn: the seeds are the jobs.
        result = run_sharded(scenario, seed, 1)
    except WorldTooBig as exc:
        return SeedOutcome(seed, FAILED, (str(exc),))
    fired = tuple(kind for kind, count in result.report["faults_fired"].items() if count)
    reasons = [f"{inv.id} {inv.name}" for inv in result.violated] + result.problems
    return SeedOutcome(seed, result.status, tuple(reasons), fired, tuple(result.unfired))


@dataclass(frozen=True, slots=True)
class SweepVerdict:
    outcomes: tuple[SeedOutcome, ...]
    never_fired: tuple[str, ...]  # expected fault kinds that fired in no seed

    def with_status(self, status: str) -> list[SeedOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == status]

    @property
    def passed(self) -> list[SeedOutcome]:
        return self.with_status(PASSED)

    @property
    def inconclusive(self) -> list[SeedOutcome]:
        return self.with_status(INCONCLUSIVE)

    @property
    def failed(self) -> list[SeedOutcome]:
        return self.with_status(FAILED)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.never_fired

    def inconclusive_by_fault(self) -> dict[str, list[int]]:
        """Each expected fault that some seeds missed (and others did not), with those seeds."""
        seeds: dict[str, list[int]] = {}
        for outcome in self.inconclusive:
            for kind in outcome.unfired:
                if kind not in self.never_fired:
                    seeds.setdefault(kind, []).append(outcome.seed)
        return dict(sorted(seeds.items()))


def judge(scenario: Scenario, outcomes: Iterable[SeedOutcome]) -> SweepVerdict:
    ordered = tuple(sorted(outcomes, key=lambda outcome: outcome.seed))
    fired = {kind for outcome in ordered for kind in outcome.fired}
    never = tuple(kind for kind in expected_faults(scenario) if kind not in fired)
    return SweepVerdict(ordered, never)


def sweep(
    scenario: Scenario,
    seeds: list[int],
    jobs: int,
    on_seed_done: Callable[[SeedOutcome], None] | None = None,
) -> SweepVerdict:
    """Run ``scenario`` once per seed in ``jobs`` processes and judge the seeds together."""
    outcomes = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for outcome in pool.map(run_seed, [(scenario, seed) for seed in seeds]):
            outcomes.append(outcome)
            if on_seed_done is not None:
                on_seed_done(outcome)
    return judge(scenario, outcomes)
