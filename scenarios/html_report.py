"""``--report-html``: one self-contained page that a person reads at a glance.

``render_html(document)`` takes the document of ``scenarios.outputs.report_document``
and returns a whole HTML page: inline CSS and SVG drawn here, no JavaScript, no
external stylesheet, font, image or link, so it opens offline and can be kept as
a CI artifact. The page is a pure function of the document: no clock, fixed
float formatting and a fixed order everywhere, so one document gives one string.

Per run: a verdict banner, key figures, the problems, the invariant table with
its violations, four plots over simulated time (payments by state, client
latency, faults, unresolved provider attempts), the coverage, and the traces of
the violating payments. Several runs get a summary table on top.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from scenarios.world import EPOCH_S

VIOLATIONS_INLINE = 4  # shown in the invariant table; the rest behind "and N more"
VIOLATIONS_MAX = 200  # per invariant on the page; the JSON report has them all
TRACE_ROWS_MAX = 200  # per traced payment

# Lifecycle order, for the legend; the stack is drawn in STATE_STACK order
# (settled outcomes at the bottom, payments still in flight on top).
STATE_COLORS = {
    "created": "#c3cad4",
    "requires_action": "#f2b84b",
    "processing": "#e8793a",
    "authorized": "#86bdf0",
    "partially_captured": "#3b8fd9",
    "captured": "#2a9d6e",
    "settled": "#1b6647",
    "partially_refunded": "#bba3e6",
    "refunded": "#7c56c2",
    "disputed": "#c2185b",
    "canceled": "#8c929b",
    "failed": "#d64545",
}
STATE_STACK = (
    "failed", "canceled", "refunded", "partially_refunded", "disputed", "settled",
    "captured", "partially_captured", "authorized", "processing", "requires_action", "created",
)  # fmt: skip
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f", "#17becf", "#bcbd22", "#1f3f77", "#8c564b", "#2ca02c",
    "#d62728", "#9467bd", "#7f7f7f", "#e377c2", "#aec7e8", "#ffbb78",
)  # fmt: skip
NICE_TIME_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                     21600, 43200, 86400)  # fmt: skip


def render_html(document: dict[str, Any]) -> str:
    runs: list[dict[str, Any]] = list(document.get("runs", []))
    fault_colors = _fault_colors(runs)
    failed = sum(1 for run in runs if _status(run) == "failed")
    verdict = _document_status(document, runs).upper()
    title = f"paychaos report: {verdict}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}: {_e(', '.join(str(r.get('scenario')) for r in runs))}</title>",
        f"<style>{CSS}</style></head><body><main>",
        _page_header(document, runs, failed),
    ]
    if len(runs) > 1:
        parts.append(_summary(runs))
    parts += [_run_section(i, run, fault_colors) for i, run in enumerate(runs)]
    parts.append(
        f"<footer>paychaos report format {_e(document.get('paychaos_report'))} · "
        f"{len(runs)} run(s) · wall time {_num(document.get('wall_time_s'), 1)} s · "
        "every number here is a function of the scenario and its seed, except the wall time"
        "</footer></main></body></html>"
    )
    return "\n".join(parts) + "\n"


# -- page, summary and banner ---------------------------------------------------------


def _page_header(document: dict[str, Any], runs: list[dict[str, Any]], failed: int) -> str:
    status = _document_status(document, runs)
    inconclusive = sum(1 for run in runs if _status(run) == "inconclusive")
    passed = len(runs) - failed - inconclusive
    if len(runs) == 1:
        text = {
            "passed": "the run passed: every invariant holds",
            "inconclusive": "the run is inconclusive: every invariant holds, "
            "but a declared fault never fired",
        }.get(status, "the run failed")
    elif status == "passed":
        text = f"all {len(runs)} runs passed: every invariant holds"
    else:
        text = f"{passed} of {len(runs)} runs passed, {inconclusive} inconclusive, {failed} failed"
    return (
        f'<header class="page {STATUS_CLASS[status]}"><h1>paychaos report</h1>'
        f'<p class="headline">{_e(text)}</p></header>'
    )


def _summary(runs: list[dict[str, Any]]) -> str:
    rows = []
    for i, run in enumerate(runs):
        violated = [inv["id"] for inv in run.get("invariants", []) if not inv.get("ok", True)]
        rows.append(
            f"<tr><td>{_status_badge(_status(run))}</td>"
            f'<td><a href="#run-{i}">{_e(run.get("scenario"))}</a></td>'
            f'<td class="n">{_e(run.get("seed"))}</td>'
            f'<td class="n">{_int(run.get("payments"))}</td>'
            f'<td class="n">{_e(_duration(run.get("duration_s")))}</td>'
            f"<td>{_e(', '.join(violated)) or '<span class=muted>none</span>'}</td>"
            f'<td class="n">{len(run.get("problems", []))}</td>'
            f'<td class="n">{_fired_ratio(run)}</td></tr>'
        )
    head = (
        "<th>verdict</th><th>scenario</th><th class=n>seed</th><th class=n>payments</th>"
        "<th class=n>simulated</th><th>violated</th><th class=n>problems</th>"
        "<th class=n>declared faults fired</th>"
    )
    return (
        '<section class="card"><h2>Summary</h2><table class="grid">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _fired_ratio(run: dict[str, Any]) -> str:
    declared = run.get("faults_declared", [])
    fired = run.get("faults_fired", {})
    if not declared:
        return '<span class="muted">none declared</span>'
    hit = sum(1 for kind in declared if fired.get(kind))
    return f"{hit} of {len(declared)} kinds"


def _run_section(index: int, run: dict[str, Any], fault_colors: dict[str, str]) -> str:
    anchor = f"run-{index}"
    return "\n".join(
        [
            f'<section class="run" id="{anchor}">',
            _banner(run),
            _figures(run),
            _problems(run),
            _invariants(run, anchor),
            _plots(run, fault_colors),
            _coverage(run),
            _traces(run, anchor),
            "</section>",
        ]
    )


def _banner(run: dict[str, Any]) -> str:
    status = _status(run)
    violated = [inv for inv in run.get("invariants", []) if not inv.get("ok", True)]
    if status == "passed" and run.get("faults_declared"):
        why = "every invariant holds and every declared fault fired"
    elif status == "passed":
        why = "every invariant holds (no faults declared: a baseline run)"
    elif status == "inconclusive":
        unfired = ", ".join(run.get("faults_unfired", []))
        why = f"every invariant holds, but declared faults never fired ({unfired}): "
        why += "this run proves nothing about them"
    else:
        reasons = [f"{inv['id']} {inv['name']} violated" for inv in violated]
        if run.get("problems"):
            reasons.append(f"{len(run['problems'])} expectation(s) not met")
        why = "; ".join(reasons)
    facts = [
        ("seed", _e(run.get("seed"))),
        ("payments", _int(run.get("payments"))),
        ("simulated", _e(_duration(run.get("duration_s")))),
        ("quiet at", _e(_duration(run.get("quiescent_at_s")))),
    ]
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    return (
        f'<div class="banner {STATUS_CLASS[status]}">'
        f'<div class="verdict">{STATUS_VERDICT[status]}</div>'
        f'<div class="what"><h2>{_e(run.get("scenario"))}</h2>'
        f'<p class="desc">{_e(run.get("description", ""))}</p>'
        f'<p class="why">{_e(why)}</p></div><dl class="facts">{dl}</dl></div>'
    )


def _figures(run: dict[str, Any]) -> str:
    latency = run.get("client_latency", {})
    fired = run.get("faults_fired", {})
    declared = run.get("faults_declared", [])
    fired_kinds = sum(1 for kind in declared if fired.get(kind))
    violations = sum(len(inv.get("violations", [])) for inv in run.get("invariants", []))
    unresolved_max = max((s.get("unresolved", 0) for s in run.get("samples", [])), default=0)
    figures = [
        ("client requests", _int(latency.get("count")), False),
        ("latency p50", _e(_latency(latency.get("p50_s"))), False),
        ("latency p95", _e(_latency(latency.get("p95_s"))), False),
        ("latency p99", _e(_latency(latency.get("p99_s"))), False),
        (
            "declared fault kinds fired" if declared else "no faults declared",
            f"{fired_kinds} of {len(declared)}" if declared else "-",
            fired_kinds < len(declared),
        ),
        ("peak unresolved attempts", _int(unresolved_max), False),
        ("violations", _int(violations), violations > 0),
    ]
    cells = "".join(
        f'<div class="fig{" alarm" if alarm else ""}">'
        f'<div class="v">{value}</div><div class="k">{name}</div></div>'
        for name, value, alarm in figures
    )
    return f'<div class="figures">{cells}</div>'


def _problems(run: dict[str, Any]) -> str:
    boxes = [
        ("Expectations not met (each one fails the run)", run.get("problems", [])),
        ("Declared faults that never fired (the run is inconclusive)", run.get("inconclusive", [])),
    ]
    return "".join(
        f'<div class="problems"><h3>{title}</h3>'
        f"<ul>{''.join(f'<li>{_e(p)}</li>' for p in items)}</ul></div>"
        for title, items in boxes
        if items
    )


# -- invariants -------------------------------------------------------------------------


def _invariants(run: dict[str, Any], anchor: str) -> str:
    traced = {trace.get("payment_id") for trace in run.get("traces", [])}
    any_violation = any(inv.get("violations") for inv in run.get("invariants", []))
    rows = []
    for inv in run.get("invariants", []):
        applicable = inv.get("applicable", True)
        violations = inv.get("violations", [])
        if not applicable:
            result = '<span class="pill na">not applicable yet</span>'
        else:
            result = _badge(bool(inv.get("ok", not violations)), "holds", "VIOLATED")
        rows.append(
            f'<tr class="{"" if applicable else "na"}{" bad" if violations else ""}">'
            f'<td class="id">{_e(inv.get("id"))}</td>'
            f'<td><b>{_e(inv.get("name"))}</b> <span class="muted">'
            f"{_e(inv.get('description', ''))}</span></td>"
            f'<td class="n">{_int(inv.get("checked")) if applicable else "-"}</td>'
            f"<td>{result}</td>"
            + (f"<td>{_violations(violations, traced, anchor)}</td>" if any_violation else "")
            + "</tr>"
        )
    head = "<th>id</th><th>invariant</th><th class=n>checked</th><th>result</th>"
    head += "<th>violations</th>" if any_violation else ""
    return (
        f'<section class="card"><h3>Invariants</h3><table class="grid inv'
        f'{" viols" if any_violation else ""}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _violations(violations: list[dict[str, Any]], traced: set[Any], anchor: str) -> str:
    if not violations:
        return ""

    def item(v: dict[str, Any]) -> str:
        subject = str(v.get("subject", ""))
        label = _e(subject)
        if subject in traced:
            label = f'<a href="#{_e(anchor)}-{_e(subject)}">{label}</a>'
        return f"<li><code>{label}</code> {_e(v.get('detail', ''))}</li>"

    shown = violations[:VIOLATIONS_MAX]
    html = f'<ul class="viol">{"".join(item(v) for v in shown[:VIOLATIONS_INLINE])}</ul>'
    rest = shown[VIOLATIONS_INLINE:]
    if rest:
        hidden = len(violations) - len(shown)
        more = f"<li class=muted>{hidden} more in the JSON report</li>" if hidden else ""
        html += (
            f"<details><summary>and {len(violations) - VIOLATIONS_INLINE} more</summary>"
            f'<ul class="viol">{"".join(item(v) for v in rest)}{more}</ul></details>'
        )
    return html


# -- plots --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Frame:
    """Maps data to SVG coordinates inside a plot's margins."""

    x_max: float
    y_max: float
    width: float = 620.0
    height: float = 250.0
    left: float = 50.0
    right: float = 22.0
    top: float = 26.0
    bottom: float = 34.0

    def x(self, value: float) -> float:
        return self.left + value / self.x_max * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        return self.top + (1.0 - value / self.y_max) * (self.height - self.top - self.bottom)

    @property
    def x_end(self) -> float:
        return self.width - self.right

    @property
    def y_base(self) -> float:
        return self.height - self.bottom


