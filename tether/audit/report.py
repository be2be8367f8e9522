"""The audit's outputs: ``audit.json`` (everything, for machines), a self-contained ``audit.html``
(inline CSS, plots as base64 PNG, for people) and a rich table on the terminal.

The HTML has one summary table (metric with its one-line description, baseline [CI], candidate
[CI], change [CI], n, flag), a dot-and-interval plot per metric, per-category bars with their n
and 95% intervals (a category with no probes on one side reads "no data", not 0%) and the same
numbers as a table, a few example answers per metric with each one's verdict and score, and the
judge the refusal numbers rest on.

What a reviewer is warned about: metrics measured on fewer than :data:`UNDERPOWERED_BELOW` probes
("underpowered": a 95% interval on a rate is then wider than about +-18pp); with several metrics,
that some "regression" flags are expected by chance, and which survive Holm's correction of the
bootstrap p-values; pair metrics (drift) above their module's default level even without a gate.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tether.audit.bootstrap import Interval
from tether.audit.gate import GateOutcome
from tether.audit.suite import AuditRun, Comparison

EXAMPLES_PER_METRIC = 6
_TEXT_KEYS = ("response", "completion", "answer", "samples")
UNDERPOWERED_BELOW = 30  # probes; 95% half-width of a rate near 50% at n = 30 is about 18pp
CATEGORY_RESAMPLES = 200  # bootstrap resamples per category interval
NO_DATA = "no data"


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


def value_text(result, unit: str) -> str:
    """A result's value, or "no data" when no probe is behind it (not a 0% that was never measured)."""
    return NO_DATA if result is not None and not result.items else format_value(
        None if result is None else result.value, unit)


def underpowered(comparison: Comparison) -> bool:
    return comparison.n < UNDERPOWERED_BELOW


