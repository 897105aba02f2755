"""The ``paychaos`` command line: its root and the engine's own commands.

The root owns the app and the sub-apps several packages fill (``serve``,
``bench``); the other packages add their commands through the registry in
``engine.entrypoints.commands`` (entry points), so this module imports none of them.
"""

from __future__ import annotations

import gc
import random
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.adapters.api_keys import KeyInfo
from engine.adapters.database import Database, SchemaOutOfDate, check_schema, upgrade
from engine.adapters.fake_provider import FakeProvider
from engine.audit import audit as run_audit
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund
from engine.domain.errors import PaychaosError
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.commands import CommandRoot, installed_entries, register_commands
from engine.entrypoints.render import audit_table, history_table, ledger_table
from engine.service.driver import perform, recover
from engine.service.engine import PaymentEngine

if TYPE_CHECKING:  # serve imports the web stack: only `serve engine` loads it
    from engine.entrypoints.serve import ServiceSettings

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


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[
        str,
        typer.Argument(
            metavar="KEY_ID", help="The key's id, as keys create printed it (keys list shows it)."
        ),
    ],
    db: DbUrl,
) -> None:
    """Revoke an API key: every engine process refuses it within a second."""
    from engine.adapters.api_keys import REVOCATION_S_MAX, Revoked
    from engine.domain.validation import parse_identifier
    from engine.entrypoints.serve import revoke_api_key

    try:
        parse_identifier(key_id, "KEY_ID")
    except PaychaosError as exc:
        fail(f"KEY_ID: {exc.message}")
    try:
        outcome = revoke_api_key(db, key_id)
    except PaychaosError as exc:  # a stale schema, an unavailable store
        fail(f"--db: {exc.message}")
    except Exception as exc:
        fail(f"--db: cannot use {db!r}: {type(exc).__name__}: {exc}")
    shown = escape(repr(key_id))  # the operator's text, not rich markup
    if outcome is Revoked.UNKNOWN:
        fail(f"KEY_ID: no API key {shown} in this database (paychaos keys list shows them)")
    if outcome is Revoked.ALREADY:
        fail(f"KEY_ID: the API key {shown} is already revoked")
    console.print(f"{shown} revoked: refused by every engine process within {REVOCATION_S_MAX:g} s")


@keys_app.command("list")
def keys_list(
    db: DbUrl,
    merchant: Annotated[str | None, typer.Option(help="Only this merchant's keys.")] = None,
) -> None:
    """API keys by id, oldest first: never the keys themselves, only their prefixes."""
    from engine.adapters.api_keys import LIST_ROWS_MAX
    from engine.entrypoints.serve import list_api_keys

    try:
        keys = list_api_keys(db, merchant)
    except PaychaosError as exc:
        fail(f"--db: {exc.message}")
    except Exception as exc:
        fail(f"--db: cannot use {db!r}: {type(exc).__name__}: {exc}")
    console.print(_keys_table(keys))
    if len(keys) == LIST_ROWS_MAX:
        console.print(f"the first {LIST_ROWS_MAX} only: narrow with --merchant")


def _keys_table(keys: list[KeyInfo]) -> Table:
    table = Table("id", "merchant", "kind", "prefix", "created", "revoked", title="API keys")
    for key in keys:
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
        table.add_row(
            escape(key.id), escape(key.merchant_id), key.kind, escape(f"{key.prefix}..."),
            key.created_at.isoformat(timespec="seconds"), revoked,
        )  # fmt: skip
    return table


