"""The audit runner: bootstrap intervals, comparisons, the suite loop, the report, and the CLI end to end."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from tether.audit import suite as suite_module
from tether.audit.base import MetricResult, mean_of
from tether.audit.bootstrap import bootstrap_interval, delta_interval, percentile_interval
from tether.audit.report import format_change, format_value, per_category
from tether.audit.suite import compare, run_suite


def _result(values, name="m", ids=True, categories=None, higher_is_better=False):
    items = [{"x": v, **({"id": f"p{i}"} if ids else {}),
              **({"category": categories[i]} if categories else {})} for i, v in enumerate(values)]
    return MetricResult(name, mean_of("x")(items), items, mean_of("x"), higher_is_better=higher_is_better)


# ---- bootstrap

def test_interval_of_a_constant_is_the_constant():
    interval = bootstrap_interval(_result([1.0] * 20))
    assert (interval.low, interval.high) == (1.0, 1.0)


def test_interval_of_a_fair_coin_matches_the_binomial_width():
    # mean 0.5 over n = 100: standard error 0.05, so the 95% interval is about 0.5 +- 0.098
    result = _result([0.0, 1.0] * 50)
    interval = bootstrap_interval(result, resamples=2000, seed=0)
    assert 0.38 < interval.low < 0.43 and 0.57 < interval.high < 0.62
    assert bootstrap_interval(result, resamples=2000, seed=0) == interval  # seeded
    spread = _result([0.37 * i % 1 for i in range(50)])  # continuous values: percentiles move with the seed
    assert bootstrap_interval(spread, seed=1) != bootstrap_interval(spread, seed=2)


def test_clustered_items_are_resampled_whole_and_the_interval_keeps_its_coverage():
    """Twenty requests, each wrapped five ways with the same answer (all five refused or none): the
    information is 20 answers, not 100. Over many simulated studies the cluster bootstrap's 95%
    interval holds the true rate about 95% of the time; resampling the 100 items as if independent
    (the same items without ``cluster``) is too narrow and misses far more often."""
    rng = np.random.default_rng(0)
    covered = {"cluster": 0, "items": 0}
    studies = 200
    for study in range(studies):
        refused = rng.random(20) < 0.5
        items = [{"id": f"r{r}|w{w}", "cluster": f"r{r}", "x": float(refused[r])} for r in range(20) for w in range(5)]
        for kind, rows in (("cluster", items), ("items", [{k: v for k, v in row.items() if k != "cluster"}
                                                         for row in items])):
            interval = percentile_interval(rows, mean_of("x"), resamples=400, seed=study)
            covered[kind] += interval.contains(0.5)
    assert covered["cluster"] / studies > 0.9
    assert covered["items"] / studies < 0.75
    paired, is_paired = delta_interval(MetricResult("m", 0.5, items, mean_of("x")),
                                       MetricResult("m", 0.5, items, mean_of("x")))
    assert is_paired and paired.low == paired.high == 0.0  # paired draws keep clusters aligned
    unpaired_rows = [{k: v for k, v in row.items() if k != "id"} for row in items]  # no ids: resampled apart
    flat_rows = [{"x": row["x"]} for row in items]
    widths = []
    for rows in (unpaired_rows, flat_rows):
        interval, is_paired = delta_interval(MetricResult("m", 0.5, rows, mean_of("x")),
                                             MetricResult("m", 0.5, rows, mean_of("x")), resamples=400)
        assert not is_paired
        widths.append(interval.high - interval.low)
    assert widths[0] > 1.5 * widths[1]  # the unpaired change also resamples whole clusters


def test_empty_items_give_nan():
    interval = percentile_interval([], mean_of("x"))
    assert interval.low != interval.low and interval.high != interval.high


def test_paired_delta_cancels_shared_probe_variation():
    # every probe's score rises by exactly 0.1: paired resampling sees only that shift,
    # unpaired resampling sees the large spread between probes
    values = [0.05 * i for i in range(20)]
    baseline, candidate = _result(values), _result([v + 0.1 for v in reversed(values)][::-1])
    paired, is_paired = delta_interval(baseline, candidate)
    assert is_paired
    assert paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    unpaired, is_paired = delta_interval(_result(values, ids=False), _result([v + 0.1 for v in values], ids=False))
    assert not is_paired
    assert unpaired.low < 0.0 < 0.2 < unpaired.high


def test_regression_flag_follows_the_interval_and_direction():
    worse = compare(_result([0.0] * 10 + [1.0] * 10), _result([1.0] * 20), "m")
    assert worse.change == pytest.approx(0.5) and worse.paired and worse.regression
    # the same change on a higher-is-better metric is an improvement
    better = compare(_result([0.0] * 10 + [1.0] * 10, higher_is_better=True),
                     _result([1.0] * 20, higher_is_better=True), "m")
    assert not better.regression
    noisy = compare(_result([0.0, 1.0] * 10), _result([1.0, 0.0] * 9 + [1.0, 1.0]), "m")
    assert noisy.change == pytest.approx(0.05) and not noisy.regression  # interval straddles 0


# ---- suite loop, with planted metric modules

@pytest.fixture
def planted_modules(monkeypatch):
    """``fake_rate``: 30% refusals on the baseline, 60% on the candidate (by model name);
    ``fake_pair``: an evaluate_pair metric; ``fake_broken``: raises."""
    rate = types.ModuleType("fake_rate")
    rate.METRICS = {"fake_refusal": "rate"}

    def evaluate(model, *, limit=None):
        refused = 3 if model.name == "baseline" else 6
        n = limit or 10
        items = [{"id": f"q{i}", "category": "a" if i % 2 else "b", "refused": int(i < refused)}
                 for i in range(n)]
        return [MetricResult("fake_refusal", mean_of("refused")(items), items, mean_of("refused"),
                             higher_is_better=False)]

    rate.evaluate = evaluate
    pair = types.ModuleType("fake_pair")
    pair.METRICS = {"fake_kl": "score"}
    pair.evaluate_pair = lambda baseline, candidate, *, limit=None: [
        MetricResult("fake_kl", 0.25, [{"id": "a", "kl": 0.25}] * 4, mean_of("kl"), unit="score")]
    broken = types.ModuleType("fake_broken")

    def explode(model, *, limit=None):
        raise RuntimeError("planted failure")

    broken.evaluate = explode
    for module in (rate, pair, broken):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return ["fake_rate", "fake_pair", "fake_broken"]


def test_run_suite_compares_records_timing_and_keeps_going(planted_modules):
    models = [types.SimpleNamespace(name=name) for name in ("baseline", "candidate")]
    messages = []
    run = run_suite(*models, planted_modules, limit=10, log=messages.append)
    by_name = {c.name: c for c in run.comparisons}
    assert by_name["fake_refusal"].baseline.value == pytest.approx(0.3)
    assert by_name["fake_refusal"].candidate.value == pytest.approx(0.6)
    assert by_name["fake_refusal"].change == pytest.approx(0.3)
    assert by_name["fake_refusal"].paired
    assert by_name["fake_kl"].baseline is None and by_name["fake_kl"].change == 0.25
    assert list(run.errors) == ["fake_broken"] and "planted failure" in run.errors["fake_broken"]
    assert set(run.seconds) == set(planted_modules)
    assert messages[-1].startswith("fake_broken: failed in")
    # per category: b = even ids 0,2,4,6,8; candidate refuses ids < 6 -> b: 3/5, a: 1,3,5 -> 3/5... a: {1,3,5}
    assert per_category(by_name["fake_refusal"].candidate) == {"a": 0.6, "b": 0.6}
    assert per_category(by_name["fake_refusal"].baseline) == {"a": 0.2, "b": 0.4}
    with pytest.raises(RuntimeError, match="planted failure"):
        run_suite(*models, ["fake_broken"], strict=True)


def test_a_baseline_cache_evaluates_the_baseline_once_for_several_candidates(planted_modules, monkeypatch):
    rate = sys.modules["fake_rate"]
    seen = []
    original = rate.evaluate
    monkeypatch.setattr(rate, "evaluate", lambda model, *, limit=None: seen.append(model.name) or
                        original(model, limit=limit))
    baseline = types.SimpleNamespace(name="baseline", path="start")
    candidates = [types.SimpleNamespace(name="candidate", path=f"seed{seed}") for seed in range(3)]
    cache = {}
    runs = [run_suite(baseline, candidate, ["fake_rate", "fake_pair"], limit=10, baseline_cache=cache)
            for candidate in candidates]
    assert seen == ["baseline", "candidate", "candidate", "candidate"]
    assert all(run.comparisons[0].baseline.value == pytest.approx(0.3) for run in runs)
    assert all(run.comparisons[0].change == pytest.approx(0.3) for run in runs)
    run_suite(baseline, candidates[0], ["fake_rate"], limit=8, baseline_cache=cache)  # another limit: evaluated
    run_suite(baseline, candidates[0], ["fake_rate"], limit=10)  # no cache: evaluated
    assert seen[4:] == ["baseline", "candidate", "baseline", "candidate"]


def test_module_limits_override_the_limit_for_the_modules_they_name(planted_modules):
    models = [types.SimpleNamespace(name=name) for name in ("baseline", "candidate")]
    pair_limits = []
    sys.modules["fake_pair"].evaluate_pair = lambda baseline, candidate, *, limit=None: pair_limits.append(limit) or [
        MetricResult("fake_kl", 0.25, [{"id": "a", "kl": 0.25}] * 4, mean_of("kl"), unit="score")]
    run = run_suite(*models, ["fake_rate", "fake_pair"], limit=6, module_limits={"fake_rate": 14})
    assert len(run.comparisons[0].candidate.items) == len(run.comparisons[0].baseline.items) == 14
    assert pair_limits == [6]  # a module the mapping does not name keeps ``limit``


def test_suites_list_the_metric_modules():
    for name in ("default", "quick"):
        assert suite_module.SUITES[name][:3] == ["tether.audit.metrics.refusal_calibration",
                                                 "tether.audit.metrics.toxicity",
                                                 "tether.audit.metrics.drift"]
    with pytest.raises(Exception, match="unknown audit suite 'full'"):
        suite_module.resolve_suite("full")


def test_formatting():
    assert format_value(0.125, "rate") == "12.5%" and format_change(-0.031, "rate") == "-3.1pp"
    assert format_value(0.123456, "score") == "0.1235" and format_change(0.5, "score") == "+0.5"


# ---- the CLI end to end on two tiny saved models

def test_cli_end_to_end_writes_reports_and_gate_exits_3(tmp_path, monkeypatch, capsys):
    from tether.audit.cli import main
    from tether.models.tiny import save_tiny_llama

    baseline, candidate = save_tiny_llama(tmp_path / "a", seed=0), save_tiny_llama(tmp_path / "b", seed=1)
    mine = suite_module.SUITES["quick"][:3]  # this test's metrics; the other modules have their own tests
    monkeypatch.setitem(suite_module.SUITES, "quick", mine)
    out = tmp_path / "audit"
    status = main(["--baseline", str(baseline), "--candidate", str(candidate), "--suite", "quick",
                   "--limit", "2", "--out", str(out), "--resamples", "200",
                   "--fail-on", "over_refusal>+60pp,drift_kl>0.01"])
    captured = capsys.readouterr()
    assert status == 3
    assert "drift_kl>0.01: change" in captured.err and "FAILED" in captured.err
    record = json.loads((out / "audit.json").read_text())
    names = [m["name"] for m in record["metrics"]]
    assert names == ["over_refusal", "unsafe_compliance", "toxicity_emt", "toxicity_prob",
                     "drift_kl", "drift_kl_per_token", "drift_kl_k3"]
    assert record["passed"] is False and record["errors"] == {}
    assert [(g["gate"], g["failed"]) for g in record["gates"]] == [("over_refusal>+60pp", False),
                                                                   ("drift_kl>0.01", True)]
    drift = record["metrics"][4]
    assert drift["baseline"] is None and drift["change"]["value"] > 0.01 and drift["gate_failed"]
    over = record["metrics"][0]
    assert over["baseline"]["n"] == 2 and over["change"]["paired"]
    assert set(over["per_category"]) == {"homonyms", "figurative"}  # limit 2: the first two categories
    assert over["details"]["candidate"]["judge"]["name"].startswith("refusal-")
    assert 0 < over["details"]["candidate"]["judge_accuracy"]["value"] <= 1
    page = (out / "audit.html").read_text()
    assert page.count("data:image/png;base64,") >= 2  # dots + category bars
    assert "<script" not in page and 'src="http' not in page and "<link" not in page  # self-contained
    assert "drift_kl" in page and "gate failed" in page
    assert "over_refusal" in captured.out  # the terminal table
