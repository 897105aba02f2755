"""Rich tables for payments, ledgers and audits."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from engine.audit import CheckResult
from engine.domain.money import Money
from engine.service.views import PaymentView


def history_table(payment: PaymentView) -> Table:
    table = Table(title=f"payment {payment.id} history", title_justify="left")
    for column in ("seq", "at", "from", "to", "reason", "amount"):
        table.add_column(column, justify="right" if column in {"seq", "amount"} else "left")
    currency = payment["currency"]
    for item in payment.history:
        amount = item["amount_minor"]
        table.add_row(
            str(item["seq"]),
            item["at"],
            item["from_state"] or "-",
            item["to_state"],
            item["reason"],
            Money(amount, currency).format() if amount is not None else "",
        )
    return table


def ledger_table(journals: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> Table:
    table = Table(title="ledger journals", title_justify="left")
    for column in ("journal", "kind", "account", "debit", "credit"):
        table.add_column(column, justify="right" if column in {"debit", "credit"} else "left")
    for journal, entries in journals:
        for index, entry in enumerate(entries):
            money = Money(entry["amount_minor"], entry["currency"]).format()
            table.add_row(
                journal["id"] if index == 0 else "",
                journal["kind"] if index == 0 else "",
                entry["account"],
                money if entry["side"] == "D" else "",
                money if entry["side"] == "C" else "",
                end_section=index == len(entries) - 1,
            )
    return table


def audit_table(results: list[CheckResult]) -> Table:
    table = Table(title="audit", title_justify="left")
    for column in ("invariant", "check", "checked", "result", "violations"):
        table.add_column(column, justify="right" if column == "checked" else "left")
    for result in results:
        examples = "; ".join(f"{subject}: {detail}" for subject, detail in result.violations[:5])
        more = len(result.violations) - 5
        if more > 0:
            examples += f"; and {more} more"
        table.add_row(
            result.invariant,
            result.name,
            str(result.checked),
            "[green]holds[/]" if result.ok else "[red]VIOLATED[/]",
            examples,
        )
    return table
