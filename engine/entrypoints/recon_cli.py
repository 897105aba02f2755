"""``paychaos recon run|exceptions|resolve``: reconciliation on the command line.

Registered on the main app by ``engine.entrypoints.cli``. Exit codes: ``run`` 0
when the report matched the ledger, 1 when it found exceptions, 2 on bad input
(a malformed report names its line and column; nothing is written);
``resolve`` 0, or 2 when refused (unknown, already resolved, no reason).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from engine.domain.errors import PaychaosError
from engine.domain.money import Money
from engine.domain.reconciliation import ExceptionCategory, Tolerances
from engine.domain.settlement import REPORT_CHARS_MAX, SettlementReport, parse_settlement_report
from engine.service.reconciliation import ExceptionItem, Reconciler, RunSummary
from engine.workers.reconciliation import BOOKING_LAG_S

DbUrl = Annotated[
    str,
    typer.Option("--db", help="SQLAlchemy URL: sqlite:///file.db or postgresql://user@host/db"),
]
LIST_LIMIT_MAX = 1_000
FOUND_SHOWN_MAX = 50
IDS = frozenset({"id", "category", "provider ref", "payment"})


def _fail(console: Console, message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


def _reconciler(console: Console, db: str) -> Reconciler:
    from engine.adapters.database import Database, SchemaOutOfDate, check_schema
    from engine.entrypoints.system import RandomIds, SystemClock
    from engine.service.engine import PaymentEngine

    try:
        database = Database(db)
        check_schema(database.engine)
    except (SchemaOutOfDate, PaychaosError) as exc:
        _fail(console, f"--db: {exc.message}")
    except Exception as exc:  # a bad URL or an unreachable server: say so, no trace
        _fail(console, f"--db: cannot use {db!r}: {type(exc).__name__}: {exc}")
    clock, ids = SystemClock(), RandomIds()
    return Reconciler(database, clock, ids, PaymentEngine(database, clock, ids))


def parse_moment(text: str, option: str) -> datetime:
    """ISO 8601; a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{option}: {text[:40]!r} is not an ISO time like 2026-01-31T00:00Z"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def report_window(report: SettlementReport) -> tuple[datetime | None, datetime | None]:
    """The interval a report says it covers, else from its first row to just after its last."""
    if report.interval_start_at is not None and report.interval_end_at is not None:
        return report.interval_start_at, report.interval_end_at
    if not report.rows:
        return None, None
    times = [row.created_at for row in report.rows]
    return min(times), max(times) + timedelta(seconds=1)


def _window(
    report: SettlementReport, start: str | None, end: str | None
) -> tuple[datetime, datetime]:
    from_report = report_window(report)
    start_at = parse_moment(start, "--window-start") if start else from_report[0]
    end_at = parse_moment(end, "--window-end") if end else from_report[1]
    if start_at is None or end_at is None:
        raise ValueError("--window-start/--window-end: the report has no rows to take them from")
    return start_at, end_at


def _money(amount_minor: int | None, currency: str | None) -> str:
    if amount_minor is None:
        return ""
    return Money(amount_minor, currency).format() if currency else str(amount_minor)


