"""``paychaos bench detect``: how many planted defects the harness catches.

Each defect of the catalogue (``loadtests.planted.DEFECTS``) is planted in the
engine (monkeypatched for one run, never a switch in engine code) and its
shipped scenario runs as ``paychaos run`` runs it: its own duration and its
default seed. The defect is caught when the run names every invariant the
catalogue says it must. The same-run baseline is each scenario unplanted, at
the same length and seed: it must pass, or a catch would prove nothing.

``--small`` (CI) runs each scenario for the shorter length the test suite
uses (``Defect.duration_s``). ``--with-tests`` also runs the project's own
unit and integration tests (``tests/unit``, ``tests/integration``, from a
checkout) once per defect, with the defect planted for the whole session, so
that the harness and the tests can be compared defect by defect.

Exit status: 1 when an unplanted run fails (the table then proves nothing),
2 when a defect was missed, else 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from loadtests.planted import DEFECTS, Defect
from scenarios.runner import RunResult, run_scenario
from scenarios.schema import Scenario, library_paths, load_scenario

TESTS = ("tests/unit", "tests/integration")
TESTS_TIMEOUT_S = 1_800


@dataclass(frozen=True, slots=True)
class Detection:
    defect: Defect
    seed: int
    duration_s: float
    named: frozenset[str]  # the invariants the planted run violated
    wall_s: float
    tests_caught: bool | None = None  # None: the tests were not run
    tests_wall_s: float = 0.0

    @property
    def caught(self) -> bool:
        return self.defect.invariants <= self.named


@dataclass(frozen=True, slots=True)
class Control:
    scenario: str
    duration_s: float
    seed: int
    ok: bool
    named: frozenset[str]
    wall_s: float


def scenario_for(defect: Defect, small: bool) -> Scenario:
    library = {path.stem: path for path in library_paths()}
    scenario = load_scenario(library[defect.scenario])
    if small and defect.duration_s is not None:
        scenario = scenario.model_copy(update={"duration_s": defect.duration_s})
    return scenario


def timed_run(scenario: Scenario, defect: Defect | None) -> tuple[RunResult, float]:
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        if defect is not None:
            defect.plant(mp)
        result = run_scenario(scenario, scenario.seed)
    return result, time.perf_counter() - started


def named(result: RunResult) -> frozenset[str]:
    return frozenset(inv.id for inv in result.violated)


def controls(defects: Sequence[Defect], small: bool) -> list[Control]:
    """Each scenario and length the defects use, unplanted: the same-run baseline."""
    seen: dict[tuple[str, float], Control] = {}
    for defect in defects:
        scenario = scenario_for(defect, small)
        key = (scenario.name, scenario.duration_s)
        if key in seen:
            continue
        result, wall_s = timed_run(scenario, None)
        seen[key] = Control(defect.scenario, scenario.duration_s, scenario.seed, result.ok,
                            named(result), wall_s)  # fmt: skip
    return list(seen.values())


def tests_catch(defect: Defect, root: Path) -> tuple[bool, float]:
    """Whether the project's tests fail with ``defect`` planted (``-x``: the first failure)."""
    started = time.perf_counter()
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "loadtests.planted.pytest_plant",
            f"--plant={defect.name}", *TESTS]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(args, cwd=root, env=env, capture_output=True,
                          timeout=TESTS_TIMEOUT_S, check=False)  # fmt: skip
    assert done.returncode in (0, 1), done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    return done.returncode == 1, time.perf_counter() - started


def detect(defect: Defect, small: bool, tests_root: Path | None) -> Detection:
    scenario = scenario_for(defect, small)
    result, wall_s = timed_run(scenario, defect)
    detection = Detection(defect, scenario.seed, scenario.duration_s, named(result), wall_s)
    if tests_root is None:
        return detection
    caught, tests_wall_s = tests_catch(defect, tests_root)
    return Detection(defect, scenario.seed, scenario.duration_s, detection.named, wall_s,
                     caught, tests_wall_s)  # fmt: skip


def run(small: bool, with_tests: bool, console: Console) -> int:
    root = Path.cwd()
    if with_tests and not all((root / path).is_dir() for path in TESTS):
        console.print(f"--with-tests: run from a checkout holding {' and '.join(TESTS)}")
        return 2
    tests_root = root if with_tests else None
    baseline = controls(DEFECTS, small)
    detections = []
    for defect in DEFECTS:
        detections.append(detect(defect, small, tests_root))
        mark = "caught" if detections[-1].caught else "MISSED"
        console.print(f"  {defect.name}: {mark}", highlight=False)
    report(console, detections, baseline, small, with_tests)
    if not all(control.ok for control in baseline):
        console.print("[red]an unplanted run failed: the catches above prove nothing[/]")
        return 1
    return 0 if all(d.caught for d in detections) else 2


def report(
    console: Console,
    detections: Sequence[Detection],
    baseline: Sequence[Control],
    small: bool,
    with_tests: bool,
) -> None:
    length = "the test suite's shorter lengths" if small else "each scenario's own length"
    table = Table(title=f"planted defects, at each scenario's default seed and {length}")
    columns = ["defect", "blind spot", "scenario", "s", "must name", "named", "simulation",
               "wall s"]  # fmt: skip
    if with_tests:
        columns += ["unit + integration tests", "tests wall s"]
    for column in columns:
        table.add_column(column, justify="right" if column.endswith(" s") else "left")
    for d in detections:
        row = [d.defect.name, d.defect.blind_spot, d.defect.scenario, f"{d.duration_s:g}",
               ", ".join(sorted(d.defect.invariants)), ", ".join(sorted(d.named)) or "-",
               "caught" if d.caught else "MISSED", f"{d.wall_s:.1f}"]  # fmt: skip
        if with_tests:
            row += ["caught" if d.tests_caught else "missed", f"{d.tests_wall_s:.0f}"]
        table.add_row(*row)
    console.print(table)
    controls_table = Table(title="baseline: the same scenarios, unplanted, in the same run")
    for column in ("scenario", "s", "seed", "result", "wall s"):
        controls_table.add_column(column, justify="right" if column in ("s", "wall s") else "left")
    for c in baseline:
        result = "passed" if c.ok else f"FAILED ({', '.join(sorted(c.named)) or 'expectations'})"
        controls_table.add_row(c.scenario, f"{c.duration_s:g}", str(c.seed), result,
                               f"{c.wall_s:.1f}")  # fmt: skip
    console.print(controls_table)
    caught = sum(d.caught for d in detections)
    line = f"simulation: {caught} of {len(detections)} caught ({caught / len(detections):.0%})"
    if with_tests:
        by_tests = sum(bool(d.tests_caught) for d in detections)
        line += f"; unit + integration tests: {by_tests} of {len(detections)}"
    console.print(line, highlight=False)
