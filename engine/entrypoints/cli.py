"""The ``paychaos`` command line."""

from __future__ import annotations

import gc
import random
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from engine.adapters.database import Database, SchemaOutOfDate, check_schema, upgrade
from engine.adapters.fake_provider import FakeProvider
from engine.audit import audit as run_audit
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund
from engine.domain.errors import PaychaosError
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.render import audit_table, history_table, ledger_table
from engine.service.driver import perform, recover
from engine.service.engine import PaymentEngine

app = typer.Typer(
    help="paychaos: prove that payment code handles money correctly under failure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print tables with same-run baselines.")
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")
serve_app = typer.Typer(help="Run paychaos servers.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")

console = Console()
if not console.is_terminal:  # pipes and CI logs: wide enough for whole ids
    console = Console(width=160)
DbUrl = Annotated[
    str,
    typer.Option("--db", help="SQLAlchemy URL: sqlite:///file.db or postgresql://user@host/db"),
]


def fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed for ids: same seed, same output.")] = 7,
    db: Annotated[str, typer.Option("--db", help="Database URL.")] = "sqlite://",
) -> None:
    """One payment's life on the embedded SQLite with an in-process fake provider."""
    database = Database(db, migrate=True)
    clock = FixedClock()
    engine = PaymentEngine(database, clock, SeededIds(random.Random(seed)))
    provider = FakeProvider()
    merchant = "m_demo"
    created = engine.create_payment(
        CreatePayment(merchant, "demo-create", "order-1001", 12_500, "USD", "pm_card_visa")
    )
    payment_id = created.payment.id
    clock.advance(timedelta(seconds=2))
    perform(engine, provider, engine.begin_authorize(Authorize(merchant, "demo-auth", payment_id)))
    clock.advance(timedelta(minutes=30))
    perform(
        engine, provider, engine.begin_capture(Capture(merchant, "demo-cap", payment_id, 10_000))
    )
    clock.advance(timedelta(days=1))
    provider.fail_next.append("after")  # the refund's response is lost on the way back
    refund = perform(
        engine, provider, engine.begin_refund(Refund(merchant, "demo-refund", payment_id, 2_500))
    )
    console.print(f"refund answered {refund.status_code}: the provider's response was lost")
    clock.advance(timedelta(minutes=1))
    resolved = recover(engine, provider, engine.unresolved_attempts(timedelta(seconds=30)))
    console.print(f"recovery looked the refund up by its idempotency key: {resolved} resolved")
    console.print(history_table(engine.get_payment(payment_id)))
    console.print(ledger_table(engine.ledger_of(payment_id)))
    with database.engine.connect() as connection:
        results = run_audit(connection)
    console.print(audit_table(results))
    database.dispose()
    if not all(result.ok for result in results):
        raise typer.Exit(1)


@app.command()
def audit(db: DbUrl) -> None:
    """Check a stored database's invariants; exit 1 on any violation."""
    try:
        database = Database(db)
        check_schema(database.engine)
        with database.engine.connect() as connection:
            results = run_audit(connection)
    except PaychaosError as exc:  # a stale schema, an unavailable store
        fail(f"--db: {exc.message}")
    except Exception as exc:  # a bad URL or an unreachable server: say so, no trace
        fail(f"--db: cannot read {db!r}: {type(exc).__name__}: {exc}")
    console.print(audit_table(results))
    failed = [result for result in results if not result.ok]
    for result in failed:
        subjects = sorted({subject for subject, _ in result.violations})
        console.print(
            f"[red]{result.invariant} {result.name} violated by:[/] {', '.join(subjects)}"
        )
    raise typer.Exit(1 if failed else 0)


@db_app.command("upgrade")
def db_upgrade(db: DbUrl, revision: str = "head") -> None:
    """Apply the schema migrations to a database."""
    try:
        database = Database(db)
        upgrade(database.engine, revision)
    except Exception as exc:
        fail(f"--db: cannot migrate {db!r}: {type(exc).__name__}: {exc}")
    console.print(f"database at {revision}")


