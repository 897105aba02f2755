"""``paychaos bench ...``, ``paychaos load`` and ``paychaos live``, registered on the root.

``pyproject.toml`` names :func:`register` in the ``paychaos.commands`` entry
points; the root (``engine.entrypoints.commands``) calls it. Each command
imports its runner when it runs, so ``paychaos --help`` stays quick.
"""

from __future__ import annotations

from typing import Annotated

import typer

from engine.entrypoints.commands import CommandRoot
from loadtests.live.cli import register as register_live


def register(root: CommandRoot) -> None:
    _register_benches(root)
    _register_load(root)
    register_live(root.app, root.console)


def _register_benches(root: CommandRoot) -> None:
    bench, console = root.bench, root.console

    @bench.command("engine")
    def bench_engine(
        small: Annotated[bool, typer.Option("--small", help="A quick run, for CI.")] = False,
        db_url: Annotated[
            list[str] | None,
            typer.Option("--db-url", help="Add a database (e.g. PostgreSQL); repeatable."),
        ] = None,
    ) -> None:
        """Payment lifecycles per second next to minimal one-row transactions."""
        from loadtests.bench_engine import run

        run(small=small, extra_urls=db_url or [], console=console)

    @bench.command("psp")
    def bench_psp(
        small: Annotated[bool, typer.Option("--small", help="A quick run, for CI.")] = False,
    ) -> None:
        """Create + confirm + capture per second: mock PSP, trivial endpoint, localstripe."""
        from loadtests.bench_psp import run

        run(small=small, console=console)

    @bench.command("sim")
    def bench_sim(
        small: Annotated[bool, typer.Option("--small", help="A quick run, for CI.")] = False,
        day: Annotated[
            bool,
            typer.Option(
                "--day",
                help="Run the whole simulated day instead of projecting it from an hour "
                "(about half an hour).",
            ),
        ] = False,
    ) -> None:
        """Simulated payments per wall second next to simpy and raw SQLite; the 1M/day goal."""
        from loadtests.bench_sim import run

        run(small=small, console=console, whole_day=day)

    @bench.command("api")
    def bench_api(
        small: Annotated[bool, typer.Option("--small", help="A quick run, for CI.")] = False,
        db_url: Annotated[
            str | None,
            typer.Option("--db-url", help="A PostgreSQL server to measure too, next to pgbench."),
        ] = None,
    ) -> None:
        """Payment API calls/s and p50/p95/p99 on SQLite and PostgreSQL, next to pgbench."""
        from loadtests.bench_api import run

        raise typer.Exit(run(small=small, db_url=db_url, console=console))

    @bench.command("guard")
    def bench_guard(
        small: Annotated[
            bool, typer.Option("--small", help="20 MB bodies instead of 200 MB.")
        ] = False,
    ) -> None:
        """What an oversized request costs the API: time to its 413 and peak memory growth."""
        from loadtests.bench_guard import run

        raise typer.Exit(run(small=small, console=console))

    @bench.command("detect")
    def bench_detect(
        small: Annotated[
            bool, typer.Option("--small", help="The test suite's shorter scenario lengths.")
        ] = False,
        with_tests: Annotated[
            bool,
            typer.Option(
                "--with-tests",
                help="Also run tests/unit and tests/integration once per defect (a checkout).",
            ),
        ] = False,
    ) -> None:
        """Planted defects caught by the shipped scenarios, next to the unplanted runs."""
        import importlib.util

        if importlib.util.find_spec("pytest") is None:  # the plants monkeypatch with pytest's
            needs = "bench detect needs pytest: pip install -e '.[dev]' (or '.[bench]')"
            console.print(needs, markup=False)
            raise typer.Exit(2)
        from loadtests.bench_detect import run

        raise typer.Exit(run(small=small, with_tests=with_tests, console=console))


def _register_load(root: CommandRoot) -> None:
    @root.app.command("load")
    def load(
        users: Annotated[int, typer.Option(help="Concurrent locust users.")] = 20,
        rate: Annotated[float, typer.Option(help="Target checkouts per second in all.")] = 20.0,
        duration: Annotated[int, typer.Option(help="Seconds of load (at most 3600).")] = 30,
        db: Annotated[
            str | None, typer.Option("--db", help="Database URL (default: SQLite).")
        ] = None,
        out: Annotated[str, typer.Option(help="Where locust's CSV and HTML go.")] = "reports/load",
        processes: Annotated[int, typer.Option(help="Locust worker processes (1: none).")] = 1,
        expect_rps: Annotated[float | None, typer.Option(help="Fail below this rate.")] = None,
        expect_p99_ms: Annotated[float | None, typer.Option(help="Fail above this p99.")] = None,
    ) -> None:
        """Locust against engine and mock PSP on 127.0.0.1, then the invariants."""
        import importlib.util
        from pathlib import Path

        from loadtests.load import run_load

        if importlib.util.find_spec("locust") is None:
            root.fail("locust is not installed: pip install -e '.[load]' (or '.[dev]')")
        if not 1 <= users <= 1_000:
            root.fail("--users: between 1 and 1000")
        if not 1 <= duration <= 3_600:
            root.fail("--duration: between 1 and 3600 seconds")
        if not 0 < rate <= 10_000:
            root.fail("--rate: above 0 and at most 10000")
        if not 1 <= processes <= 8:
            root.fail("--processes: between 1 and 8")
        code = run_load(
            root.console, users, rate, duration, db, Path(out), processes, expect_rps, expect_p99_ms
        )
        raise typer.Exit(code)
