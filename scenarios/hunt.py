"""``paychaos hunt``: search generated scenarios for a failure, shrink it, write it down.

Hypothesis draws whole scenarios: the workload (arrival rate, flow mix,
currencies, merchants, refunds), the clients (retries, double clicks,
replays), the provider's faults (latency, timeouts on both sides of the work,
5xx, 429, declines, every webhook fault), the engine's faults (crashes,
database outages), the duration and the seed. Each is run in the simulation.
A run fails when an invariant is violated, when it cannot reach quiescence, or
when it raises. Hypothesis then shrinks the failing scenario (shorter, slower,
fewer faults, fewer flows, seed 0, ...) and the smallest one that still fails
is written as a scenario file: ``paychaos run FILE`` replays it.

The search is deterministic given ``seed`` (hypothesis is seeded, not
derandomized by test name) and keeps no example database, and hypothesis's
own cache goes to a scratch directory: nothing is left on disk but the
scenario file. Every strategy shrinks towards "nothing happens",
so a minimal scenario shows only the faults the failure needs.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, Verbosity, find, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir, storage_directory
from hypothesis.errors import NoSuchExample

from scenarios.runner import run_scenario
from scenarios.schema import parse_scenario

DURATION_STEP_S = 30
DURATION_MAX_S = 24 * 3_600
EXAMPLES_MAX = 10_000
RATES = (0.0, 0.05, 0.15, 0.3)  # fault rates; the first is where shrinking goes
FLOWS = (
    "capture_full", "capture_partial", "automatic", "void", "three_ds", "three_ds_abandon",
    "decline",
)  # fmt: skip
WEBHOOK_FAULTS = (
    "drop_attempt_rate", "permanent_loss_rate", "duplicate_rate", "delay_rate", "reorder_rate",
    "stale_replay_rate", "forged_rate", "old_timestamp_rate",
)  # fmt: skip
API_FAULTS = (
    "timeout_before_rate", "timeout_after_rate", "error_500_rate", "error_503_rate",
    "decline_rate",
)  # fmt: skip
LATENCIES: tuple[dict[str, Any], ...] = (
    {"kind": "none"},
    {"kind": "lognormal", "p50_ms": 200, "p99_ms": 2_000},
    {"kind": "lognormal", "p50_ms": 500, "p99_ms": 8_000},
)
# Coverage bounds are the shipped scenarios' business; a generated one fails
# only on an invariant, on not reaching quiescence, or on a crash of the run.
NEUTRAL_EXPECT = {"payments_min": 0, "faults_fired": []}


def _rates(names: tuple[str, ...], draw: Any) -> dict[str, float]:
    return {name: rate for name in names if (rate := draw(st.sampled_from(RATES))) > 0}


@st.composite
def _workload(draw: Any) -> dict[str, Any]:
    flows = {name: weight for name in FLOWS if (weight := draw(st.integers(0, 3)))}
    currencies = draw(
        st.lists(st.sampled_from(("USD", "JPY", "KWD", "EUR")), min_size=1, max_size=3, unique=True)
    )
    return {
        "arrivals": {"rate_per_s": draw(st.sampled_from((0.5, 0.2, 1.0, 2.0)))},
        "flows": flows or {"capture_full": 1},
        "currencies": {currency: 1 for currency in currencies},
        "merchants": draw(st.integers(1, 10)),
        "refund_rate": draw(st.sampled_from((0.0, 0.3, 0.7, 1.0))),
        "refunds_max": draw(st.integers(1, 4)),
        "think_time_s": draw(st.sampled_from((5.0, 1.0, 0.5))),
    }


@st.composite
def _psp_faults(draw: Any) -> dict[str, Any]:
    faults: dict[str, Any] = {"api_latency": draw(st.sampled_from(LATENCIES))}
    api = _rates(API_FAULTS, draw)
    if api:
        faults["api_rules"] = [{"endpoints": ["*"], **api}]
    if draw(st.booleans()):
        faults["rate_limit"] = {"capacity": draw(st.integers(5, 30)), "refill_per_s": 3}
    webhooks = _rates(WEBHOOK_FAULTS, draw)
    if webhooks.get("stale_replay_rate"):
        webhooks["stale_replay_after_s"] = draw(st.sampled_from((600, 60)))
    if webhooks:
        faults["webhooks"] = webhooks
    return faults


@st.composite
def _engine_faults(draw: Any, duration_s: int) -> dict[str, Any]:
    percent = st.integers(0, 99)
    crashes = draw(st.lists(percent, max_size=3, unique=True))
    outages = draw(st.lists(st.tuples(percent, st.integers(10, 120)), max_size=2))
    return {
        "crashes": [{"at_s": duration_s * p // 100, "restart_after_s": 20} for p in crashes],
        "db_outages": [
            {"start_s": duration_s * p // 100, "end_s": duration_s * p // 100 + length_s}
            for p, length_s in outages
        ],
    }


@st.composite
def scenario_data(draw: Any, duration_max_s: int = 300) -> dict[str, Any]:
    """A whole scenario as the mapping a YAML file holds; it shrinks towards a calm one."""
    steps_max = max(duration_max_s // DURATION_STEP_S, 1)
    duration_s = draw(st.integers(1, steps_max)) * DURATION_STEP_S
    return {
        "name": "hunt",
        "seed": draw(st.integers(0, 2**16)),
        "duration_s": duration_s,
        "provider_timeout_s": draw(st.sampled_from((10, 5, 3))),
        "workload": draw(_workload()),
        "clients": {
            "retries_max": draw(st.integers(0, 6)),
            "new_key_resubmit_rate": draw(st.sampled_from((0.0, 0.1, 0.4))),
            "replay_rate": draw(st.sampled_from((0.0, 0.1, 0.3))),
            "conflicting_replay_rate": draw(st.sampled_from((0.0, 0.1))),
        },
        "psp_faults": draw(_psp_faults()),
        "engine_faults": draw(_engine_faults(duration_s)),
        "expect": NEUTRAL_EXPECT,
    }


def failure_reasons(data: dict[str, Any]) -> list[str]:
    """Run one scenario; what went wrong, or nothing."""
    scenario = parse_scenario(data, "<hunt>")
    try:
        result = run_scenario(scenario)
    except Exception as exc:  # a crash of the run is a finding too
        return [f"the run raised {type(exc).__name__}: {exc}"]
    reasons = [
        f"{inv.id} {inv.name}: {inv.violations[0]['subject']}: {inv.violations[0]['detail']}"
        + (f" (and {len(inv.violations) - 1} more)" if len(inv.violations) > 1 else "")
        for inv in result.violated
    ]
    return reasons + result.problems


@dataclass(slots=True)
class HuntResult:
    seed: int
    runs: int = 0
    scenario: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def found(self) -> bool:
        return self.scenario is not None


def hunt(
    examples: int = 50,
    seed: int = 0,
    duration_max_s: float = 300.0,
    out_dir: Path | None = None,
    on_run: Callable[[int, list[str]], None] | None = None,
) -> HuntResult:
    """Search ``examples`` generated scenarios; shrink and write the first failure found."""
    assert 1 <= examples <= EXAMPLES_MAX, examples
    assert DURATION_STEP_S <= duration_max_s <= DURATION_MAX_S, duration_max_s
    outcome = HuntResult(seed)
    verdicts: dict[str, list[str]] = {}  # shrinking revisits scenarios: run each once

    def fails(data: dict[str, Any]) -> bool:
        key = json.dumps(data, sort_keys=True)
        if key not in verdicts:
            verdicts[key] = failure_reasons(data)
            outcome.runs += 1
            if on_run is not None:
                on_run(outcome.runs, verdicts[key])
        return bool(verdicts[key])

    search = settings(
        max_examples=examples,
        database=None,
        derandomize=False,  # seeded below instead: one --seed, one search
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    strategy = scenario_data(int(duration_max_s))
    # Even without an example database hypothesis caches what it learns from
    # the source in its home directory: keep that in a scratch directory.
    home = storage_directory(intent_to_write=False).home_directory
    with tempfile.TemporaryDirectory(prefix="paychaos-hunt-") as scratch:
        set_hypothesis_home_dir(scratch)
        try:
            minimal = find(strategy, fails, settings=search, random=random.Random(seed))
        except NoSuchExample:
            return outcome
        finally:
            set_hypothesis_home_dir(home)
    outcome.reasons = verdicts[json.dumps(minimal, sort_keys=True)]
    outcome.scenario = {**minimal, "name": f"hunt-{seed}"}
    if out_dir is not None:
        outcome.path = write_scenario(outcome, out_dir)
    return outcome


def write_scenario(outcome: HuntResult, out_dir: Path) -> Path:
    """The minimal failing scenario as a file ``load_scenario`` and ``paychaos run`` accept."""
    assert outcome.scenario is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{outcome.scenario['name']}.yaml"
    description = f"Found and shrunk by `paychaos hunt --seed {outcome.seed}`: " + "; ".join(
        outcome.reasons
    )
    data = {"name": outcome.scenario["name"], "description": description[:3_000]}
    data.update((k, v) for k, v in outcome.scenario.items() if k not in data)
    header = (
        f"# {data['name']}: a minimal failing scenario found by paychaos hunt.\n"
        + "".join(f"# {reason[:200]}\n" for reason in outcome.reasons[:10])
        + f"# replay: paychaos run {path}\n"
    )
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    path.write_text(header + text, encoding="utf-8")
    return path