def _plots(run: dict[str, Any], fault_colors: dict[str, str]) -> str:
    samples = sorted(run.get("samples", []), key=lambda s: s.get("t", 0))
    duration_s = float(run.get("duration_s") or 0.0)
    t_end = max([duration_s, *(float(s.get("t", 0)) for s in samples)]) or 1.0
    plots = [
        _plot_states(samples, t_end, duration_s),
        _plot_latency(run),
        _plot_faults(run, t_end, duration_s, fault_colors),
        _plot_unresolved(samples, t_end, duration_s),
    ]
    return f'<div class="plots">{"".join(plots)}</div>'


def _panel(title: str, note: str, svg: str, legend: str = "") -> str:
    return (
        f'<figure class="card plot"><figcaption><h3>{_e(title)}</h3>'
        f'<span class="muted">{_e(note)}</span></figcaption>{svg}{legend}</figure>'
    )


def _svg(frame: _Frame, label: str, body: Iterable[str]) -> str:
    return (
        f'<svg viewBox="0 0 {frame.width:.0f} {frame.height:.0f}" role="img" '
        f'aria-label="{_e(label)}">{"".join(body)}</svg>'
    )


def _time_axes(frame: _Frame, duration_s: float, y_label: str) -> tuple[list[str], list[str]]:
    """Grid and axes (behind the data), and the 'faults off' line (in front of it)."""
    out = _y_grid(frame, y_label)
    front: list[str] = []
    for tick in _time_ticks(frame.x_max):
        x = frame.x(tick)
        anchor = "end" if x > frame.x_end - 12 else "middle"
        out.append(
            f'<line class="tick" x1="{x:.1f}" y1="{frame.y_base:.1f}" x2="{x:.1f}" '
            f'y2="{frame.y_base + 4:.1f}"/><text class="ax" x="{x:.1f}" '
            f'y="{frame.y_base + 16:.1f}" text-anchor="{anchor}">{_e(_duration(tick))}</text>'
        )
    out.append(
        f'<text class="ax" x="{frame.x_end:.1f}" y="{frame.height - 3:.1f}" '
        'text-anchor="end">simulated time</text>'
    )
    if 0 < duration_s < frame.x_max:
        x = frame.x(duration_s)
        out.insert(
            0,
            f'<rect class="quiet" x="{x:.1f}" y="{frame.top:.1f}" '
            f'width="{frame.x_end - x:.1f}" height="{frame.y_base - frame.top:.1f}">'
            "<title>quiescence: faults off, workers run until nothing changes</title></rect>",
        )
        front.append(
            f'<line class="off" x1="{x:.1f}" y1="{frame.top - 4:.1f}" x2="{x:.1f}" '
            f'y2="{frame.y_base:.1f}"/><text class="ax" x="{x + 4:.1f}" '
            f'y="{frame.top - 6:.1f}">faults off, quiescence</text>'
        )
    return out, front


