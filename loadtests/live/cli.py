"""``paychaos live``: a scenario in wall time against running servers, then the invariants.

Registered on the ``paychaos`` root by ``loadtests.cli``. Exit 0 when every
invariant holds and the scenario's expectations are met, 1 on a violation (or
an unmet expectation, or a run that could not finish its checks), 2 on bad
input (a bad scenario file, an option out of range, a server or key refused).
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console

from loadtests.live.plan import DURATION_S_MAX, TIME_SCALE_MAX, TIME_SCALE_MIN
from scenarios.schema import LIBRARY, Scenario, ScenarioError, load_scenario, parse_duration_s

if TYPE_CHECKING:
    from loadtests.live.runner import LiveOptions
    from scenarios.runner import RunResult

PAYMENTS_MAX = 100_000
CONCURRENCY_MAX = 1_000
QUIESCENCE_S_MAX = 3_600.0
LOOPBACK_NAMES = frozenset({"localhost"})


class BadInput(Exception):
    """An option or argument that cannot run; the message names it."""


def resolve_scenario(name_or_path: str) -> Scenario:
    """A YAML path, or the name of a shipped scenario (``happy-path``)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in {".yaml", ".yml"} or "/" in name_or_path:
        return load_scenario(path)
    shipped = LIBRARY / f"{name_or_path}.yaml"
    if shipped.exists():
        return load_scenario(shipped)
    names = ", ".join(p.stem for p in sorted(LIBRARY.glob("*.yaml")))
    raise ScenarioError(f"SCENARIO: no file {name_or_path!r} and no shipped scenario of that "
                        f"name (shipped: {names})")  # fmt: skip


