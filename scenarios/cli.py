"""``paychaos run``, ``paychaos sweep`` and ``paychaos hunt``: the harness on the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from engine.adapters.database import postgres_url_problem
from engine.entrypoints.commands import CommandRoot
from scenarios.outputs import (
    coverage_table,
    report_document,
    summary_table,
    write_json,
    write_junit,
    write_trace,
)
from scenarios.runner import FAILED, INCONCLUSIVE, RunResult, run_scenario, worst_status
from scenarios.schema import Scenario, ScenarioError, library_paths, load_scenario, parse_duration_s
from scenarios.world import WorldTooBig

SEEDS_MAX = 100_000
# Exit codes of ``paychaos run``: 0 passed, 1 failed (an invariant violated or an
# expectation not met), 2 bad input, 3 inconclusive (nothing failed, but a declared
# fault never fired: the run proves nothing about it; try other seeds or a sweep).
EXIT_FAILED = 1
EXIT_INCONCLUSIVE = 3


def _load(paths: list[Path], duration: str | None) -> list[Scenario]:
    scenarios = [load_scenario(path) for path in (paths or library_paths())]
    if duration is not None:
        try:
            duration_s = parse_duration_s(duration)
        except ValueError as exc:
            raise ScenarioError(f"--duration: {exc}") from None
        scenarios = [s.model_copy(update={"duration_s": duration_s}) for s in scenarios]
    return scenarios


def run_command(
    console: Console,
    scenarios: list[Path],
    seed: int | None,
    duration: str | None,
    report_json: Path | None,
    report_html: Path | None,
    junit: Path | None,
    trace: Path | None,
    quiet: bool = False,
    jobs: int = 1,
    db_url: str | None = None,
) -> int:
    from scenarios.shards import check_jobs

    try:
        loaded = _load(scenarios, duration)
    except ScenarioError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if db_url is not None and (problem := postgres_url_problem(db_url)) is not None:
        console.print(f"[red]error:[/] --db-url: {problem}")
        return 2
    refusals = [why for s in loaded if (why := check_jobs(s, jobs)) is not None]
    if refusals:
        console.print(f"[red]error:[/] {refusals[0]}")
        return 2
    started = time.perf_counter()
    results: list[RunResult] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[sim]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet,
    ) as progress:
        try:
            for scenario in loaded:
                results.append(_run_one(progress, scenario, seed, jobs, trace is not None, db_url))
        except WorldTooBig as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
    wall_time_s = time.perf_counter() - started
    for result in results:
        console.print(summary_table(result))
        if not quiet:
            console.print(coverage_table(result))
        for problem in result.problems:
            console.print(f"[red]{result.scenario.name}:[/] {problem}")
        for reason in result.inconclusive:
            console.print(f"[yellow]{result.scenario.name} inconclusive:[/] {reason}")
    _write_outputs(results, wall_time_s, report_json, report_html, junit, trace)
    failed = [r for r in results if r.status == FAILED]
    inconclusive = [r for r in results if r.status == INCONCLUSIVE]
    status = worst_status([result.status for result in results])
    verdict = {FAILED: "[red]FAILED[/]", INCONCLUSIVE: "[yellow]INCONCLUSIVE[/]"}.get(
        status, "[green]OK[/]"
    )
    console.print(
        f"{verdict}: {len(results) - len(failed) - len(inconclusive)} of {len(results)} scenario "
        f"runs passed, {len(inconclusive)} inconclusive, {len(failed)} failed "
        f"in {wall_time_s:.1f} s"
    )
    return {FAILED: EXIT_FAILED, INCONCLUSIVE: EXIT_INCONCLUSIVE}.get(status, 0)


def _run_one(
    progress: Progress,
    scenario: Scenario,
    seed: int | None,
    jobs: int,
    trace: bool,
    db_url: str | None = None,
) -> RunResult:
    from scenarios.shards import run_sharded, shard_count

    shards = shard_count(scenario, jobs)
    if shards > 1:  # the shards run in other processes: progress in shards done
        task = progress.add_task(
            f"{scenario.name} ({shards} shards in {min(jobs, shards)} processes)",
            total=shards, sim="",
        )  # fmt: skip

        def shard_done(done: int, count: int, task_id: TaskID = task) -> None:
            progress.update(task_id, completed=done, sim=f"{done} of {count} shards")

        result = run_sharded(
            scenario, seed, jobs, trace=trace, on_shard_done=shard_done, database_url=db_url
        )
        progress.remove_task(task)
        return result
    task = progress.add_task(scenario.name, total=scenario.duration_s, sim="")

    def tick(now_s: float, task_id: TaskID = task) -> None:
        progress.update(task_id, completed=now_s, sim=f"sim {now_s:,.0f} s")

    result = run_scenario(scenario, seed, on_progress=tick, trace=trace, database_url=db_url)
    progress.remove_task(task)
    return result


def _write_outputs(
    results: list[RunResult],
    wall_time_s: float,
    report_json: Path | None,
    report_html: Path | None,
    junit: Path | None,
    trace: Path | None,
) -> None:
    document = report_document(results, wall_time_s)
    if report_json is not None:
        write_json(report_json, document)
    if junit is not None:
        write_junit(junit, results)
    if trace is not None:
        write_trace(trace, results)
    if report_html is not None:
        from scenarios.html_report import render_html

        report_html.write_text(render_html(document), encoding="utf-8")


def parse_seeds(text: str) -> list[int]:
    """``1-500``, ``7``, or ``1,5,9-12``."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"--seeds: {text!r} is not like 1-500 or 1,5,9-12")
        first, last = int(low), int(high or low)
        if last < first or len(seeds) + last - first + 1 > SEEDS_MAX:
            raise ValueError(f"--seeds: {text!r} is empty or has more than {SEEDS_MAX} seeds")
        seeds.extend(range(first, last + 1))
    return seeds


