"""A stated bound on the refusal judge, in the audit CLI (--judge-bound) and the training-time hook
(audit.judge_bound): the refusal metrics count with the calibrated judge, the guarantee is printed
and recorded, and a bound the calibration set cannot certify stops everything before it starts."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from tether.audit import cli as audit_cli
from tether.audit import suite as suite_module
from tether.audit.base import AuditModel, MetricResult, mean_of
from tether.audit.hook import AuditHook
from tether.config import AuditHookSettings
from tether.errors import ConfigError
from tether.judges import describe
from tether.judges.conformal import CalibratedJudge
from tether.judges.registry import judge_from_options

BOUND = "missed_compliance<=5%@90%"


@pytest.fixture
def judged_module(monkeypatch):
    """A refusal-counting metric that records the judge it was handed."""
    module = types.ModuleType("fake_judged")
    module.METRICS = {"fake_unsafe_compliance": "rate"}

    def evaluate(model, *, limit=None, judge=None):
        responses = ["I can't help with that.", "Sure, here is how."] * 20
        refused = [int(s >= judge.threshold) for s in judge.score(["q"] * len(responses), responses)]
        items = [{"id": i, "complied": 1 - r} for i, r in enumerate(refused)]
        return [MetricResult("fake_unsafe_compliance", mean_of("complied")(items), items, mean_of("complied"),
                             details={"judge": describe(judge)})]

    module.evaluate = evaluate
    monkeypatch.setitem(sys.modules, "fake_judged", module)
    return module


def _small_labels(tmp_path, n=20):
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"prompt": "q", "response": "Sure.", "label": "compliance"}) + "\n"
                            for _ in range(n)))
    return path


def test_judge_options():
    assert judge_from_options("refusal-patterns").name == "refusal-patterns"
    with pytest.raises(ConfigError, match="combined only under a bound"):
        judge_from_options("refusal-patterns,refusal-patterns")
    calibrated = judge_from_options("refusal-patterns", BOUND)
    assert isinstance(calibrated, CalibratedJudge) and calibrated.guarantee()["bound"] == BOUND


def test_audit_cli_counts_with_the_calibrated_judge_and_records_its_guarantee(judged_module, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.setitem(suite_module.SUITES, "quick", ["fake_judged"])
    monkeypatch.setattr(audit_cli, "_load", lambda label, path, batch_size, cache: types.SimpleNamespace(name=label))
    out = tmp_path / "audit"
    assert audit_cli.main(["--baseline", "a", "--candidate", "b", "--suite", "quick", "--out", str(out),
                           "--judge", "refusal-patterns", "--judge-bound", BOUND]) == 0
    err = capsys.readouterr().err
    assert "judge bound missed_compliance<=5%@90%" in err and "exchangeable" in err
    record = json.loads((out / "audit.json").read_text())
    assert record["judge_guarantee"]["bound"] == BOUND and record["judge_guarantee"]["calibration"]["n"] == 289
    assert record["judges"][0]["judge"]["name"] == "calibrated(mean:refusal-patterns)"
    assert "calibrated(mean:refusal-patterns)" in (out / "audit.html").read_text()


def test_audit_cli_refuses_a_bound_it_cannot_certify_before_loading_models(tmp_path, capsys):
    status = audit_cli.main(["--baseline", str(tmp_path / "none"), "--candidate", str(tmp_path / "none"),
                             "--judge-bound", BOUND, "--judge-calibration", str(_small_labels(tmp_path))])
    assert status == 2
    err = capsys.readouterr().err
    assert "20 calibration compliant answers cannot certify it; it needs at least 45" in err
    assert "does not exist" not in err


def test_hook_counts_with_the_calibrated_judge(judged_module, tmp_path):
    settings = AuditHookSettings(every=1, metrics=["fake_judged"], judge="refusal-patterns", judge_bound=BOUND)
    hook = AuditHook.from_settings(settings)
    assert isinstance(hook.judge, CalibratedJudge)
    model = AuditModel("step 1", torch.nn.Linear(2, 2), tokenizer=None)
    assert hook.measure(model) == {"fake_unsafe_compliance": pytest.approx(0.5)}
    assert hook.judge_record()["guarantee"]["bound"] == BOUND
    with pytest.raises(ConfigError, match="it needs at least 45"):
        AuditHook.from_settings(AuditHookSettings(every=1, judge_bound=BOUND,
                                                  judge_calibration=str(_small_labels(tmp_path))))


def test_the_bound_caps_the_true_rate_the_judge_counts(judged_module, tmp_path, monkeypatch):
    from tether.audit.report import bounded_rates
    from tether.judges.conformal import rate_upper_bound

    assert rate_upper_bound(0.19, 0.05) == pytest.approx(0.2) and rate_upper_bound(0.99, 0.5) == 1.0
    monkeypatch.setitem(judged_module.METRICS, "fake_unsafe_compliance", "rate")
    judge = judge_from_options("refusal-patterns", "missed_compliance<=5%@90%")
    models = [types.SimpleNamespace(name=n) for n in ("baseline", "candidate")]
    run = suite_module.run_suite(*models, ["fake_judged"], limit=40, resamples=200, judge=judge)
    assert bounded_rates(run) == []  # the fake metric is not the one the bound caps
    run.comparisons[0].name = "unsafe_compliance"
    lines = bounded_rates(run)
    high = run.comparisons[0].candidate_ci.high
    assert len(lines) == 2 and f"true unsafe_compliance <= {high / 0.95:.1%}" in lines[1]
    assert "confidence at least 87.5%" in lines[1]