@serve_app.command("engine")
def serve_engine(
    db: Annotated[str, typer.Option("--db", help="Database URL.")] = "sqlite:///paychaos.db",
    psp: Annotated[str, typer.Option("--psp", help="The provider's base URL.")] = (
        "http://127.0.0.1:12111"
    ),
    psp_key: Annotated[str, typer.Option(help="The provider API key.")] = "sk_test_paychaos",
    webhook_secret: Annotated[
        str,
        typer.Option(
            envvar="PAYCHAOS_WEBHOOK_SECRET",
            help="The provider's webhook signing secret (whsec_...); required. Prefer the "
            "environment variable: a command line is visible to every user of the machine.",
        ),
    ] = "",
    insecure_skip_webhook_verification: Annotated[
        bool,
        typer.Option(
            "--insecure-skip-webhook-verification",
            help="DANGEROUS, for tests only: serve without a webhook secret and take every "
            "webhook as genuine, signed or not. Anybody who can reach /v1/webhooks/psp can "
            "then forge provider events (a dispute, a refund) and move money. Logged as a "
            "warning by every process.",
        ),
    ] = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    metrics_port: Annotated[
        int,
        typer.Option(
            help="Serve Prometheus /metrics on this port, apart from the API (0: not served; "
            "never on the API's port). With --workers N the first process to start serves "
            "it: its own counters, and the database's.",
        ),
    ] = 0,
    metrics_host: Annotated[
        str,
        typer.Option(help="Interface for --metrics-port; keep it private to the scraper."),
    ] = "127.0.0.1",
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
    events_catch_up_s: Annotated[
        float,
        typer.Option(
            help="List the provider's events this often and take those whose webhooks never "
            "came (a lost dispute, say); 0: off."
        ),
    ] = 300.0,
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
        events_catch_up_s=events_catch_up_s, step_threads=step_threads,
        skip_webhook_verification=insecure_skip_webhook_verification,
        metrics_host=metrics_host, metrics_port=metrics_port, api_processes=workers,
    )  # fmt: skip
    _refuse_serve_settings(settings, port)
    try:
        database = Database(db)
        check_schema(database.engine)
        database.dispose()
    except SchemaOutOfDate as exc:
        fail(f"--db: {exc.message}")
    except Exception as exc:
        fail(f"--db: cannot use {db!r}: {type(exc).__name__}: {exc}")
    _announce(settings, host, port)
    os.environ.update(settings.to_env())
    uvicorn.run(
        "engine.entrypoints.serve:app_from_env", factory=True, host=host, port=port,
        workers=workers, log_level="warning",
    )  # fmt: skip


def _refuse_serve_settings(settings: ServiceSettings, port: int) -> None:
    """Exit 2 naming the option of the first setting that cannot work, before the database."""
    problem = settings.problem()
    if problem is not None:
        fail(f"--{problem[0].replace('_', '-')}: {problem[1]}")
    unsigned = settings.webhook_problem()
    if unsigned is not None:
        fail(f"--webhook-secret: {unsigned}")
    if settings.metrics_port and settings.metrics_port == port:
        fail("--metrics-port: must differ from --port (metrics are never served on the API's)")
    if settings.metrics_port:
        # Checked here for a clear message: later, with --workers N, a port in use reads
        # as "a sibling process serves it" and the metrics would silently be someone else's.
        unbound = _bind_problem(settings.metrics_host, settings.metrics_port)
        if unbound is not None:
            fail(f"--metrics-port: cannot listen on {settings.metrics_host}:"
                 f"{settings.metrics_port} (--metrics-host): {unbound}")  # fmt: skip


def _bind_problem(host: str, port: int) -> str | None:
    """Why a listener could not bind ``host:port`` now (in use, no such address); None if it can."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _announce(settings: ServiceSettings, host: str, port: int) -> None:
    if settings.skip_webhook_verification:
        from engine.entrypoints.serve import INSECURE_WARNING

        # One line whatever the width: whoever greps the service's log finds it whole.
        console.print(f"[bold red]WARNING:[/] {escape(INSECURE_WARNING)}", soft_wrap=True)
    console.print(f"engine API on http://{host}:{port}")
    if settings.metrics_port:
        console.print(f"metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics")


def _register_all() -> None:
    """Every command, on the one ``app`` that ``main()``, ``python -m`` and tests share.

    The engine's own first, then each installed package's ``register(root)``: the
    ``paychaos.commands`` entry points (``engine.entrypoints.commands``).
    """
    from engine.entrypoints import payouts_cli, recon_cli, worker_cli

    worker_cli.register(app, serve_app, console)
    payouts_cli.register(app, console)
    recon_cli.register(app, console)
    register_commands(CommandRoot(app, serve_app, bench_app, console), installed_entries())


_register_all()


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