def sweep_command(
    console: Console, scenario: Path, seeds: str, jobs: int, duration: str | None
) -> int:
    from scenarios.sweep import SeedOutcome, sweep

    try:
        loaded = _load([scenario], duration)[0]
        seed_list = parse_seeds(seeds)
    except (ScenarioError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if not 1 <= jobs <= 64:
        console.print("[red]error:[/] --jobs: between 1 and 64")
        return 2
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"sweep {scenario.name}", total=len(seed_list))

        def done(_: SeedOutcome, task_id: TaskID = task) -> None:
            progress.advance(task_id)

        verdict = sweep(loaded, seed_list, jobs, on_seed_done=done)
    extra = f" --duration {duration}" if duration else ""
    for outcome in verdict.failed:
        console.print(f"[red]seed {outcome.seed} failed:[/] {'; '.join(outcome.reasons)}")
        console.print(f"  replay: paychaos run {scenario} --seed {outcome.seed}{extra}")
    for kind, missed in verdict.inconclusive_by_fault().items():
        console.print(
            f"[yellow]inconclusive:[/] declared fault {kind} never fired in {len(missed)} "
            f"seed(s), it fired in others: seeds {', '.join(map(str, missed))}"
        )
    for kind in verdict.never_fired:
        console.print(
            f"[red]declared fault {kind} fired in none of the {len(seed_list)} seeds:[/] "
            "this sweep proves nothing about it"
        )
    console.print(
        f"{len(verdict.passed)} of {len(seed_list)} seeds passed, "
        f"{len(verdict.inconclusive)} inconclusive, {len(verdict.failed)} failed"
    )
    return 0 if verdict.ok else 1