@bench_app.command("engine")
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


@bench_app.command("psp")
def bench_psp(
    small: Annotated[bool, typer.Option("--small", help="A quick run, for CI.")] = False,
) -> None:
    """Create + confirm + capture per second: mock PSP, trivial endpoint, localstripe."""
    from loadtests.bench_psp import run

    run(small=small, console=console)


@bench_app.command("sim")
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


@bench_app.command("api")
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


@serve_app.command("psp")
def serve_psp(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65_535)] = 12111,
    seed: Annotated[int, typer.Option(help="Seed for ids and fault decisions.")] = 0,
    faults: Annotated[
        Path | None, typer.Option("--faults", help="Fault plan, YAML or JSON.")
    ] = None,
    timeout_hold_s: Annotated[
        float, typer.Option(help="Longest a lost response holds its request.", min=0.01, max=600)
    ] = 30.0,
) -> None:
    """The mock PSP over HTTP: Stripe's /v1 dialect plus /_admin."""
    from mock_psp.faultfile import FaultFileError, load_fault_plan
    from mock_psp.server import Listen, ServerSettings, build_core, serve

    try:
        plan = load_fault_plan(faults) if faults is not None else None
    except FaultFileError as exc:
        fail(f"--faults: {exc.message}")
    console.print(f"mock PSP on http://{host}:{port} (seed {seed}); admin under /_admin")
    serve(build_core(seed, plan), Listen(host, port), ServerSettings(timeout_hold_s=timeout_hold_s))