def check_url(option: str, url: str, allow_remote: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise BadInput(f"{option}: an http:// or https:// URL, not {url!r}")
    if not allow_remote and not _is_loopback(parts.hostname):
        raise BadInput(
            f"{option}: {parts.hostname} is not a loopback address; live mode creates payments "
            "and sets provider faults, so it talks to another machine only with --allow-remote"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_keys(values: list[str]) -> tuple[str, ...]:
    keys = tuple(key.strip() for value in values for key in value.split(",") if key.strip())
    if not keys:
        raise BadInput(
            "--api-key: at least one engine API key (or PAYCHAOS_API_KEY); create one with "
            "`paychaos keys create --db URL --merchant M`"
        )
    if any(key.startswith("rk_") for key in keys):
        raise BadInput("--api-key: a restricted key (rk_...) cannot write; use a secret key")
    return keys


def _seconds(option: str, text: str, low_s: float, high_s: float) -> float:
    try:
        value_s = parse_duration_s(text)
    except ValueError as exc:
        raise BadInput(f"{option}: {exc}") from None
    if not low_s <= value_s <= high_s:
        raise BadInput(f"{option}: between {low_s:g} and {high_s:g} seconds")
    return value_s


def register(app: typer.Typer, console: Console) -> None:
    @app.command("live")
    def live(
        scenario: Annotated[str, typer.Argument(help="A shipped scenario's name or a YAML file.")],
        engine: Annotated[str, typer.Option("--engine", help="The engine's base URL.")],
        psp: Annotated[str, typer.Option("--psp", help="The mock PSP's base URL.")],
        api_key: Annotated[
            list[str] | None,
            typer.Option(
                "--api-key",
                envvar="PAYCHAOS_API_KEY",
                help="Engine API key (sk_...); repeat (or comma-separate) for more merchants.",
            ),
        ] = None,
        seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
        time_scale: Annotated[
            float, typer.Option(help="Run the scenario's timeline this many times faster.")
        ] = 10.0,
        duration: Annotated[
            str | None,
            typer.Option(help="Wall time of the workload (default: the scenario's / scale)."),
        ] = None,
        payments_max: Annotated[int, typer.Option(help="At most this many checkouts.")] = 200,
        concurrency: Annotated[int, typer.Option(help="Checkouts in progress at most.")] = 32,
        quiescence_max: Annotated[
            str, typer.Option(help="Longest wait for the engine to settle after the faults stop.")
        ] = "7m",
        recovery_grace: Annotated[
            str,
            typer.Option(
                help="How long a capture or void answered 202 keeps the run waiting for the "
                "engine's recovery (its first lookup comes a minute after the attempt began)."
            ),
        ] = "90s",
        psp_key: Annotated[
            str, typer.Option(help="Key to read the provider's intents with.")
        ] = "sk_test_paychaos_live",
        db: Annotated[
            str | None,
            typer.Option("--db", help="Also read the engine's database: I8 (its outbox)."),
        ] = None,
        report_json: Annotated[Path | None, typer.Option(help="Write the JSON report.")] = None,
        junit: Annotated[Path | None, typer.Option(help="Write JUnit XML for CI.")] = None,
        allow_remote: Annotated[
            bool, typer.Option(help="Allow servers that are not on a loopback address.")
        ] = False,
        quiet: Annotated[bool, typer.Option(help="Only the invariant table.")] = False,
    ) -> None:
        """A scenario in wall time against running engine and mock PSP, then the invariants."""
        from loadtests.live.runner import LiveError, run_live

        try:
            loaded = resolve_scenario(scenario)
            options = _options(loaded, engine, psp, api_key or [], seed, time_scale, duration,
                               payments_max, concurrency, quiescence_max, recovery_grace,
                               psp_key, db, allow_remote)  # fmt: skip
        except (ScenarioError, BadInput) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
        _announce(console, loaded, options)
        started = time.perf_counter()
        try:
            result = run_live(loaded, options)
        except LiveError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1 if exc.begun else 2) from None
        except Exception as exc:  # the run could not finish: say why, never a stack trace
            console.print(f"[red]error:[/] live run stopped: {type(exc).__name__}: {exc}")
            raise typer.Exit(1) from None
        _print(console, result, time.perf_counter() - started, report_json, junit, quiet)
        raise typer.Exit(0 if result.ok else 1)


def _options(
    scenario: Scenario,
    engine: str,
    psp: str,
    api_keys: list[str],
    seed: int | None,
    time_scale: float,
    duration: str | None,
    payments_max: int,
    concurrency: int,
    quiescence_max: str,
    recovery_grace: str,
    psp_key: str,
    db: str | None,
    allow_remote: bool,
) -> LiveOptions:
    from loadtests.live.runner import LiveOptions

    if not TIME_SCALE_MIN <= time_scale <= TIME_SCALE_MAX:
        raise BadInput(f"--time-scale: between {TIME_SCALE_MIN:g} and {TIME_SCALE_MAX:g}")
    if duration is None:
        duration_s = min(max(scenario.duration_s / time_scale, 1.0), DURATION_S_MAX)
    else:
        duration_s = _seconds("--duration", duration, 1.0, DURATION_S_MAX)
    if not 1 <= payments_max <= PAYMENTS_MAX:
        raise BadInput(f"--payments-max: between 1 and {PAYMENTS_MAX}")
    if not 1 <= concurrency <= CONCURRENCY_MAX:
        raise BadInput(f"--concurrency: between 1 and {CONCURRENCY_MAX}")
    if seed is not None and not 0 <= seed < 2**63:
        raise BadInput("--seed: between 0 and 2**63 - 1")
    if not psp_key.startswith("sk_test_"):
        raise BadInput("--psp-key: a mock PSP test key, sk_test_...")
    return LiveOptions(
        engine_url=check_url("--engine", engine, allow_remote),
        psp_url=check_url("--psp", psp, allow_remote),
        api_keys=parse_keys(api_keys),
        time_scale=time_scale,
        duration_s=duration_s,
        payments_max=payments_max,
        concurrency=concurrency,
        quiescence_max_s=_seconds("--quiescence-max", quiescence_max, 0.0, QUIESCENCE_S_MAX),
        psp_key=psp_key,
        recovery_grace_s=_seconds("--recovery-grace", recovery_grace, 0.0, QUIESCENCE_S_MAX),
        seed=seed,
        db_url=db,
    )


def _announce(console: Console, scenario: Scenario, options: LiveOptions) -> None:
    from loadtests.live.plan import not_applied

    console.print(
        f"live: {scenario.name} against {options.engine_url} (provider {options.psp_url}), "
        f"{options.duration_s:g} s of workload at {options.time_scale:g}x, "
        f"{len(options.api_keys)} merchant key(s), at most {options.payments_max} checkouts"
    )
    for note in not_applied(scenario):
        console.print(f"[yellow]{note}[/]")


def _print(
    console: Console,
    result: RunResult,
    wall_time_s: float,
    report_json: Path | None,
    junit: Path | None,
    quiet: bool,
) -> None:
    from scenarios.outputs import (
        coverage_table,
        report_document,
        summary_table,
        write_json,
        write_junit,
    )

    console.print(summary_table(result))
    if not quiet:
        console.print(coverage_table(result))
    for problem in result.problems:
        console.print(f"[red]{result.scenario.name}:[/] {problem}")
    if report_json is not None:
        write_json(report_json, report_document([result], wall_time_s))
    if junit is not None:
        write_junit(junit, [result])
    verdict = "[green]OK[/]" if result.ok else "[red]FAILED[/]"
    console.print(f"{verdict}: live run {result.report['run_id']} in {wall_time_s:.1f} s")