def _y_grid(frame: _Frame, y_label: str) -> list[str]:
    out = []
    for tick in _nice_ticks(frame.y_max):
        y = frame.y(tick)
        out.append(
            f'<line class="grid" x1="{frame.left:.1f}" y1="{y:.1f}" x2="{frame.x_end:.1f}" '
            f'y2="{y:.1f}"/><text class="ax" x="{frame.left - 6:.1f}" y="{y + 3.5:.1f}" '
            f'text-anchor="end">{_e(_short_int(tick))}</text>'
        )
    out.append(
        f'<line class="axis" x1="{frame.left:.1f}" y1="{frame.y_base:.1f}" '
        f'x2="{frame.x_end:.1f}" y2="{frame.y_base:.1f}"/>'
        f'<text class="ax" x="{frame.left - 44:.1f}" y="{frame.top - 10:.1f}">'
        f"{_e(y_label)}</text>"
    )
    return out


def _plot_states(samples: list[dict[str, Any]], t_end: float, duration_s: float) -> str:
    title = "Payments by state"
    seen = {state for s in samples for state in s.get("by_state", {})}
    states = [s for s in STATE_STACK if s in seen] + sorted(seen - set(STATE_STACK))
    totals = [sum(s.get("by_state", {}).values()) for s in samples]
    if not states:
        return _panel(title, "no samples", _empty(title, t_end, duration_s, "no samples"))
    frame = _Frame(t_end, _nice_max(max(totals)))
    body, front = _time_axes(frame, duration_s, "payments")
    base = [0.0] * len(samples)
    xs = [frame.x(float(s.get("t", 0))) for s in samples]
    for state in states:
        top = [b + s.get("by_state", {}).get(state, 0) for b, s in zip(base, samples, strict=True)]
        upper = " ".join(f"{x:.1f},{frame.y(v):.1f}" for x, v in zip(xs, top, strict=True))
        lower = " ".join(
            f"{x:.1f},{frame.y(v):.1f}" for x, v in reversed(list(zip(xs, base, strict=True)))
        )
        final = samples[-1].get("by_state", {}).get(state, 0)
        body.append(
            f'<polygon points="{upper} {lower}" fill="{_state_color(state)}">'
            f"<title>{_e(state)}: {final} at the end</title></polygon>"
        )
        base = top
    body += front
    final_by_state = samples[-1].get("by_state", {})
    legend = _legend((_state_color(s), f"{s} {final_by_state.get(s, 0)}") for s in reversed(states))
    note = f"{len(samples)} samples, stacked; legend: count at the end"
    return _panel(title, note, _svg(frame, title, body), legend)


