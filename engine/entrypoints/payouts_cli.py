"""``paychaos wallets`` and ``paychaos payouts list|create``: sellers' money by hand.

A manual payout is the same two steps as any provider call: the engine reserves
the amount from the seller's available balance and returns the call; this
command makes it through the provider adapter and applies the answer. An answer
that never came leaves the payout ``unknown`` for the recovery worker.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from engine.domain.commands import CreatePayout
from engine.domain.errors import PaychaosError
from engine.entrypoints.worker_cli import LIST_LIMIT_MAX, DbUrl, _engine, _fail
from engine.service.driver import pay_out, pump

PAYOUT_COLUMNS = ("id", "seller_id", "currency", "amount_minor", "status", "provider_payout_id",
                  "failure_code")  # fmt: skip


def payouts_table(payouts: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(payouts)} payouts")
    for column in PAYOUT_COLUMNS:
        table.add_column(column, justify="right" if column == "amount_minor" else "left")
    for payout in payouts:
        table.add_row(*(str(payout[column] or "") for column in PAYOUT_COLUMNS))
    return table


def register(app: typer.Typer, console: Console) -> None:
    payouts_app = typer.Typer(help="Sellers' payouts: list them, or pay one out now.")
    app.add_typer(payouts_app, name="payouts", no_args_is_help=True)

    @app.command("wallets")
    def wallets(db: DbUrl) -> None:
        """Every seller's pending and available balance, per currency."""
        rows = _engine(console, db).wallets()
        table = Table(title=f"{len(rows)} wallets")
        for column in ("seller", "currency", "pending_minor", "available_minor"):
            table.add_column(column, justify="right" if column.endswith("minor") else "left")
        for row in rows:
            table.add_row(row["owner_id"], row["currency"], str(row["pending_minor"]),
                          str(row["available_minor"]))  # fmt: skip
        console.print(table)

    @payouts_app.command("list")
    def payouts_list(
        db: DbUrl,
        seller: Annotated[str | None, typer.Option("--seller")] = None,
        limit: Annotated[int, typer.Option(min=1, max=LIST_LIMIT_MAX)] = LIST_LIMIT_MAX,
    ) -> None:
        console.print(payouts_table(_engine(console, db).payouts(seller, limit)))

    @payouts_app.command("create")
    def payouts_create(
        db: DbUrl,
        psp: Annotated[str, typer.Option("--psp", help="The provider's base URL.")],
        seller: Annotated[str, typer.Option("--seller")],
        currency: Annotated[str, typer.Option("--currency")],
        key: Annotated[str, typer.Option("--key", help="Idempotency key: reuse it to retry.")],
        amount_minor: Annotated[
            int | None, typer.Option("--amount-minor", help="Default: all that is available.")
        ] = None,
        psp_key: Annotated[str, typer.Option(envvar="PAYCHAOS_PSP_KEY")] = "sk_test_paychaos",
    ) -> None:
        """Pay a seller's available balance (or part of it) out now."""
        from engine.adapters.psp_http import HttpProvider

        engine = _engine(console, db)
        if amount_minor is None:
            wanted = (seller, currency.upper())
            found = [w for w in engine.wallets() if (w["owner_id"], w["currency"]) == wanted]
            amount_minor = int(found[0]["available_minor"]) if found else 0
        try:
            begun = engine.begin_payout(CreatePayout(seller, key, currency, amount_minor))
        except PaychaosError as exc:
            _fail(console, f"{exc.field or 'payout'}: {exc.message} ({exc.code})")
        if begun.call is not None:
            provider = HttpProvider(psp, psp_key)
            try:
                begun = pump(pay_out(engine, begun), provider)
            finally:
                provider.close()
        console.print(payouts_table([begun.payout]))