def hunt_command(console: Console, examples: int, out: Path, duration: str, seed: int) -> int:
    try:
        duration_s = parse_duration_s(duration)
    except ValueError as exc:
        console.print(f"[red]error:[/] --duration: {exc}")
        return 2
    if not 30 <= duration_s <= 86_400:
        console.print("[red]error:[/] --duration: between 30s and 1d")
        return 2
    if not 1 <= examples <= 10_000:
        console.print("[red]error:[/] --examples: between 1 and 10000")
        return 2
    try:
        from scenarios.hunt import hunt
    except ImportError:  # hypothesis is a development dependency
        console.print("[red]error:[/] paychaos hunt needs hypothesis: pip install 'paychaos[dev]'")
        return 2
    with Progress(TextColumn("{task.description}"), console=console, transient=True) as progress:
        task = progress.add_task("hunting")

        def tick(runs: int, reasons: list[str]) -> None:
            verdict = "failing" if reasons else "passing"
            progress.update(task, description=f"hunting: {runs} scenarios run, last {verdict}")

        result = hunt(examples, seed, duration_s, out, on_run=tick)
    if not result.found:
        console.print(
            f"[green]nothing found[/] in {examples} generated scenarios "
            f"({result.runs} runs, --seed {seed})"
        )
        return 0
    console.print(f"[red]found a failure[/] ({result.runs} runs, --seed {seed}), shrunk to:")
    for reason in result.reasons:
        console.print(f"  {reason}")
    console.print(f"  written: {result.path}")
    console.print(f"  replay: paychaos run {result.path}")
    return 1


def register(root: CommandRoot) -> None:
    """Add ``run``, ``sweep`` and ``hunt`` to the root: the ``paychaos.commands`` entry point."""
    app, console = root.app, root.console

    @app.command("run")
    def run(
        scenarios: Annotated[
            list[Path] | None, typer.Argument(help="Scenario files; none runs the whole library.")
        ] = None,
        seed: Annotated[int | None, typer.Option(help="Override the scenarios' seeds.")] = None,
        duration: Annotated[
            str | None, typer.Option(help="Override the simulated duration (e.g. 30m).")
        ] = None,
        report_json: Annotated[Path | None, typer.Option(help="Write the JSON report.")] = None,
        report_html: Annotated[Path | None, typer.Option(help="Write the HTML report.")] = None,
        junit: Annotated[Path | None, typer.Option(help="Write JUnit XML for CI.")] = None,
        trace: Annotated[Path | None, typer.Option(help="Write every event (JSON lines).")] = None,
        quiet: Annotated[bool, typer.Option(help="Only the invariant tables.")] = False,
        jobs: Annotated[
            int, typer.Option(help="Shard each scenario by merchant into N worlds (processes).")
        ] = 1,
        db_url: Annotated[
            str | None,
            typer.Option(
                help="Run each world's engine on a PostgreSQL database of its own on this "
                "server (created and dropped) instead of in memory."
            ),
        ] = None,
    ) -> None:
        """Run scenarios in the deterministic simulation and check the invariants.

        Exit codes: 0 all passed; 1 a run failed (an invariant violated or an
        expectation not met); 2 bad input; 3 inconclusive: nothing failed, but a
        declared fault never fired in a run, so it proves nothing about that
        fault (try other seeds, or `paychaos sweep`, which judges coverage over
        all its seeds).
        """
        code = run_command(
            console, scenarios or [], seed, duration, report_json, report_html, junit, trace,
            quiet, jobs, db_url,
        )  # fmt: skip
        raise typer.Exit(code)

    @app.command("sweep")
    def sweep(
        scenario: Annotated[Path, typer.Argument(help="The scenario file.")],
        seeds: Annotated[str, typer.Option(help="Seeds: 1-500 or 1,5,9-12.")] = "1-20",
        jobs: Annotated[int, typer.Option(help="Parallel processes.")] = 2,
        duration: Annotated[str | None, typer.Option(help="Override the duration.")] = None,
    ) -> None:
        """Run one scenario over many seeds in parallel; list the failing seeds."""
        raise typer.Exit(sweep_command(console, scenario, seeds, jobs, duration))

    @app.command("hunt")
    def hunt(
        examples: Annotated[int, typer.Option(help="Generated scenarios to try.")] = 50,
        out: Annotated[Path, typer.Option(help="Where the minimal failing scenario goes.")] = Path(
            "hunt-found"
        ),
        duration: Annotated[
            str, typer.Option(help="Longest simulated duration to generate (e.g. 5m).")
        ] = "5m",
        seed: Annotated[int, typer.Option(help="Seed of the search: one seed, one search.")] = 0,
    ) -> None:
        """Search generated scenarios for a failure; shrink it and write it as a scenario file."""
        raise typer.Exit(hunt_command(console, examples, out, duration, seed))