def _plot_unresolved(samples: list[dict[str, Any]], t_end: float, duration_s: float) -> str:
    title = "Unresolved provider attempts"
    if not samples:
        return _panel(title, "no samples", _empty(title, t_end, duration_s, "no samples"))
    values = [int(s.get("unresolved", 0)) for s in samples]
    frame = _Frame(t_end, _nice_max(max(values)))
    body, front = _time_axes(frame, duration_s, "attempts")
    points = [
        (frame.x(float(s.get("t", 0))), frame.y(v)) for s, v in zip(samples, values, strict=True)
    ]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    area = f"{points[0][0]:.1f},{frame.y_base:.1f} {line} {points[-1][0]:.1f},{frame.y_base:.1f}"
    body.append(f'<polygon class="unres-area" points="{area}"/>')
    body.append(f'<polyline class="unres" points="{line}"/>')
    body += front
    note = (
        f"pending or unknown at the provider; peak {max(values)}, "
        f"{values[-1]} at the end (must be 0)"
    )
    return _panel(title, note, _svg(frame, title, body))


def _plot_faults(
    run: dict[str, Any], t_end: float, duration_s: float, colors: dict[str, str]
) -> str:
    title = "Faults over time"
    per_slice: dict[float, dict[str, int]] = defaultdict(dict)
    for row in run.get("faults_over_time", []):
        per_slice[float(row["t"])][str(row["kind"])] = int(row["count"])
    if not per_slice:
        message = "no fault fired in this run"
        return _panel(title, "no fault fired", _empty(title, t_end, duration_s, message))
    kinds = sorted({kind for counts in per_slice.values() for kind in counts})
    slice_s = max(float(run.get("duration_s") or 0.0) / 100.0, 1.0)  # as the runner slices
    frame = _Frame(t_end, _nice_max(max(sum(c.values()) for c in per_slice.values())))
    body, front = _time_axes(frame, duration_s, "faults")
    width = max(frame.x(slice_s) - frame.x(0) - (1.0 if slice_s * 100 >= t_end else 0.0), 0.8)
    for t, counts in sorted(per_slice.items()):
        base = 0
        for kind in kinds:
            count = counts.get(kind, 0)
            if not count:
                continue
            y_top = frame.y(base + count)
            body.append(
                f'<rect x="{frame.x(t):.1f}" y="{y_top:.1f}" width="{width:.1f}" '
                f'height="{frame.y(base) - y_top:.2f}" fill="{colors.get(kind, "#888")}">'
                f"<title>{_e(kind)}: {count} at {_e(_duration(t))}</title></rect>"
            )
            base += count
    body += front
    totals = {k: sum(c.get(k, 0) for c in per_slice.values()) for k in kinds}
    legend = _legend((colors.get(k, "#888"), f"{k} {totals[k]}") for k in kinds)
    note = f"stacked per kind, per {_duration(slice_s)}"
    return _panel(title, note, _svg(frame, title, body), legend)


