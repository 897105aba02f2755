"""``--report-html``: one self-contained, escaped and deterministic page per report document."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.entrypoints.cli import app
from scenarios.html_report import render_html
from scenarios.outputs import report_document
from scenarios.runner import run_scenario
from scenarios.schema import library_paths, load_scenario

HAPPY_PATH = next(path for path in library_paths() if path.stem == "happy-path")
PLOTS = (
    "Payments by state",
    "Client-visible latency",
    "Faults over time",
    "Unresolved provider attempts",
)
HOSTILE = "<script>alert('pwned')</script>"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    scenario = load_scenario(HAPPY_PATH).model_copy(update={"duration_s": 60.0})
    return report_document([run_scenario(scenario)], wall_time_s=1.0)


def _plot_svgs(page: str) -> list[str]:
    return re.findall(r'<svg [^>]*aria-label="([^"]*)"', page)


def test_the_page_is_self_contained_with_four_plots_and_every_invariant(
    document: dict[str, Any],
) -> None:
    page = render_html(document)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert _plot_svgs(page) == list(PLOTS)
    for invariant in document["runs"][0]["invariants"]:
        assert f'<td class="id">{invariant["id"]}</td>' in page
    assert "PASS" in page and "happy-path" in page


def test_hostile_text_in_violations_and_traces_stays_escaped(document: dict[str, Any]) -> None:
    hostile = copy.deepcopy(document)
    run = hostile["runs"][0]
    run["ok"] = hostile["ok"] = False
    run["description"] = HOSTILE
    run["problems"] = [f"declared fault {HOSTILE} never fired"]
    run["invariants"][0]["ok"] = False
    run["invariants"][0]["violations"] = [{"subject": 'pay_x"><b>', "detail": HOSTILE}]
    run["traces"] = [
        {
            "payment_id": 'pay_x"><b>',
            "engine": [{"t": "2026-01-01T00:00:01+00:00", "from": None, "to": "created",
                        "reason": HOSTILE}],
            "provider": [{"t": 1767225601, "type": HOSTILE, "id": "evt_1"}],
        }
    ]  # fmt: skip
    page = render_html(hostile)
    assert "<script" not in page
    assert 'pay_x"><b>' not in page and "pay_x&quot;&gt;&lt;b&gt;" in page
    assert page.count("&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;") >= 4
    assert "FAIL" in page and "VIOLATED" in page


def test_one_document_gives_one_page(document: dict[str, Any]) -> None:
    page = render_html(document)
    assert render_html(copy.deepcopy(document)) == page
    # As read back from --report-json: keys sorted, tuples as lists.
    assert render_html(json.loads(json.dumps(document, sort_keys=True))) == page


def test_several_runs_get_a_summary_and_a_section_each(document: dict[str, Any]) -> None:
    both = copy.deepcopy(document)
    both["runs"].append(copy.deepcopy(document["runs"][0]))
    page = render_html(both)
    assert "<h2>Summary</h2>" in page
    assert 'id="run-0"' in page and 'id="run-1"' in page
    assert _plot_svgs(page) == list(PLOTS) * 2


def test_a_run_with_nothing_to_plot_still_draws_every_panel() -> None:
    run = {"scenario": "empty", "seed": 1, "ok": True, "duration_s": 10.0, "invariants": []}
    page = render_html({"paychaos_report": 1, "ok": True, "runs": [run], "wall_time_s": 0.0})
    assert _plot_svgs(page) == list(PLOTS)


def test_the_cli_writes_the_html_report(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        app,
        ["run", str(HAPPY_PATH), "--duration", "60s", "--report-html", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "happy-path" in page
    assert _plot_svgs(page) == list(PLOTS)