keys_app = typer.Typer(help="API keys per merchant.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    db: DbUrl,
    merchant: Annotated[str, typer.Option(help="The merchant the key belongs to.")],
    kind: Annotated[str, typer.Option(help="secret (read and write) or restricted (read).")] = (
        "secret"
    ),
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from engine.domain.validation import parse_identifier
    from engine.entrypoints.serve import new_api_key

    if kind not in {"secret", "restricted"}:
        fail("--kind: secret or restricted")
    try:
        parse_identifier(merchant, "merchant_id")
        key_id, secret = new_api_key(db, merchant, kind)
    except PaychaosError as exc:
        fail(f"{exc.message}")
    except Exception as exc:
        fail(f"--db: cannot use {db!r}: {type(exc).__name__}: {exc}")
    console.print(f"{key_id} {kind} key for {merchant} (shown once): {secret}")


@serve_app.command("engine")
def serve_engine(
    db: Annotated[str, typer.Option("--db", help="Database URL.")] = "sqlite:///paychaos.db",
    psp: Annotated[str, typer.Option("--psp", help="The provider's base URL.")] = (
        "http://127.0.0.1:12111"
    ),
    psp_key: Annotated[str, typer.Option(help="The provider API key.")] = "sk_test_paychaos",
    webhook_secret: Annotated[
        str, typer.Option(envvar="PAYCHAOS_WEBHOOK_SECRET", help="The webhook signing secret.")
    ] = "",
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[
        int, typer.Option(help="API processes; one at a time runs the engine's workers.")
    ] = 1,
    provider_timeout_s: float = 5.0,
    no_workers: Annotated[
        bool, typer.Option("--no-workers", help="Leave the workers to `paychaos serve worker`.")
    ] = False,
    worker_interval_s: Annotated[float, typer.Option(help="Seconds between worker loops.")] = 1.0,
    recovery_schedule_s: Annotated[
        str | None,
        typer.Option(
            help="Seconds to an attempt's first lookup, then between lookups: "
            "60,300,3600,86400,86400,86400 (then flagged for review)."
        ),
    ] = None,
    circuit_open_s: Annotated[
        float, typer.Option(help="Seconds an open circuit fails calls fast.")
    ] = 30.0,
    recon_interval_s: Annotated[
        float, typer.Option(help="Reconciliation windows in seconds (0: off).")
    ] = 0.0,
    recon_delay_s: Annotated[
        float, typer.Option(help="Reconcile a window this long after it ends.")
    ] = 3_600.0,
    payout_interval_s: Annotated[
        float, typer.Option(help="Pay every seller's available balance out this often (0: off).")
    ] = 0.0,
    step_threads: Annotated[
        int,
        typer.Option(
            envvar="PAYCHAOS_STEP_THREADS",
            help="Threads for the engine's steps per API process (0: 1 on SQLite, 8 on "
            "PostgreSQL).",
        ),
    ] = 0,
) -> None:
    """The engine's HTTP API and its workers (run `paychaos db upgrade` first)."""
    import os

    import uvicorn

    from engine.adapters.database import Database
    from engine.entrypoints import serve

    schedule = serve.DEFAULT_RECOVERY_SCHEDULE_S
    try:
        schedule = serve.parse_schedule(recovery_schedule_s) if recovery_schedule_s else schedule
    except ValueError as exc:
        fail(f"--recovery-schedule-s: {exc}")
    settings = serve.ServiceSettings(
        db, psp, psp_key, webhook_secret, provider_timeout_s, workers=not no_workers,
        worker_interval_s=worker_interval_s, recovery_schedule_s=schedule,
        circuit_open_s=circuit_open_s, recon_interval_s=recon_interval_s,
        recon_delay_s=recon_delay_s, payout_interval_s=payout_interval_s,
        step_threads=step_threads,
    )  # fmt: skip
    problem = settings.problem()
    if problem is not None:
        fail(f"--{problem[0].replace('_', '-')}: {problem[1]}")
    try:
        database = Database(db)
        check_schema(database.engine)
        database.dispose()
    except SchemaOutOfDate as exc:
        fail(f"--db: {exc.message}")
    except Exception as exc:
        fail(f"--db: cannot use {db!r}: {type(exc).__name__}: {exc}")
    if not 1 <= workers <= 64:
        fail("--workers: between 1 and 64")
    os.environ.update(settings.to_env())
    uvicorn.run(
        "engine.entrypoints.serve:app_from_env", factory=True, host=host, port=port,
        workers=workers, log_level="warning",
    )  # fmt: skip


@app.command("load")
def load(
    users: Annotated[int, typer.Option(help="Concurrent locust users.")] = 20,
    rate: Annotated[float, typer.Option(help="Target checkouts per second in all.")] = 20.0,
    duration: Annotated[int, typer.Option(help="Seconds of load (at most 3600).")] = 30,
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default: SQLite).")] = None,
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
        fail("locust is not installed: pip install -e '.[load]' (or '.[dev]')")
    if not 1 <= users <= 1_000:
        fail("--users: between 1 and 1000")
    if not 1 <= duration <= 3_600:
        fail("--duration: between 1 and 3600 seconds")
    if not 0 < rate <= 10_000:
        fail("--rate: above 0 and at most 10000")
    if not 1 <= processes <= 8:
        fail("--processes: between 1 and 8")
    code = run_load(
        console, users, rate, duration, db, Path(out), processes, expect_rps, expect_p99_ms
    )
    raise typer.Exit(code)


def _register_harness() -> None:
    from scenarios.cli import register

    register(app, console)


_register_harness()


def _register_workers() -> None:
    from engine.entrypoints.worker_cli import register

    register(app, serve_app, console)


_register_workers()


def _register_payouts() -> None:
    from engine.entrypoints.payouts_cli import register

    register(app, console)


_register_payouts()


def _register_live() -> None:
    from loadtests.live.cli import register

    register(app, console)


_register_live()


def _register_recon() -> None:
    from engine.entrypoints.recon_cli import register

    register(app, console)


_register_recon()


# Simulations and servers hold large, long-lived heaps; the default thresholds
# make the cycle collector walk them every few thousand allocations.
GC_THRESHOLDS = (100_000, 50, 1_000)


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        app()
    except PaychaosError as exc:
        console.print(f"[red]error:[/] {exc.code}: {exc.message}")
        sys.exit(2)


if __name__ == "__main__":
    main()