def _plot_latency(run: dict[str, Any]) -> str:
    title = "Client-visible latency"
    buckets = run.get("client_latency_histogram", [])
    latency = run.get("client_latency", {})
    if not buckets or not sum(int(b.get("count", 0)) for b in buckets):
        return _panel(title, "no client requests", _empty(title, 0.0, 0.0, "no requests"))
    frame = _Frame(float(len(buckets)), _nice_max(max(int(b["count"]) for b in buckets)),
                   bottom=40.0)  # fmt: skip
    body = _y_grid(frame, "requests")
    bounds = [b.get("le_s") for b in buckets]
    for i, bucket in enumerate(buckets):
        count = int(bucket.get("count", 0))
        x0, x1, y = frame.x(i) + 2, frame.x(i + 1) - 2, frame.y(count)
        label = _bucket_label(bounds, i)
        body.append(
            f'<rect class="bar" x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" '
            f'height="{frame.y_base - y:.1f}"><title>{_e(label)}: {count}</title></rect>'
            f'<text class="ax" x="{(x0 + x1) / 2:.1f}" y="{frame.y_base + 14:.1f}" '
            f'text-anchor="middle">{_e(label)}</text>'
        )
    for row, name in enumerate(("p50", "p95", "p99")):
        value = latency.get(f"{name}_s")
        if value is None:
            continue
        x = frame.x(_bucket_position(bounds, float(value)))
        body.append(
            f'<line class="pct" x1="{x:.1f}" y1="{frame.top + row * 13 - 2:.1f}" x2="{x:.1f}" '
            f'y2="{frame.y_base:.1f}"/><text class="pct" x="{x + 3:.1f}" '
            f'y="{frame.top + row * 13 + 7:.1f}">{name} {_e(_latency(value))}</text>'
        )
    body.append(
        f'<text class="ax" x="{frame.x_end:.1f}" y="{frame.height - 3:.1f}" '
        'text-anchor="end">latency, upper bound of each bucket</text>'
    )
    note = f"{_int(latency.get('count', 0))} requests, from first send to final answer"
    return _panel(title, note, _svg(frame, title, body))


def _bucket_label(bounds: list[Any], index: int) -> str:
    """A short label: the bucket's upper bound, or ``>`` the last bound for the open one."""
    bound = bounds[index]
    if bound is None:
        return f">{_latency(bounds[index - 1])}".replace(" ", "") if index else "all"
    return _latency(bound).replace(" ", "")


def _bucket_position(bounds: list[Any], value_s: float) -> float:
    """Where a latency falls on the bucket axis: log-interpolated inside its bucket."""
    for i, high in enumerate(bounds):
        if high is None or value_s <= high:
            low = bounds[i - 1] if i else None
            if high is None:  # the open bucket: place it in the middle
                return i + 0.5
            low_s = float(low) if low else float(high) / 2.5
            if value_s <= low_s:
                return float(i)
            return i + math.log(value_s / low_s) / math.log(float(high) / low_s)
    return float(len(bounds))


def _legend(items: Iterable[tuple[str, str]]) -> str:
    spans = "".join(
        f'<span><i style="background:{color}"></i>{_e(label)}</span>' for color, label in items
    )
    return f'<div class="legend">{spans}</div>'


