"""The audit's outputs: ``audit.json`` (everything, for machines), a self-contained ``audit.html``
(inline CSS, plots as base64 PNG, for people) and a rich table on the terminal.

The HTML has one summary table (metric, baseline [CI], candidate [CI], change [CI], flag), a
dot-and-interval plot per metric, per-category bars for every metric whose probes have
categories, and a few example answers per metric.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tether.audit.bootstrap import Interval
from tether.audit.gate import GateOutcome
from tether.audit.suite import AuditRun, Comparison

EXAMPLES_PER_METRIC = 6
_TEXT_KEYS = ("response", "completion", "answer", "samples")


# ---- numbers as text

def format_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value * 100:.1f}%" if unit == "rate" else f"{value:.4g}"


def format_change(value: float, unit: str) -> str:
    if math.isnan(value):
        return "—"
    return f"{value * 100:+.1f}pp" if unit == "rate" else f"{value:+.4g}"


def format_interval(interval: Interval | None, unit: str, *, signed: bool = False) -> str:
    if interval is None or math.isnan(interval.low):
        return ""
    show = (lambda v: format_change(v, unit)) if signed else (lambda v: format_value(v, unit))
    return f"[{show(interval.low)}, {show(interval.high)}]"


def flag(comparison: Comparison, failed_gates: set[str]) -> str:
    marks = []
    if comparison.regression:
        marks.append("regression")
    if comparison.name in failed_gates:
        marks.append("gate failed")
    return ", ".join(marks)


# ---- per-category numbers, from the items

def per_category(result) -> dict[str, float]:
    """``statistic`` recomputed on the items of each ``category`` (empty if items have none)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in result.items:
        if "category" in row:
            groups[str(row["category"])].append(row)
    return {name: float(result.statistic(rows)) for name, rows in sorted(groups.items())}


# ---- JSON

def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, unknown objects -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _clean(value.item())
    return str(value)


def comparison_record(c: Comparison, failed_gates: set[str]) -> dict:
    categories_c = per_category(c.candidate)
    categories_b = per_category(c.baseline) if c.baseline is not None else {}
    return {
        "name": c.name, "module": c.module, "unit": c.unit, "higher_is_better": c.higher_is_better,
        "baseline": None if c.baseline is None else {"value": c.baseline.value,
                                                     "ci95": c.baseline_ci.as_list(), "n": len(c.baseline.items)},
        "candidate": {"value": c.candidate.value, "ci95": c.candidate_ci.as_list(), "n": len(c.candidate.items)},
        "change": {"value": c.change, "ci95": c.change_ci.as_list(), "paired": c.paired},
        "regression": c.regression,
        "gate_failed": c.name in failed_gates,
        "per_category": {name: {"baseline": categories_b.get(name), "candidate": value}
                         for name, value in categories_c.items()},
        "details": {"baseline": None if c.baseline is None else c.baseline.details,
                    "candidate": c.candidate.details},
        "items": {"baseline": None if c.baseline is None else c.baseline.items,
                  "candidate": c.candidate.items},
    }


def audit_record(run: AuditRun, *, baseline: str, candidate: str, gates: Sequence[GateOutcome]) -> dict:
    failed = {o.gate.metric for o in gates if o.failed}
    return _clean({
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "baseline": baseline, "candidate": candidate,
        "suite": run.suite, "limit": run.limit,
        "passed": not failed and not run.errors,
        "gates": [{"gate": o.gate.text, "metric": o.gate.metric, "change": o.change, "failed": o.failed}
                  for o in gates],
        "seconds": run.seconds, "errors": run.errors,
        "metrics": [comparison_record(c, failed) for c in run.comparisons],
    })


# ---- plots