def flag(comparison: Comparison, failed_gates: set[str]) -> str:
    marks = []
    if comparison.n == 0:
        marks.append("no data")
    elif underpowered(comparison):
        marks.append(f"underpowered (n={comparison.n})")
    if comparison.regression:
        marks.append("regression")
    if comparison.above_default:
        marks.append(f"above {comparison.flag_above:.3g} (default)")
    if comparison.name in failed_gates:
        marks.append("gate failed")
    return ", ".join(marks)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in input order (NaN stays NaN and is not counted)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, adjusted, running = len(indexed), [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def multiple_comparisons(run: AuditRun, level: float = 0.05) -> dict | None:
    """With two or more baseline-vs-candidate metrics: the chance of a false "regression" flag
    somewhere, and which regressions survive Holm's correction. None with fewer."""
    tested = [c for c in run.comparisons if c.baseline is not None and not math.isnan(c.p_value)]
    if len(tested) < 2:
        return None
    adjusted = holm_adjusted([c.p_value for c in tested])
    survivors = [c.name for c, p in zip(tested, adjusted) if c.regression and p < level]
    m = len(tested)
    return {"metrics": m, "familywise_error_uncorrected": 1 - (1 - level) ** m,
            "holm_adjusted_p": {c.name: p for c, p in zip(tested, adjusted)},
            "regressions": [c.name for c in tested if c.regression], "regressions_after_holm": survivors,
            "note": (f"{m} metrics are compared, each flagged at 95%: with no real change anywhere, the chance "
                     f"of at least one 'regression' flag is up to {1 - (1 - level) ** m:.0%}. After Holm's "
                     f"correction (bootstrap p-values): "
                     + (", ".join(survivors) + " still flagged." if survivors else "no regression remains flagged."))}


# ---- per-category numbers, from the items

def _groups(result) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in result.items:
        if "category" in row:
            groups[str(row["category"])].append(row)
    return groups


def per_category(result) -> dict[str, float]:
    """``statistic`` recomputed on the items of each ``category`` (empty if items have none)."""
    return {name: float(result.statistic(rows)) for name, rows in sorted(_groups(result).items())}


def category_stats(result, names: Sequence[str] | None = None) -> dict[str, dict]:
    """Per category: ``{"value", "n", "ci95"}``, a bootstrap interval over its probes; a category
    in ``names`` without probes here gets ``value`` None and ``n`` 0 ("no data")."""
    from tether.audit.bootstrap import percentile_interval

    groups = _groups(result) if result is not None else {}
    stats = {}
    for name in (sorted(groups) if names is None else names):
        rows = groups.get(name, [])
        if not rows:
            stats[name] = {"value": None, "n": 0, "ci95": [None, None]}
            continue
        interval = percentile_interval(rows, result.statistic, resamples=CATEGORY_RESAMPLES)
        stats[name] = {"value": float(result.statistic(rows)), "n": len(rows), "ci95": interval.as_list()}
    return stats


def _category_names(c: Comparison) -> list[str]:
    names = set(_groups(c.candidate))
    if c.baseline is not None:
        names |= set(_groups(c.baseline))
    return sorted(names)


def judges_used(run: AuditRun) -> list[dict]:
    """Each judge a metric's details name (``details["judge"]``), once, with its accuracy on labelled
    responses where the metric recorded it, and the metrics that counted with it."""
    found: dict[tuple, dict] = {}
    for c in run.comparisons:
        for result in (c.baseline, c.candidate):
            judge = (result.details or {}).get("judge") if result is not None else None
            if not isinstance(judge, dict):
                continue
            key = (judge.get("name"), judge.get("version"), judge.get("threshold"))
            entry = found.setdefault(key, {"judge": judge, "accuracy": result.details.get("judge_accuracy"),
                                           "metrics": []})
            if c.name not in entry["metrics"]:
                entry["metrics"].append(c.name)
    return list(found.values())


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


def _measured(result, interval) -> dict:
    """Value, interval and n; value None when no probe is behind it."""
    return {"value": result.value if result.items else None, "ci95": interval.as_list(), "n": len(result.items)}


def comparison_record(c: Comparison, failed_gates: set[str]) -> dict:
    names = _category_names(c)
    categories_c = category_stats(c.candidate, names)
    categories_b = category_stats(c.baseline, names) if c.baseline is not None else {}
    return {
        "name": c.name, "module": c.module, "unit": c.unit, "higher_is_better": c.higher_is_better,
        "description": c.description,
        "baseline": None if c.baseline is None else _measured(c.baseline, c.baseline_ci),
        "candidate": _measured(c.candidate, c.candidate_ci),
        "change": {"value": c.change if c.n else None, "ci95": c.change_ci.as_list(), "paired": c.paired,
                   "p_value": c.p_value},
        "n": c.n, "underpowered": underpowered(c),
        "regression": c.regression,
        "above_default_flag": c.above_default, "default_flag": c.flag_above,
        "gate_failed": c.name in failed_gates,
        "per_category": {name: {"baseline": categories_b.get(name), "candidate": categories_c[name]}
                         for name in names},
        "details": {"baseline": None if c.baseline is None else c.baseline.details,
                    "candidate": c.candidate.details},
        "items": {"baseline": None if c.baseline is None else c.baseline.items,
                  "candidate": c.candidate.items},
    }


def audit_record(run: AuditRun, *, baseline: str, candidate: str, gates: Sequence[GateOutcome]) -> dict:
    failed = {o.gate.metric for o in gates if o.failed}
    return _clean({
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "baseline": baseline, "candidate": candidate,
        "suite": run.suite, "limit": run.limit,
        "passed": not failed and not run.errors,
        "gates": [{"gate": o.gate.text, "metric": o.gate.metric, "change": o.change, "failed": o.failed,
                   "evidence": o.evidence, "message": o.describe()}
                  for o in gates],
        "judges": judges_used(run), "judge_guarantee": run.judge_guarantee,
        "underpowered": [c.name for c in run.comparisons if underpowered(c)],
        "underpowered_below": UNDERPOWERED_BELOW,
        "multiple_comparisons": multiple_comparisons(run),
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
        for y, (_label, value, interval, color) in enumerate(rows):
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
    """Grouped bars per category (baseline beside candidate) with 95% intervals and n under each
    bar; "no data" where a side has no probes in that category. None with fewer than 2 categories."""
    names = _category_names(c)
    if len(names) < 2:
        return None
    sides = [("candidate", category_stats(c.candidate, names), "#c0392b")]
    if c.baseline is not None:
        sides.insert(0, ("baseline", category_stats(c.baseline, names), "#2c3e50"))
    plt = _pyplot()
    scale = 100.0 if c.unit == "rate" else 1.0
    figure, axis = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.0))
    width = 0.8 / len(sides)
    tops = [s["ci95"][1] * scale for _, stats, _ in sides for s in stats.values() if s["n"]]
    bottoms = [s["ci95"][0] * scale for _, stats, _ in sides for s in stats.values() if s["n"]]
    for k, (label, stats, color) in enumerate(sides):
        xs = [x + (k - (len(sides) - 1) / 2) * width for x in range(len(names))]
        for x, name in zip(xs, names):
            s = stats[name]
            if not s["n"]:
                axis.text(x, 0, NO_DATA, rotation=90, ha="center", va="bottom", fontsize=7, color=color)
                continue
            value, (low, high) = s["value"] * scale, (v * scale for v in s["ci95"])
            axis.bar([x], [value], width, color=color, label=label if name == names[0] else None)
            axis.errorbar([x], [value], yerr=[[max(value - low, 0)], [max(high - value, 0)]], fmt="none",
                          ecolor="#555", capsize=3, linewidth=1)
            axis.text(x, high, f"n={s['n']}", ha="center", va="bottom", fontsize=6)
        axis.bar([], [], color=color, label=label if not stats[names[0]]["n"] else None)
    if tops and min(bottoms) >= 0:  # rates and scores in [0, ...): bars grow from 0
        axis.set_ylim(0, max(max(tops) * 1.2, 1.0 if c.unit == "rate" else 0.01))
    axis.set_xticks(list(range(len(names))), names, rotation=30, ha="right", fontsize=8)
    axis.set_title(f"{c.name} by category" + (" (%)" if c.unit == "rate" else "")
                   + ", 95% intervals", fontsize=9, loc="left")
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
.warn{background:#fff4e5;color:#6b4100}
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
                f'{value_text(c.baseline, c.unit)} <span class="ci">'
                f'{format_interval(c.baseline_ci, c.unit)}</span>')
        mark = flag(c, failed)
        change = NO_DATA if not c.n else format_change(c.change, c.unit)
        rows.append(
            f'<tr><td><b>{_e(c.name)}</b><br><span class="ci">{_e(c.description)}</span></td>'
            f"<td class=num>{base}</td>"
            f'<td class=num>{value_text(c.candidate, c.unit)} <span class="ci">'
            f"{format_interval(c.candidate_ci, c.unit)}</span></td>"
            f'<td class=num>{change} <span class="ci">'
            f"{format_interval(c.change_ci, c.unit, signed=True)}</span></td>"
            f"<td class=num>{c.n}</td>"
            f'<td class="{"bad" if mark else ""}">{_e(mark)}</td></tr>')
    return "\n".join(rows)


def _category_table(c: Comparison) -> str:
    """The per-category numbers as text: value [95% CI] (n), or "no data"."""
    names = _category_names(c)
    if len(names) < 2:
        return ""
    sides = [("candidate", category_stats(c.candidate, names))]
    if c.baseline is not None:
        sides.insert(0, ("baseline", category_stats(c.baseline, names)))

    def cell(s: dict) -> str:
        if not s["n"]:
            return NO_DATA
        interval = Interval(*s["ci95"])
        return (f'{format_value(s["value"], c.unit)} <span class="ci">{format_interval(interval, c.unit)} '
                f'n={s["n"]}</span>')

    head = "".join(f"<th>{label}</th>" for label, _ in sides)
    body = "".join(f"<tr><td>{_e(name)}</td>" + "".join(f"<td class=num>{cell(stats[name])}</td>" for _, stats in sides)
                   + "</tr>" for name in names)
    return (f"<details><summary>{_e(c.name)} by category (table)</summary><table><tr><th>category</th>{head}</tr>"
            f"{body}</table></details>")


_VERDICT_SKIP = {"id", "prompt", "category", *_TEXT_KEYS}


def verdict_text(row: dict) -> str:
    """What the metric read in an answer: its numeric fields (score, verdict), e.g.
    ``refusal_score 0.93, refused 1``."""
    shown = []
    for key, value in row.items():
        if key in _VERDICT_SKIP or not isinstance(value, (int, float)):
            continue
        shown.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(shown)


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
        old_row = before.get(row.get("id"), {})
        old = old_row.get(key)
        old = old[0] if isinstance(old, list) and old else old
        blocks.append(f"<p><b>{_e(row.get('category', ''))}</b>: {_e(row['prompt'])}</p>"
                      + (f"<pre>baseline: {_e(old)}\n  -> {_e(verdict_text(old_row))}</pre>" if old is not None else "")
                      + f"<pre>candidate: {_e(text)}\n  -> {_e(verdict_text(row))}</pre>")
    if not blocks:
        return ""
    return f"<details><summary>{_e(c.name)}: example answers</summary>{''.join(blocks)}</details>"


def review_notes(run: AuditRun) -> list[str]:
    """Warnings a reviewer should read before the numbers: underpowered metrics, multiple comparisons,
    drift above its default level."""
    notes = []
    thin = [f"{c.name} (n={c.n})" for c in run.comparisons if underpowered(c)]
    if thin:
        notes.append(f"Underpowered: {', '.join(thin)} rest on fewer than {UNDERPOWERED_BELOW} probes; their "
                     f"intervals are wide and a real change of several points can pass unseen (n = 0: no data).")
    multiple = multiple_comparisons(run)
    if multiple is not None:
        notes.append(multiple["note"])
    for c in run.comparisons:
        if c.above_default:
            notes.append(f"{c.name} = {c.change:.4g}, above the default flag level {c.flag_above:.3g} "
                         f"(no gate needed to show it).")
    return notes


def bounded_rates(run: AuditRun) -> list[str]:
    """Under a calibrated judge's bound: what it says about the true rate it caps, per model."""
    from tether.judges.conformal import RATE_BOUNDED, RiskBound, rate_upper_bound

    if run.judge_guarantee is None:
        return []
    bound = RiskBound.parse(run.judge_guarantee["bound"])
    lines = []
    for c in run.comparisons:
        if c.name != RATE_BOUNDED[bound.risk]:
            continue
        for label, result, interval in (("baseline", c.baseline, c.baseline_ci),
                                        ("candidate", c.candidate, c.candidate_ci)):
            if result is None or not result.items or math.isnan(interval.high):
                continue
            upper = rate_upper_bound(interval.high, bound.alpha)
            lines.append(f"{label}: true {c.name} <= {upper:.1%} (the interval's upper end {interval.high:.1%} "
                         f"/ (1 - {bound.alpha:g})), with confidence at least "
                         f"{bound.confidence - 0.025:.1%} (the bound's {bound.confidence:.0%} and the interval's "
                         f"upper 2.5% tail together)")
    return lines


def _judges_html(run: AuditRun) -> str:
    used = judges_used(run)
    if not used and run.judge_guarantee is None:
        return ""
    rows = []
    for entry in used:
        judge, accuracy = entry["judge"], entry.get("accuracy") or {}
        measured = ""
        if accuracy.get("value") is not None:
            low, high = accuracy["ci95"]
            measured = (f"; accuracy on {accuracy.get('n')} labelled responses ({_e(accuracy.get('labels', ''))}): "
                        f"{accuracy['value']:.1%} [95% CI {low:.1%}, {high:.1%}]")
        rows.append(f"<li><code>{_e(judge.get('name'))}</code> version {_e(judge.get('version'))}, threshold "
                    f"{_e(judge.get('threshold'))}{measured}; counts {_e(', '.join(entry['metrics']))}</li>")
    guarantee = ""
    if run.judge_guarantee is not None:
        g = run.judge_guarantee
        guarantee = (f"<p>Bound <code>{_e(g['bound'])}</code>: {_e(g['statement'])}. {_e(g['evidence'])}.</p>"
                     "<ul>" + "".join(f"<li>assumes {_e(a)}</li>" for a in g["assumptions"]) + "</ul>")
        for line in bounded_rates(run):
            guarantee += f"<p>{_e(line)}</p>"
    return f"<h2>Judges</h2><ul>{''.join(rows)}</ul>{guarantee}"


def render_html(run: AuditRun, *, baseline: str, candidate: str, gates: Sequence[GateOutcome]) -> str:
    failed = {o.gate.metric for o in gates if o.failed}
    verdict_ok = not failed and not run.errors
    verdict = ("All gates passed." if gates else "No gates set.") if verdict_ok else (
        "; ".join([o.describe() for o in gates if o.failed]
                  + [f"{m} failed to run" for m in run.errors]))
    gate_list = "".join(f"<li>{_e(o.describe())}</li>" for o in gates)
    dots = _img(interval_plot(run.comparisons), "baseline vs candidate with 95% intervals")
    bars = "".join(_img(category_plot(c), f"{c.name} by category") + _category_table(c) for c in run.comparisons)
    notes = "".join(f'<div class="banner warn">{_e(text)}</div>' for text in review_notes(run))
    judges = _judges_html(run)
    errors = "".join(f"<h3>{_e(m)}</h3><pre>{_e(text)}</pre>" for m, text in run.errors.items())
    timing = ", ".join(f"{_e(m.rsplit('.', 1)[-1])} {s:.1f} s" for m, s in run.seconds.items())
    examples = "".join(_examples(c) for c in run.comparisons)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tether audit</title><style>{_CSS}</style></head>
<body>
<h1>tether audit</h1>
<p class="meta">baseline: <code>{_e(baseline)}</code><br>candidate: <code>{_e(candidate)}</code><br>
suite: {_e(', '.join(m.rsplit('.', 1)[-1] for m in run.suite))};
probes per set: {_e(run.limit or 'module defaults')}<br>
time: {timing}<br>{_e(datetime.now(UTC).isoformat(timespec='seconds'))}</p>
<div class="banner {'pass' if verdict_ok else 'fail'}">{_e(verdict)}</div>
{f'<ul>{gate_list}</ul>' if gate_list else ''}
{notes}
<h2>Summary</h2>
<table><tr><th>metric</th><th>baseline [95% CI]</th><th>candidate [95% CI]</th><th>change [95% CI]</th><th>n</th>
<th>flag</th></tr>
{_summary_rows(run, failed)}
</table>
<p class="meta">Rates in percent, changes in percentage points. Intervals: percentile bootstrap over
probes (1,000 resamples); changes paired by probe id. "regression": the change's interval lies
entirely on the worse side of 0. Drift metrics compare the two models directly (KL(candidate ||
baseline), nats), so they have no baseline column.</p>
{judges}
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
    table = Table(title="tether audit: baseline vs candidate (95% bootstrap CI)", show_edge=False)
    # Metric names are never cut: drift_kl_per_token and drift_kl_k3 would both read "drift_kl_…".
    # The other columns wrap instead.
    widest = max((len(c.name) for c in run.comparisons), default=6)
    table.add_column("metric", justify="left", no_wrap=True, min_width=widest)
    for column in ("baseline", "candidate", "change"):
        table.add_column(column, justify="right", min_width=len(column), overflow="fold")
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("flag", justify="left", overflow="fold")
    for c in run.comparisons:  # value over its interval, so narrow terminals wrap between them
        base = ("—" if c.baseline is None
                else f"{value_text(c.baseline, c.unit)}\n{format_interval(c.baseline_ci, c.unit)}")
        mark = flag(c, failed)
        change = NO_DATA if not c.n else format_change(c.change, c.unit)
        table.add_row(c.name, base,
                      f"{value_text(c.candidate, c.unit)}\n{format_interval(c.candidate_ci, c.unit)}",
                      f"{change}\n{format_interval(c.change_ci, c.unit, signed=True)}", str(c.n),
                      f"[bold red]{mark}[/]" if mark else "")
    console.print(table)
    for c in run.comparisons:
        if c.description:
            console.print(f"  [bold]{c.name}[/]: {c.description}", highlight=False)
    for entry in judges_used(run):
        judge = entry["judge"]
        console.print(f"refusals counted by {judge.get('name')} (version {judge.get('version')}, "
                      f"threshold {judge.get('threshold')})", highlight=False)
    for line in bounded_rates(run):
        console.print(f"judge bound: {line}", highlight=False)
    for note in review_notes(run):
        console.print(f"[yellow]{note}[/]", highlight=False)
    for outcome in gates:
        console.print(("[bold red]" if outcome.failed else "[green]") + outcome.describe() + "[/]")
    for module, text in run.errors.items():
        console.print(f"[bold red]{module} failed:[/] {text.splitlines()[0]}")