def _empty(title: str, t_end: float, duration_s: float, message: str) -> str:
    """An empty chart, axes included, so that every panel reads the same way."""
    frame = _Frame(t_end or 1.0, 1.0)
    body, front = _time_axes(frame, duration_s, "") if t_end else (_y_grid(frame, ""), [])
    body.append(
        f'<text class="empty" x="{(frame.left + frame.x_end) / 2:.1f}" '
        f'y="{(frame.top + frame.y_base) / 2:.1f}" text-anchor="middle">{_e(message)}</text>'
    )
    return _svg(frame, title, body + front)


# -- coverage and traces ------------------------------------------------------------


def _coverage(run: dict[str, Any]) -> str:
    declared = set(run.get("faults_declared", []))
    fired: dict[str, int] = run.get("faults_fired", {})
    rows = []
    for kind in sorted(declared | set(fired)):
        count = int(fired.get(kind, 0))
        if kind in declared and not count:
            status = '<span class="pill warn">declared, never fired</span>'
        elif kind in declared:
            status = '<span class="pill ok">declared, fired</span>'
        else:
            status = '<span class="pill na">not declared</span>'
        rows.append(
            f'<tr class="{"bad" if kind in declared and not count else ""}">'
            f"<td><code>{_e(kind)}</code></td><td>{status}</td>"
            f'<td class="n">{_int(count)}</td></tr>'
        )
    faults = (
        "<table class='grid'><thead><tr><th>fault</th><th>status</th><th class=n>fired</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">no fault declared and none fired</p>'
    )
    paths = run.get("coverage", {})
    path_rows = "".join(
        f'<div class="path{" zero" if not count else ""}"><span>{_e(path)}</span>'
        f"<b>{_int(count)}</b></div>"
        for path, count in sorted(paths.items())
    )
    return (
        '<section class="card coverage"><h3>Coverage</h3><div class="cov">'
        f"<div><h4>Faults fired vs declared</h4>{faults}</div><div><h4>Paths reached "
        f'({len(paths)})</h4><div class="paths">{path_rows or "none"}</div></div></div>'
        "</section>"
    )


def _traces(run: dict[str, Any], anchor: str) -> str:
    traces = run.get("traces", [])
    if not traces:
        return ""
    said: dict[str, list[str]] = defaultdict(list)
    for inv in run.get("invariants", []):
        for v in inv.get("violations", []):
            said[str(v.get("subject"))].append(f"{inv.get('id')}: {v.get('detail', '')}")
    cards = [_trace(trace, said, anchor) for trace in traces]
    return (
        '<section class="card"><h3>Traces of violating payments</h3><p class="muted">'
        "The engine's history next to the provider's events, in simulated seconds "
        "(the provider stamps its events in whole seconds).</p>"
        f"{''.join(cards)}</section>"
    )


def _trace(trace: dict[str, Any], said: dict[str, list[str]], anchor: str) -> str:
    payment_id = str(trace.get("payment_id", ""))
    engine = "".join(
        f'<tr><td class="n">{_sim_t(step.get("t")):,.3f} s</td>'
        f"<td><code>{_e(step.get('from') or '-')} → {_e(step.get('to'))}</code></td>"
        f"<td class='muted'>{_e(step.get('reason', ''))}</td></tr>"
        for step in trace.get("engine", [])[:TRACE_ROWS_MAX]
    )
    provider = "".join(
        f'<tr><td class="n">{_sim_t(event.get("t")):,.0f} s</td>'
        f"<td><code>{_e(event.get('type'))}</code></td>"
        f"<td class='muted'><code>{_e(event.get('id', ''))}</code></td></tr>"
        for event in trace.get("provider", [])[:TRACE_ROWS_MAX]
    )
    empty = '<tr><td colspan="3" class="muted">none</td></tr>'
    notes = "".join(f"<li>{_e(text)}</li>" for text in said.get(payment_id, []))
    return (
        f'<div class="trace" id="{_e(anchor)}-{_e(payment_id)}"><h4><code>{_e(payment_id)}'
        f'</code></h4><ul class="viol">{notes}</ul><div class="sides">'
        '<table class="grid trace-t"><thead><tr><th>t</th><th>engine history</th>'
        f"<th>reason</th></tr></thead><tbody>{engine or empty}</tbody></table>"
        '<table class="grid trace-t"><thead><tr><th>t</th><th>provider events</th>'
        f"<th>event id</th></tr></thead><tbody>{provider or empty}</tbody></table></div></div>"
    )


def _sim_t(value: Any) -> float:
    """Simulated seconds from an ISO timestamp (engine) or epoch seconds (provider)."""
    if isinstance(value, int | float):
        return float(value) - EPOCH_S
    try:
        return datetime.fromisoformat(str(value)).timestamp() - EPOCH_S
    except ValueError:
        return 0.0


# -- small helpers --------------------------------------------------------------------


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


STATUS_CLASS = {"passed": "ok", "inconclusive": "warn", "failed": "bad"}
STATUS_VERDICT = {"passed": "PASS", "inconclusive": "INCONCLUSIVE", "failed": "FAIL"}