def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def interval_plot(comparisons: Sequence[Comparison]) -> str | None:
    """One small panel per metric: baseline and candidate as dots with their 95% intervals."""
    if not comparisons:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(len(comparisons), 1, figsize=(7.5, 0.95 * len(comparisons) + 0.4),
                                squeeze=False)
    for axis, c in zip(axes[:, 0], comparisons):
        scale = 100.0 if c.unit == "rate" else 1.0
        rows = [("candidate", c.candidate.value, c.candidate_ci, "#c0392b")]
        if c.baseline is not None:
            rows.append(("baseline", c.baseline.value, c.baseline_ci, "#2c3e50"))
        for y, (label, value, interval, color) in enumerate(rows):
            low, high = interval.low, interval.high
            error = None if math.isnan(low) else [[(value - low) * scale], [(high - value) * scale]]
            axis.errorbar([value * scale], [y], xerr=error, fmt="o", color=color, capsize=4)
        axis.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
        axis.set_ylim(-0.6, len(rows) - 0.4)
        axis.set_title(f"{c.name}" + (" (%)" if c.unit == "rate" else ""), fontsize=9, loc="left")
        axis.tick_params(axis="x", labelsize=8)
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def category_plot(c: Comparison) -> str | None:
    """Grouped bars per category (baseline beside candidate), or None with fewer than 2 categories."""
    cand = per_category(c.candidate)
    if len(cand) < 2:
        return None
    base = per_category(c.baseline) if c.baseline is not None else {}
    plt = _pyplot()
    names = list(cand)
    scale = 100.0 if c.unit == "rate" else 1.0
    figure, axis = plt.subplots(figsize=(max(5.0, 0.75 * len(names) + 2), 2.8))
    width = 0.4 if base else 0.6
    xs = range(len(names))
    if base:
        axis.bar([x - width / 2 for x in xs], [base.get(n, math.nan) * scale for n in names], width,
                 label="baseline", color="#2c3e50")
    axis.bar([x + (width / 2 if base else 0) for x in xs], [cand[n] * scale for n in names], width,
             label="candidate", color="#c0392b")
    heights = [v * scale for v in list(cand.values()) + list(base.values()) if not math.isnan(v)]
    if heights and min(heights) >= 0:  # rates and scores in [0, ...): bars grow from 0
        axis.set_ylim(0, max(max(heights) * 1.15, 1.0 if c.unit == "rate" else 0.01))
    axis.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    axis.set_title(f"{c.name} by category" + (" (%)" if c.unit == "rate" else ""), fontsize=9, loc="left")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _png(figure)


