"""What a run writes: the JSON report, JUnit XML, the trace, and the terminal summary.

Everything but ``wall_time_s`` is a function of the scenario and the seed, so
two runs of one scenario and seed write byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from rich.table import Table

from scenarios.runner import FAILED, INCONCLUSIVE, RunResult, worst_status

REPORT_VERSION = 1


def report_document(results: list[RunResult], wall_time_s: float) -> dict[str, Any]:
    return {
        "paychaos_report": REPORT_VERSION,
        "ok": all(result.ok for result in results),
        "status": worst_status([result.status for result in results]),
        "runs": [result.report for result in results],
        "wall_time_s": round(wall_time_s, 3),
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def write_trace(path: Path, results: list[RunResult]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for result in results:
            for event in result.trace:
                record = {"scenario": result.scenario.name, "seed": result.seed, **event}
                out.write(json.dumps(record, sort_keys=True) + "\n")


def write_junit(path: Path, results: list[RunResult]) -> None:
    """One suite per run: a case per invariant and one for the expectations. That one
    fails on an unmet expectation, and is skipped, with the reason, when the run is
    inconclusive (a declared fault never fired: not a failure)."""
    suites = ET.Element("testsuites", name="paychaos")
    for result in results:
        name = f"{result.scenario.name}[seed={result.seed}]"
        cases = [(inv.id + " " + inv.name, inv) for inv in result.invariants if inv.applicable]
        failures = sum(1 for _, inv in cases if not inv.ok) + (1 if result.problems else 0)
        skipped = 1 if result.unfired and not result.problems else 0
        suite = ET.SubElement(
            suites, "testsuite", name=name, tests=str(len(cases) + 1),
            failures=str(failures), skipped=str(skipped),
        )  # fmt: skip
        for case_name, inv in cases:
            case = ET.SubElement(suite, "testcase", classname=name, name=case_name)
            if not inv.ok:
                text = "\n".join(f"{v['subject']}: {v['detail']}" for v in inv.violations[:50])
                failure = ET.SubElement(
                    case, "failure", message=f"{len(inv.violations)} violation(s)"
                )
                failure.text = text
        case = ET.SubElement(suite, "testcase", classname=name, name="expectations")
        if result.problems:
            failure = ET.SubElement(case, "failure", message="; ".join(result.problems)[:500])
            failure.text = "\n".join(result.problems + result.inconclusive)
        elif skipped:
            reason = "inconclusive: " + "; ".join(result.inconclusive)
            ET.SubElement(case, "skipped", message=reason[:500]).text = reason
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def summary_table(result: RunResult) -> Table:
    report = result.report
    verdict = {
        FAILED: "[red]FAILED[/]",
        INCONCLUSIVE: "[yellow]INCONCLUSIVE[/]: all invariants hold, a declared fault never fired",
    }.get(result.status, "[green]all invariants hold[/]")
    title = f"{result.scenario.name} (seed {result.seed}): {report['payments']} payments, {verdict}"
    table = Table(title=title, title_justify="left")
    for column in ("invariant", "checked", "result", "violations"):
        table.add_column(column, justify="right" if column == "checked" else "left")
    for inv in result.invariants:
        if not inv.applicable:
            verdict = "not checked" if inv.reason else "not applicable yet"
            table.add_row(f"{inv.id} {inv.name}", "-", f"[dim]{verdict}[/]", inv.reason)
            continue
        examples = "; ".join(f"{v['subject']}: {v['detail']}" for v in inv.violations[:3])
        if len(inv.violations) > 3:
            examples += f"; and {len(inv.violations) - 3} more"
        verdict = "[green]holds[/]" if inv.ok else "[red]VIOLATED[/]"
        table.add_row(f"{inv.id} {inv.name}", str(inv.checked), verdict, examples)
    return table


def coverage_table(result: RunResult) -> Table:
    report = result.report
    table = Table(title="faults fired and paths reached", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    declared = set(report["faults_declared"])
    for kind, count in report["faults_fired"].items():
        marker = "" if kind in declared else " [dim](not declared)[/]"
        table.add_row(f"fault {kind}{marker}", str(count))
    for kind in sorted(declared - set(report["faults_fired"])):
        table.add_row(f"[yellow]fault {kind} declared, never fired (inconclusive)[/]", "0")
    for path, count in report["coverage"].items():
        table.add_row(path, str(count))
    return table
