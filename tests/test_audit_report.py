"""What the audit report lets a reviewer check: each example's verdict and score, per-category n
and intervals ("no data" for an empty category), underpowered metrics, the multiple-comparisons
note (Holm), drift above its default level without a gate, one-line descriptions, the judge, and
a terminal table that never cuts metric names into look-alikes."""

from __future__ import annotations

import io
import json
import sys
import types

import pytest
from rich.console import Console

from tether.audit.base import MetricResult, mean_of
from tether.audit.report import (
    audit_record,
    category_stats,
    holm_adjusted,
    multiple_comparisons,
    print_table,
    render_html,
    verdict_text,
    write_report,
)
from tether.audit.suite import run_suite


def _refusal_items(n: int, refused: int, categories=("a", "b")) -> list[dict]:
    return [{"id": f"q{i}", "category": categories[i % len(categories)], "prompt": f"prompt {i}",
             "response": f"answer {i}", "refusal_score": 0.93 if i < refused else 0.07, "refused": int(i < refused)}
            for i in range(n)]


@pytest.fixture
def modules(monkeypatch):
    """``fake_refusals``: n probes from the limit, 2 categories on the candidate and a third ("c")
    only on the baseline; ``fake_more``: three more rate metrics; ``fake_drift``: a pair metric
    at 0.9 with a default flag level of 0.5. Made by model name: baseline refuses 2, candidate 8."""
    refusals = types.ModuleType("fake_refusals")
    refusals.METRICS = {"fake_over_refusal": "rate"}
    refusals.DESCRIPTIONS = {"fake_over_refusal": "share of safe prompts refused (lower is better)"}

    def evaluate(model, *, limit=None):
        n = limit if limit is not None else 40
        base = model.name == "baseline"
        items = _refusal_items(n, 2 if base else 8, ("a", "b", "c") if base else ("a", "b"))
        details = {"judge": {"name": "refusal-fake", "version": "v1", "threshold": 0.5},
                   "judge_accuracy": {"labels": "x.jsonl", "value": 0.9, "ci95": [0.8, 0.95], "n": 100}}
        return [MetricResult("fake_over_refusal", mean_of("refused")(items), items, mean_of("refused"),
                             higher_is_better=False, details=details)]

    refusals.evaluate = evaluate
    more = types.ModuleType("fake_more")
    more.METRICS = {f"fake_rate_{k}": "rate" for k in range(3)}

    def evaluate_more(model, *, limit=None):
        results = []
        for k in range(3):
            items = [{"id": f"m{i}", "x": int((i + k) % 5 == 0)} for i in range(40)]
            results.append(MetricResult(f"fake_rate_{k}", mean_of("x")(items), items, mean_of("x"),
                                        higher_is_better=False))
        return results

    more.evaluate = evaluate_more
    drift = types.ModuleType("fake_drift")
    drift.METRICS = {"fake_drift_kl": "score", "fake_drift_kl_per_token": "score"}
    drift.FLAG_ABOVE = {"fake_drift_kl": 0.5, "fake_drift_kl_per_token": 0.5}
    drift.evaluate_pair = lambda baseline, candidate, *, limit=None: [
        MetricResult("fake_drift_kl", 0.9, [{"id": "a", "kl": 0.9}] * 4, mean_of("kl"), unit="score"),
        MetricResult("fake_drift_kl_per_token", 0.1, [{"id": "a", "kl": 0.1}] * 4, mean_of("kl"), unit="score")]
    for module in (refusals, more, drift):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return ["fake_refusals", "fake_more", "fake_drift"]


MODELS = [types.SimpleNamespace(name=name) for name in ("baseline", "candidate")]


def test_examples_show_each_verdict_and_score(modules):
    run = run_suite(*MODELS, modules[:1], limit=40, resamples=100)
    page = render_html(run, baseline="b", candidate="c", gates=[])
    assert "candidate: answer 0\n  -> refusal_score 0.93, refused 1" in page
    assert "baseline: answer 3\n  -> refusal_score 0.07, refused 0" in page
    assert verdict_text({"id": "x", "prompt": "p", "response": "r", "score": 0.5, "flagged": True}) == \
        "score 0.5, flagged True"