# ---- HTML

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1000px;
color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #eee;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#777;font-size:.8rem}.bad{color:#b00020;font-weight:600}
.banner{padding:.6rem 1rem;border-radius:4px;margin:1rem 0}
.pass{background:#e6f4ea;color:#185c2b}.fail{background:#fdecea;color:#8a1c12}
img{max-width:100%}pre{white-space:pre-wrap;background:#f8f8f8;padding:.5rem;font-size:.8rem}
.meta{color:#555;font-size:.9rem}details{margin:.5rem 0}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _img(data: str | None, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">' if data else ""


def _summary_rows(run: AuditRun, failed: set[str]) -> str:
    rows = []
    for c in run.comparisons:
        base = ("—" if c.baseline is None else
                f'{format_value(c.baseline.value, c.unit)} <span class="ci">'
                f'{format_interval(c.baseline_ci, c.unit)}</span>')
        mark = flag(c, failed)
        rows.append(
            f"<tr><td>{_e(c.name)}</td><td class=num>{base}</td>"
            f'<td class=num>{format_value(c.candidate.value, c.unit)} <span class="ci">'
            f"{format_interval(c.candidate_ci, c.unit)}</span></td>"
            f'<td class=num>{format_change(c.change, c.unit)} <span class="ci">'
            f"{format_interval(c.change_ci, c.unit, signed=True)}</span></td>"
            f'<td class="{"bad" if mark else ""}">{_e(mark)}</td></tr>')
    return "\n".join(rows)


def _examples(c: Comparison) -> str:
    items = c.candidate.items[:EXAMPLES_PER_METRIC]
    if not items or "prompt" not in items[0]:
        return ""
    before = {row.get("id"): row for row in (c.baseline.items if c.baseline is not None else [])}
    blocks = []
    for row in items:
        key = next((k for k in _TEXT_KEYS if k in row), None)
        if key is None:
            continue
        text = row[key][0] if isinstance(row[key], list) and row[key] else row[key]
        old = before.get(row.get("id"), {}).get(key)
        old = old[0] if isinstance(old, list) and old else old
        blocks.append(f"<p><b>{_e(row.get('category', ''))}</b>: {_e(row['prompt'])}</p>"
                      + (f"<pre>baseline: {_e(old)}</pre>" if old is not None else "")
                      + f"<pre>candidate: {_e(text)}</pre>")
    if not blocks:
        return ""
    return f"<details><summary>{_e(c.name)}: example answers</summary>{''.join(blocks)}</details>"


def render_html(run: AuditRun, *, baseline: str, candidate: str, gates: Sequence[GateOutcome]) -> str:
    failed = {o.gate.metric for o in gates if o.failed}
    verdict_ok = not failed and not run.errors
    verdict = ("All gates passed." if gates else "No gates set.") if verdict_ok else (
        "; ".join([o.describe() for o in gates if o.failed]
                  + [f"{m} failed to run" for m in run.errors]))
    gate_list = "".join(f"<li>{_e(o.describe())}</li>" for o in gates)
    dots = _img(interval_plot(run.comparisons), "baseline vs candidate with 95% intervals")
    bars = "".join(_img(category_plot(c), f"{c.name} by category") for c in run.comparisons)
    errors = "".join(f"<h3>{_e(m)}</h3><pre>{_e(text)}</pre>" for m, text in run.errors.items())
    timing = ", ".join(f"{_e(m.rsplit('.', 1)[-1])} {s:.1f} s" for m, s in run.seconds.items())
    examples = "".join(_examples(c) for c in run.comparisons)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tether audit</title><style>{_CSS}</style></head>
<body>
<h1>tether audit</h1>
<p class="meta">baseline: <code>{_e(baseline)}</code><br>candidate: <code>{_e(candidate)}</code><br>
suite: {_e(', '.join(m.rsplit('.', 1)[-1] for m in run.suite))}; probes per set: {_e(run.limit or 'module defaults')}<br>
time: {timing}<br>{_e(datetime.now(timezone.utc).isoformat(timespec='seconds'))}</p>
<div class="banner {'pass' if verdict_ok else 'fail'}">{_e(verdict)}</div>
{f'<ul>{gate_list}</ul>' if gate_list else ''}
<h2>Summary</h2>
<table><tr><th>metric</th><th>baseline [95% CI]</th><th>candidate [95% CI]</th><th>change [95% CI]</th><th>flag</th></tr>
{_summary_rows(run, failed)}
</table>
<p class="meta">Rates in percent, changes in percentage points. Intervals: percentile bootstrap over
probes (1,000 resamples); changes paired by probe id. "regression": the change's interval lies
entirely on the worse side of 0. Drift metrics compare the two models directly (KL(candidate ||
baseline), nats), so they have no baseline column.</p>
<h2>Baseline vs candidate</h2>
{dots}
<h2>By category</h2>
{bars or '<p>No metric has per-category probes.</p>'}
<h2>Examples</h2>
{examples or '<p>No examples.</p>'}
{f'<h2>Errors</h2>{errors}' if errors else ''}
</body></html>
"""


def write_report(run: AuditRun, out_dir: str | Path, *, baseline: str, candidate: str,
                 gates: Sequence[GateOutcome] = ()) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.html`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = audit_record(run, baseline=baseline, candidate=candidate, gates=gates)
    json_path, html_path = out / "audit.json", out / "audit.html"
    json_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(run, baseline=baseline, candidate=candidate, gates=gates),
                         encoding="utf-8")
    return json_path, html_path


def print_table(run: AuditRun, gates: Sequence[GateOutcome] = (), console=None) -> None:
    """The summary table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    failed = {o.gate.metric for o in gates if o.failed}
    table = Table(title="tether audit: baseline vs candidate (95% bootstrap CI)")
    for column in ("metric", "baseline", "candidate", "change", "flag"):
        table.add_column(column, justify="left" if column in ("metric", "flag") else "right")
    for c in run.comparisons:
        base = "—" if c.baseline is None else (
            f"{format_value(c.baseline.value, c.unit)} {format_interval(c.baseline_ci, c.unit)}")
        mark = flag(c, failed)
        table.add_row(c.name, base,
                      f"{format_value(c.candidate.value, c.unit)} {format_interval(c.candidate_ci, c.unit)}",
                      f"{format_change(c.change, c.unit)} {format_interval(c.change_ci, c.unit, signed=True)}",
                      f"[bold red]{mark}[/]" if mark else "")
    console.print(table)
    for outcome in gates:
        console.print(("[bold red]" if outcome.failed else "[green]") + outcome.describe() + "[/]")
    for module, text in run.errors.items():
        console.print(f"[bold red]{module} failed:[/] {text.splitlines()[0]}")
