"""``paychaos serve worker`` and ``paychaos dlq list|retry``.

Registered on the main app by ``engine.entrypoints.cli``; the workers and the
NATS client are imported only when a command runs.
"""

from __future__ import annotations

import random
import signal
import threading
from datetime import timedelta
from types import FrameType
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from engine.adapters.database import Database, SchemaOutOfDate, check_schema
from engine.domain.errors import Conflict, NotFound, PaychaosError
from engine.service.engine import EngineSettings, PaymentEngine
from engine.service.views import InboxItem

DbUrl = Annotated[
    str,
    typer.Option("--db", help="SQLAlchemy URL: sqlite:///file.db or postgresql://user@host/db"),
]
LIST_LIMIT_MAX = 100


def _fail(console: Console, message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


def _engine(console: Console, db: str, settings: EngineSettings | None = None) -> PaymentEngine:
    from engine.entrypoints.system import RandomIds, SystemClock

    try:
        database = Database(db)
        check_schema(database.engine)
    except (SchemaOutOfDate, PaychaosError) as exc:
        _fail(console, f"--db: {exc.message}")
    except Exception as exc:  # a bad URL or an unreachable server: say so, no trace
        _fail(console, f"--db: cannot use {db!r}: {type(exc).__name__}: {exc}")
    return PaymentEngine(database, SystemClock(), RandomIds(), settings)


def dead_letter_table(items: list[InboxItem]) -> Table:
    table = Table(title=f"dead letters ({len(items)})")
    for column in ("event id", "type", "attempts", "last error", "received at"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(
            item.provider_event_id, item.type, str(item.attempts), item.last_error or "",
            item.received_at.isoformat(timespec="seconds"),
        )  # fmt: skip
    return table


def register(app: typer.Typer, serve_app: typer.Typer, console: Console) -> None:
    dlq_app = typer.Typer(help="Webhooks that failed too often: inspect and replay.")
    app.add_typer(dlq_app, name="dlq", no_args_is_help=True)

    @dlq_app.command("list")
    def dlq_list(
        db: DbUrl,
        limit: Annotated[int, typer.Option(min=1, max=LIST_LIMIT_MAX)] = LIST_LIMIT_MAX,
    ) -> None:
        """Webhook deliveries given up on, oldest first."""
        engine = _engine(console, db)
        try:
            items = engine.dead_letters(limit)
        finally:
            engine.db.dispose()
        console.print(dead_letter_table(items))

    @dlq_app.command("retry")
    def dlq_retry(
        event_id: Annotated[str, typer.Argument(help="The provider's event id (evt_...).")],
        db: DbUrl,
    ) -> None:
        """Put one dead letter back in line; the worker applies it on its next loop."""
        engine = _engine(console, db)
        try:
            item = engine.retry_dead_letter(event_id)
        except (NotFound, Conflict) as exc:
            _fail(console, f"EVENT_ID: {exc.message}")
        finally:
            engine.db.dispose()
        console.print(f"{item.provider_event_id} ({item.type}) is pending again")

    @serve_app.command("worker")
    def serve_worker(
        db: DbUrl,
        psp: Annotated[str, typer.Option("--psp", help="The provider's base URL.")],
        psp_key: Annotated[
            str, typer.Option(envvar="PAYCHAOS_PSP_KEY", help="The provider API key.")
        ] = "sk_test_paychaos",
        bus: Annotated[
            str | None, typer.Option("--bus", help="nats://host:port to publish events to.")
        ] = None,
        interval_s: Annotated[float, typer.Option("--interval-s", min=0.0, max=3600.0)] = 1.0,
        max_loops: Annotated[
            int | None, typer.Option("--max-loops", min=1, help="Stop after N loops.")
        ] = None,
        provider_timeout_s: Annotated[float, typer.Option(min=0.1, max=120.0)] = 10.0,
        recovery_schedule_s: Annotated[
            str | None,
            typer.Option(
                help="Seconds to an attempt's first lookup, then between lookups "
                "(as for serve engine: use the same schedule)."
            ),
        ] = None,
        recon_interval_s: Annotated[
            float, typer.Option(help="Reconciliation windows in seconds (0: off).")
        ] = 0.0,
        recon_delay_s: Annotated[
            float, typer.Option(help="Reconcile a window this long after it ends.")
        ] = 3_600.0,
        events_catch_up_s: Annotated[
            float,
            typer.Option(
                help="List the provider's events this often and take those whose webhooks "
                "never came (a lost dispute, say); 0: off."
            ),
        ] = 300.0,
    ) -> None:
        """Recovery, outbox relay, webhook inbox, event catch-up and key expiry, in a loop
        (Ctrl-C stops).

        One process per database runs them at a time (an API process with embedded
        workers included); another started on the same database stands by."""
        from engine.entrypoints.serve import (
            events_catch_up_problem,
            parse_schedule,
            recon_problem,
        )

        problem = recon_problem(recon_interval_s, recon_delay_s) or events_catch_up_problem(
            events_catch_up_s
        )
        if problem is not None:
            _fail(console, f"--{problem[0].replace('_', '-')}: {problem[1]}")
        if not psp.startswith(("http://", "https://")):
            _fail(console, "--psp: an http:// or https:// URL")
        if bus is not None and not bus.startswith("nats://"):
            _fail(console, "--bus: a nats://host:port URL")
        settings = EngineSettings()
        if recovery_schedule_s:
            try:
                steps = parse_schedule(recovery_schedule_s)
            except ValueError as exc:
                _fail(console, f"--recovery-schedule-s: {exc}")
            settings = EngineSettings(
                recovery_schedule=tuple(timedelta(seconds=step) for step in steps)
            )
        _run_worker(console, _engine(console, db, settings), psp, psp_key, bus, interval_s,
                    max_loops, provider_timeout_s, (recon_interval_s, recon_delay_s),
                    events_catch_up_s)  # fmt: skip


def _run_worker(
    console: Console,
    engine: PaymentEngine,
    psp: str,
    psp_key: str,
    bus: str | None,
    interval_s: float,
    max_loops: int | None,
    provider_timeout_s: float,
    recon: tuple[float, float] = (0.0, 3_600.0),
    events_catch_up_s: float = 0.0,
) -> None:
    from engine.adapters.psp_http import HttpProvider
    from engine.entrypoints.serve import ServiceSettings, build_catch_up, build_reconciliation
    from engine.workers import InProcessPublisher, Worker, lease_for
    from engine.workers.relay import Publisher

    provider = HttpProvider(psp, psp_key, timeout_s=provider_timeout_s, rng=random.Random())
    publisher: Publisher
    if bus is not None:
        from engine.workers.nats_bus import NatsPublisher

        publisher = NatsPublisher(bus)
    else:
        publisher = InProcessPublisher()
    recon_settings = ServiceSettings(
        engine.db.url, psp, psp_key, recon_interval_s=recon[0], recon_delay_s=recon[1]
    )
    reconciliation = build_reconciliation(engine, recon_settings)
    catch_up = build_catch_up(engine, provider, events_catch_up_s)
    worker = Worker.assemble(engine, provider, publisher, reconciliation, catch_up)
    lease = lease_for(engine.db)
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_term(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        previous = signal.signal(signal.SIGTERM, on_term)
    console.print(f"worker on {engine.db.url.split('@')[-1]}: provider {psp}, "
                  f"bus {bus or 'in-process'}, every {interval_s} s")  # fmt: skip
    try:
        report = worker.run(interval_s, max_loops, stop, lease)
    except KeyboardInterrupt:
        report = worker.report
        console.print("stopping")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        lease.release()
        publisher.close()
        provider.close()
        if reconciliation is not None:
            reconciliation.source.close()
        engine.db.dispose()
    errors = ", ".join(f"{name} {count}" for name, count in sorted(report.errors.items()))
    standby = f", {report.standby_loops} standing by (another process ran them)"
    console.print(
        f"{report.loops} loops" + (standby if report.standby_loops else "") + ": "
        f"{report.resolved} attempts resolved "
        f"({report.still_unknown} still unknown), {report.published} events published, "
        f"{report.webhooks_applied} webhooks applied ({report.webhooks_dead} dead), "
        f"{report.events_caught_up} events caught up, "
        f"{report.keys_expired} keys expired" + (f"; skipped: {errors}" if errors else "")
    )