def test_categories_show_n_and_intervals_and_empty_ones_read_no_data(modules, tmp_path):
    run = run_suite(*MODELS, modules[:1], limit=40, resamples=100)
    (comparison,) = run.comparisons
    stats = category_stats(comparison.candidate, ["a", "b", "c"])
    assert stats["a"]["n"] == 20 and stats["a"]["value"] == pytest.approx(4 / 20)
    low, high = stats["a"]["ci95"]
    assert 0 <= low < 0.2 < high <= 1
    assert stats["c"] == {"value": None, "n": 0, "ci95": [None, None]}  # not 0%
    json_path, html_path = write_report(run, tmp_path, baseline="b", candidate="c")
    record = json.loads(json_path.read_text())["metrics"][0]
    assert record["per_category"]["c"]["candidate"]["n"] == 0
    assert record["per_category"]["c"]["candidate"]["value"] is None
    assert record["per_category"]["c"]["baseline"]["n"] == 13  # ids 2, 5, ..., 38
    page = html_path.read_text()
    assert "<td>c</td>" in page and "no data" in page and "n=20" in page
    row_c = page.split("<td>c</td>", 1)[1].split("</tr>", 1)[0]
    assert "n=13" in row_c and row_c.endswith("<td class=num>no data</td>")  # candidate: no data, not 0%


def test_a_metric_without_probes_reads_no_data(modules, tmp_path):
    run = run_suite(*MODELS, modules[:1], limit=0, resamples=100)
    record = audit_record(run, baseline="b", candidate="c", gates=[])["metrics"][0]
    assert record["candidate"] == {"value": None, "ci95": [None, None], "n": 0} and record["change"]["value"] is None
    out = io.StringIO()
    print_table(run, console=Console(file=out, width=200))
    row = next(line for line in out.getvalue().splitlines() if "fake_over_refusal" in line and "no data" in line)
    assert "0.0%" not in row


def test_few_probes_are_marked_underpowered(modules):
    thin = run_suite(*MODELS, modules[:1], limit=10, resamples=100)
    record = audit_record(thin, baseline="b", candidate="c", gates=[])
    assert record["underpowered"] == ["fake_over_refusal"] and record["metrics"][0]["underpowered"]
    page = render_html(thin, baseline="b", candidate="c", gates=[])
    assert "underpowered (n=10)" in page and "Underpowered: fake_over_refusal (n=10)" in page
    enough = run_suite(*MODELS, modules[:1], limit=40, resamples=100)
    assert audit_record(enough, baseline="b", candidate="c", gates=[])["underpowered"] == []


def test_holm_adjusted_p_values():
    assert holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjusted([0.5, float("nan")])[0] == 0.5


def test_many_metrics_get_a_multiple_comparisons_note(modules):
    run = run_suite(*MODELS, modules, limit=40, resamples=200)
    note = multiple_comparisons(run)
    assert note["metrics"] == 4  # the drift metrics compare the models directly: no baseline test
    assert note["familywise_error_uncorrected"] == pytest.approx(1 - 0.95 ** 4)
    assert "fake_over_refusal" in note["regressions"]
    # 2 -> 8 of 40 refused: p < 0.005 from the paired bootstrap, still flagged after Holm
    assert note["regressions_after_holm"] == ["fake_over_refusal"]
    page = render_html(run, baseline="b", candidate="c", gates=[])
    assert "Holm" in page and "up to 19%" in page
    assert multiple_comparisons(run_suite(*MODELS, modules[:1], limit=40, resamples=100)) is None


def test_drift_above_its_default_level_is_flagged_without_a_gate(modules):
    run = run_suite(*MODELS, modules[2:], limit=4, resamples=100)
    flags = audit_record(run, baseline="b", candidate="c", gates=[])["metrics"]
    assert flags[0]["above_default_flag"] and not flags[1]["above_default_flag"]
    page = render_html(run, baseline="b", candidate="c", gates=[])
    assert "above 0.5 (default)" in page and "fake_drift_kl = 0.9, above the default flag level 0.5" in page


def test_descriptions_and_the_judge_are_in_the_report(modules):
    run = run_suite(*MODELS, modules[:1], limit=40, resamples=100)
    page = render_html(run, baseline="b", candidate="c", gates=[])
    assert "share of safe prompts refused (lower is better)" in page
    assert "<code>refusal-fake</code> version v1, threshold 0.5" in page and "90.0% [95% CI 80.0%, 95.0%]" in page
    record = audit_record(run, baseline="b", candidate="c", gates=[])
    assert record["judges"][0]["judge"]["name"] == "refusal-fake"
    assert record["metrics"][0]["description"] == "share of safe prompts refused (lower is better)"
    out = io.StringIO()
    print_table(run, console=Console(file=out, width=120))
    assert "fake_over_refusal: share of safe prompts refused" in out.getvalue()
    assert "refusals counted by refusal-fake" in out.getvalue()


def test_the_terminal_table_keeps_whole_metric_names_on_a_narrow_terminal(modules):
    run = run_suite(*MODELS, modules, limit=40, resamples=100)
    out = io.StringIO()
    print_table(run, console=Console(file=out, width=70))
    text = out.getvalue()
    for name in ("fake_over_refusal", "fake_drift_kl_per_token", "fake_rate_0", "fake_rate_2"):
        assert any(line.lstrip("│┃ ").startswith(name) for line in text.splitlines()), (name, text)
    assert "…" not in text