def _status(run: dict[str, Any]) -> str:
    """A run's verdict; reports written before ``status`` existed only say ``ok``. A
    violated invariant, or ``ok`` false beside ``passed``, fails it whatever it says."""
    status = run.get("status")
    violated = any(not inv.get("ok", True) for inv in run.get("invariants", []))
    if violated or (status == "passed" and run.get("ok") is False):
        return "failed"
    if status in STATUS_CLASS:
        return str(status)
    return "passed" if run.get("ok") else "failed"


def _document_status(document: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """The worst of the runs' verdicts and the document's own."""
    own = _status({"ok": True, **document})
    statuses = {own, *(_status(run) for run in runs)}
    return next(s for s in ("failed", "inconclusive", "passed") if s in statuses)


def _status_badge(status: str) -> str:
    return f'<span class="pill {STATUS_CLASS[status]}">{STATUS_VERDICT[status]}</span>'


def _badge(ok: bool, yes: str = "PASS", no: str = "FAIL") -> str:
    return f'<span class="pill {"ok" if ok else "bad"}">{yes if ok else no}</span>'


def _int(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) else "-"


def _num(value: Any, digits: int) -> str:
    return f"{float(value):,.{digits}f}" if isinstance(value, int | float) else "-"


def _short_int(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _latency(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if value < 1.0:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s" if value < 60 else f"{value / 60:.3g} min"


def _duration(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    seconds = float(value)
    if seconds < 60 or seconds % 60:
        return f"{seconds:g} s" if seconds < 600 else f"{seconds / 60:.1f} min"
    if seconds < 3600 or seconds % 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def _nice_max(value: float, steps: tuple[float, ...] = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8)) -> float:
    """The smallest round number at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in steps:
        if value <= step * exponent:
            return float(step * exponent)
    return float(10 * exponent)


def _nice_ticks(y_max: float) -> list[float]:
    step = _nice_max(y_max / 5.0, (1, 2, 2.5, 5)) if y_max > 5 else 1.0
    count = min(int(y_max / step + 1e-9), 20)
    return [i * step for i in range(count + 1)]


def _time_ticks(t_max: float) -> list[float]:
    step = next((s for s in NICE_TIME_STEPS_S if t_max / s <= 8), NICE_TIME_STEPS_S[-1])
    return [float(i * step) for i in range(int(t_max // step) + 1)][:50]


def _state_color(state: str) -> str:
    return STATE_COLORS.get(state) or PALETTE[sum(map(ord, state)) % len(PALETTE)]


def _fault_colors(runs: list[dict[str, Any]]) -> dict[str, str]:
    """One color per fault kind across the whole page, so runs compare by eye."""
    kinds = sorted(
        {str(row["kind"]) for run in runs for row in run.get("faults_over_time", [])}
        | {kind for run in runs for kind in run.get("faults_fired", {})}
    )
    return {kind: PALETTE[i % len(PALETTE)] for i, kind in enumerate(kinds)}


CSS = """
:root{--ok:#1a7f37;--ok-bg:#e9f7ee;--bad:#c62828;--bad-bg:#fdecec;--warn:#9a6700;
--warn-bg:#fff6dd;--ink:#1f2328;--muted:#636c76;--line:#d8dee4;--card:#fff;--bg:#f4f6f8}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1360px;margin:0 auto;padding:20px 24px 40px}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
h1,h2,h3,h4{margin:0}
h3{font-size:16px;margin-bottom:8px}
h4{font-size:13px;margin:4px 0 8px;color:var(--muted);text-transform:uppercase;
letter-spacing:.04em}
a{color:#0b5cad}
.muted{color:var(--muted)}
header.page{display:flex;align-items:baseline;gap:16px;padding:14px 20px;border-radius:10px;
margin-bottom:16px;color:#fff}
header.page.ok{background:var(--ok)}header.page.bad{background:var(--bad)}
header.page.warn{background:var(--warn)}
header.page h1{font-size:22px}header.page .headline{margin:0;font-size:16px;opacity:.95}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;
margin:0 0 14px}
section.run{margin-top:28px}
.banner{display:flex;align-items:center;gap:20px;border-radius:10px;padding:14px 18px;
margin-bottom:12px;border:1px solid}
.banner.ok{background:var(--ok-bg);border-color:#a6dcb8}
.banner.bad{background:var(--bad-bg);border-color:#f3b4b4}
.banner .verdict{font-size:30px;font-weight:800;letter-spacing:.06em;padding:6px 16px;
border-radius:8px;color:#fff}
.banner.ok .verdict{background:var(--ok)}.banner.bad .verdict{background:var(--bad)}
.banner.warn{background:var(--warn-bg);border-color:#e8c35a}
.banner.warn .verdict{background:var(--warn)}.banner.warn .why{color:var(--warn)}
.banner .what{flex:1}.banner h2{font-size:22px}
.banner .desc{margin:2px 0;color:var(--muted)}
.banner .why{margin:2px 0;font-weight:600}
.banner.ok .why{color:var(--ok)}.banner.bad .why{color:var(--bad)}
.facts{display:flex;gap:22px;margin:0}
.facts dt{font-size:11px;text-transform:uppercase;color:var(--muted);letter-spacing:.05em}
.facts dd{margin:0;font-size:19px;font-weight:700;font-variant-numeric:tabular-nums}
.figures{display:grid;grid-template-columns:repeat(7,1fr);gap:10px;margin-bottom:14px}
.fig{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:8px 12px}
.fig .v{font-size:20px;font-weight:700;font-variant-numeric:tabular-nums}
.fig .k{font-size:12px;color:var(--muted)}
.fig.alarm{border-color:var(--bad);background:var(--bad-bg)}.fig.alarm .v{color:var(--bad)}
.problems{background:var(--warn-bg);border:1px solid #e8c35a;border-radius:10px;
padding:10px 16px;margin-bottom:14px;color:#5c3d00}
.problems h3{font-size:14px;color:var(--warn)}.problems ul{margin:4px 0 0;padding-left:20px}
table.grid{border-collapse:collapse;width:100%}
.grid th{text-align:left;font-size:12px;color:var(--muted);font-weight:600;
border-bottom:1px solid var(--line);padding:5px 8px}
.grid td{border-bottom:1px solid #eef1f4;padding:5px 8px;vertical-align:top}
.grid td.n{text-align:right;font-variant-numeric:tabular-nums}.grid th.n{text-align:right}
.grid td.id{font-weight:700}
.grid tr.na td{color:var(--muted)}
.grid tr.bad td{background:#fff5f5}
.inv td:nth-child(1){width:44px}.inv.viols td:nth-child(2){width:32%}
.inv td:nth-child(3){width:80px}
.inv td:nth-child(4){width:130px}
.pill{display:inline-block;font-size:11.5px;font-weight:700;padding:1px 8px;
border-radius:999px;white-space:nowrap}
.pill.ok{background:var(--ok-bg);color:var(--ok)}
.pill.bad{background:var(--bad);color:#fff}
.pill.warn{background:var(--warn-bg);color:var(--warn)}
.pill.na{background:#eef1f4;color:var(--muted)}
ul.viol{margin:0;padding-left:16px}ul.viol li{margin:1px 0}
details summary{cursor:pointer;color:#0b5cad;margin-top:2px}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:14px}
figure.plot{margin:0}
figcaption h3{margin:0}figcaption .muted{font-size:12px}
svg{width:100%;height:auto;display:block;margin-top:4px}
svg text{font-family:inherit}
svg .ax{font-size:10.5px;fill:#57606a}
svg .grid{stroke:#e6eaef;stroke-width:1}
svg .axis{stroke:#8c959f;stroke-width:1}svg .tick{stroke:#8c959f}
svg .quiet{fill:#eef1f4}
svg .off{stroke:#57606a;stroke-dasharray:4 3;stroke-width:1}
svg .bar{fill:#5b8fd0}
svg .pct{stroke:#c62828;stroke-width:1.5;stroke-dasharray:3 2}
svg text.pct{fill:#c62828;stroke:none;font-size:11px;font-weight:700}
svg .unres{fill:none;stroke:#e8793a;stroke-width:2;stroke-linejoin:round}
svg .unres-area{fill:#e8793a;fill-opacity:.18}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin-top:6px}
.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;
vertical-align:-1px}
svg text.empty{font-size:15px;fill:#8c959f}
.plots .card{margin:0}
.coverage{margin-top:14px}
.cov{display:grid;grid-template-columns:minmax(320px,1fr) 2fr;gap:24px}
.paths{columns:2;column-gap:24px;font-size:12.5px}
.path{display:flex;justify-content:space-between;gap:10px;border-bottom:1px solid #eef1f4;
padding:2px 0;break-inside:avoid}
.path b{font-variant-numeric:tabular-nums}.path.zero{color:var(--bad)}
.trace{border-top:1px solid var(--line);padding-top:10px;margin-top:10px}
.trace h4{text-transform:none;letter-spacing:0;color:var(--ink)}
.trace h4 code{font-size:14px;font-weight:700}
.trace ul.viol{color:var(--bad);margin-bottom:6px}
.sides{display:grid;grid-template-columns:1fr 1fr;gap:20px;align-items:start}
.trace-t td:first-child{width:90px;white-space:nowrap}
footer{margin-top:24px;color:var(--muted);font-size:12px;text-align:center}
@media (max-width:1000px){.plots,.cov{grid-template-columns:1fr}
.figures{grid-template-columns:repeat(4,1fr)}.banner{flex-wrap:wrap}}
"""