def summary_table(summary: RunSummary) -> Table:
    table = Table(title=f"reconciliation {summary.run_id}", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    window = f"{summary.window_start_at.isoformat()} .. {summary.window_end_at.isoformat()}"
    table.add_row("window", window)
    table.add_row("report rows", str(summary.rows_count))
    table.add_row("matched", str(summary.matched_count))
    table.add_row("payments settled", str(summary.settled_count))
    table.add_row("payouts landed at the bank", str(summary.landed_count))
    table.add_row("payouts in transit", str(len(summary.payouts_in_transit)))
    for category, count in summary.counts().items():
        style = "red" if count else "green"
        table.add_row(category, f"[{style}]{count}[/]")
    table.add_row("exceptions new", str(summary.new_count))
    return table


def found_table(summary: RunSummary) -> Table:
    table = Table(title="exceptions found", title_justify="left")
    for column in ("category", "party", "kind", "provider ref", "payment", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column in IDS)
    for found in summary.exceptions[:FOUND_SHOWN_MAX]:
        table.add_row(found.category.value, found.party.value,
                      found.kind.value if found.kind else "", found.provider_ref,
                      found.payment_id or "", found.detail)  # fmt: skip
    if len(summary.exceptions) > FOUND_SHOWN_MAX:
        table.caption = f"and {len(summary.exceptions) - FOUND_SHOWN_MAX} more"
    return table


def exceptions_table(items: list[ExceptionItem]) -> Table:
    """One row per exception; the detail names the movement, the resolution its reason."""
    table = Table(title=f"reconciliation exceptions ({len(items)})", title_justify="left")
    for column in ("id", "category", "payment", "ledger", "report", "status", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column in IDS)
    for item in items:
        detail = item.detail
        if item.status != "open":
            journal = f"journal {item.journal_id}" if item.journal_id else "no journal"
            detail += f" -- resolved ({journal}): {item.resolution_reason}"
        table.add_row(
            item.id, item.category, item.payment_id or "",
            _money(item.expected_minor, item.currency),
            _money(item.reported_minor, item.currency), item.status, detail,
        )  # fmt: skip
    return table


def _read_report(console: Console, path: Path) -> bytes:
    try:
        if path.stat().st_size > REPORT_CHARS_MAX * 4:
            _fail(console, f"--report: {path} is larger than any report this reads")
        return path.read_bytes()
    except OSError as exc:
        _fail(console, f"--report: cannot read {path} ({exc.strerror})")


def _run(console: Console, reconciler: Reconciler, content: bytes, source: str,
         window: tuple[str | None, str | None], tolerances: Tolerances) -> RunSummary:  # fmt: skip
    try:
        start_at, end_at = _window(parse_settlement_report(content), *window)
        return reconciler.run(content, source, start_at, end_at, tolerances)
    except ValueError as exc:
        _fail(console, str(exc))
    except PaychaosError as exc:  # a malformed report, a bad window: nothing was written
        where = f"{exc.field}: " if exc.field and exc.code != "settlement_file_invalid" else ""
        _fail(console, f"{where}{exc.message}")
    finally:
        reconciler.db.dispose()


def register(app: typer.Typer, console: Console) -> None:
    recon_app = typer.Typer(help="Reconciliation: settlement reports against the ledger.")
    app.add_typer(recon_app, name="recon", no_args_is_help=True)

    @recon_app.command("run")
    def recon_run(
        db: DbUrl,
        report: Annotated[
            Path, typer.Option("--report", help="The settlement report, CSV or JSON.")
        ],
        window_start: Annotated[
            str | None, typer.Option("--window-start", help="ISO time; default: the report's.")
        ] = None,
        window_end: Annotated[
            str | None,
            typer.Option("--window-end", help="ISO time (excluded); default: the report's."),
        ] = None,
        lateness_s: Annotated[
            int, typer.Option(min=0, max=60 * 86_400, help="How late a row may be and still match.")
        ] = 0,
        amount_tolerance_minor: Annotated[int, typer.Option(min=0, max=1_000_000)] = 0,
        fee_tolerance_minor: Annotated[int, typer.Option(min=0, max=1_000_000)] = 0,
        booking_lag_s: Annotated[
            int,
            typer.Option(
                min=0,
                max=60 * 86_400,
                help="How long after the provider moved money the ledger may book it.",
            ),
        ] = BOOKING_LAG_S,
    ) -> None:
        """Match a report with the ledger; exit 1 when it finds exceptions."""
        content = _read_report(console, report)
        tolerances = Tolerances(amount_tolerance_minor, fee_tolerance_minor, lateness_s,
                                booking_lag_s=booking_lag_s)  # fmt: skip
        summary = _run(console, _reconciler(console, db), content, f"file:{report.name}"[:255],
                       (window_start, window_end), tolerances)  # fmt: skip
        console.print(summary_table(summary))
        if summary.exceptions:
            console.print(found_table(summary))
        raise typer.Exit(0 if summary.clean else 1)

    @recon_app.command("exceptions")
    def recon_exceptions(
        db: DbUrl,
        category: Annotated[
            str | None,
            typer.Option(help=", ".join(c.value for c in ExceptionCategory)),
        ] = None,
        all_: Annotated[bool, typer.Option("--all", help="Resolved ones too.")] = False,
        limit: Annotated[int, typer.Option(min=1, max=LIST_LIMIT_MAX)] = 100,
    ) -> None:
        """Exceptions found by reconciliation, oldest first (open ones unless --all)."""
        reconciler = _reconciler(console, db)
        try:
            items = reconciler.exceptions(None if all_ else "open", category, limit)
        except PaychaosError as exc:
            _fail(console, f"--{exc.field or 'category'}: {exc.message}")
        finally:
            reconciler.db.dispose()
        console.print(exceptions_table(items))

    @recon_app.command("resolve")
    def recon_resolve(
        exception_id: Annotated[str, typer.Argument(help="The exception's id (rcx_...).")],
        reason: Annotated[str, typer.Option("--reason", help="Why: kept with the correction.")],
        db: DbUrl,
    ) -> None:
        """Resolve an exception: its corrective journal (if it moves money) and the reason."""
        reconciler = _reconciler(console, db)
        try:
            item = reconciler.resolve(exception_id, reason)
        except PaychaosError as exc:
            field = "ID" if exc.field == "exception_id" else f"--{exc.field or 'reason'}"
            _fail(console, f"{field}: {exc.message}")
        finally:
            reconciler.db.dispose()
        posted = f"journal {item.journal_id} posted" if item.journal_id else "no journal needed"
        console.print(
            f"{item.id} ({item.category}) resolved: {posted}; reason: {item.resolution_reason}"
        )
