"""--fail-on gates: parsing, checking against known metrics, pass/fail, and the CLI's exit codes."""

from __future__ import annotations

import math

import pytest

from tether.audit.cli import main
from tether.audit.gate import check_gates, evaluate_gates, parse_fail_on
from tether.errors import ConfigError


def test_parse_percentage_points_and_plain_numbers():
    gates = parse_fail_on("over_refusal>+5pp, toxicity_prob > +2pp,drift_kl>0.5,unsafe_compliance<-10pp")
    assert [(g.metric, g.op, g.threshold, g.percentage_points) for g in gates] == [
        ("over_refusal", ">", pytest.approx(0.05), True),
        ("toxicity_prob", ">", pytest.approx(0.02), True),
        ("drift_kl", ">", 0.5, False),
        ("unsafe_compliance", "<", pytest.approx(-0.10), True),
    ]
    assert gates[1].text == "toxicity_prob > +2pp"
    assert parse_fail_on("") == [] and parse_fail_on(None) == [] and parse_fail_on(" , ") == []
    # % on a rate is percentage points too
    (percent,) = parse_fail_on("over_refusal>+5%")
    assert percent.threshold == pytest.approx(0.05) and percent.percentage_points


@pytest.mark.parametrize("bad", ["over_refusal>>5pp", "over_refusal>+5%%", "over_refusal=5pp",
                                 ">5pp", "over_refusal>", "over_refusal>5 pts", "5pp>over_refusal"])
def test_parse_rejects_bad_syntax_naming_the_gate(bad):
    with pytest.raises(ConfigError) as error:
        parse_fail_on(f"drift_kl>0.1,{bad}")
    assert repr(bad.strip()) in str(error.value)
    assert "e.g. over_refusal>+5pp" in str(error.value)


def test_check_gates_unknown_metric_lists_the_known_ones():
    gates = parse_fail_on("over_refusl>+5pp")
    with pytest.raises(ConfigError, match=r"unknown metric 'over_refusl'.*drift_kl, over_refusal"):
        check_gates(gates, {"over_refusal": "rate", "drift_kl": "score"})


def test_check_gates_refuses_percentage_points_on_a_score():
    with pytest.raises(ConfigError, match="drift_kl is a score, not a rate"):
        check_gates(parse_fail_on("drift_kl>+5pp"), {"drift_kl": "score"})
    check_gates(parse_fail_on("drift_kl>0.5,over_refusal>+5%"), {"drift_kl": "score", "over_refusal": "rate"})
    check_gates(parse_fail_on("bias>+5pp,bias>0.1"), {"bias": None})  # unit not declared: accepted


@pytest.mark.parametrize("gate", ["over_refusal>5", "over_refusal>+0.05"])
def test_a_rate_threshold_must_say_its_unit(gate):
    # "over_refusal>5" read as a fraction would be a gate that can never fail
    with pytest.raises(ConfigError, match=r"over_refusal is a rate; say the unit of the threshold, pp or %"):
        check_gates(parse_fail_on(gate), {"over_refusal": "rate"})


def test_gate_outcomes():
    gates = parse_fail_on("over_refusal>+5pp,unsafe_compliance<-5pp,drift_kl>0.5")
    outcomes = evaluate_gates(gates, {"over_refusal": 0.06, "unsafe_compliance": -0.04, "drift_kl": 0.5})
    assert [o.failed for o in outcomes] == [True, False, False]  # 0.5 is not above 0.5
    assert outcomes[0].describe() == "over_refusal>+5pp: change +6.00pp -> FAILED"
    outcomes = evaluate_gates(gates, {"over_refusal": 0.05, "unsafe_compliance": -0.06, "drift_kl": 0.1})
    assert [o.failed for o in outcomes] == [False, True, False]


def test_a_gate_without_evidence_fails_and_says_why():
    gates = parse_fail_on("over_refusal>+5pp,drift_kl>0.5")
    # --limit 0: no probes, so the rate reads 0 on both models and the change 0: not a pass
    outcomes = evaluate_gates(gates, {"over_refusal": 0.0, "drift_kl": math.nan}, {"over_refusal": 0, "drift_kl": 4})
    assert [o.failed for o in outcomes] == [True, True]
    assert outcomes[0].describe() == ("over_refusal>+5pp: no evidence (0 probes measured) -> FAILED; "
                                      "run it with probes (--limit above 0)")
    assert "no evidence" in outcomes[1].describe()
    assert not evaluate_gates(gates[:1], {"over_refusal": 0.0}, {"over_refusal": 12})[0].failed


def test_cli_limit_0_fails_the_gate(capsys, tmp_path, monkeypatch):
    import sys
    import types

    from tether.audit import cli as audit_cli
    from tether.audit import suite as suite_module
    from tether.audit.base import MetricResult, mean_of

    rate = types.ModuleType("fake_rate_gate")
    rate.METRICS = {"fake_refusal": "rate"}
    rate.evaluate = lambda model, *, limit=None: [
        MetricResult("fake_refusal", 0.0, [{"id": i, "r": 0} for i in range(limit)], mean_of("r"))]
    monkeypatch.setitem(sys.modules, "fake_rate_gate", rate)
    monkeypatch.setitem(suite_module.SUITES, "quick", ["fake_rate_gate"])
    monkeypatch.setattr(audit_cli, "_load", lambda label, path, batch_size, cache: types.SimpleNamespace(name=label))
    args = ["--baseline", "a", "--candidate", "b", "--suite", "quick", "--out", str(tmp_path / "out"),
            "--fail-on", "fake_refusal>+5pp"]
    assert main(args + ["--limit", "0"]) == 3
    assert "fake_refusal>+5pp: no evidence (0 probes measured) -> FAILED" in capsys.readouterr().err
    assert main(args + ["--limit", "3"]) == 0


def test_cli_bad_fail_on_exits_2_before_loading_models(capsys, tmp_path):
    # the model paths do not exist: the gate error must come first, before any loading
    status = main(["--baseline", str(tmp_path / "none"), "--candidate", str(tmp_path / "none"),
                   "--fail-on", "over_refusal>>5"])
    assert status == 2
    err = capsys.readouterr().err
    assert "cannot read --fail-on gate 'over_refusal>>5'" in err
    assert "does not exist" not in err


def test_cli_unknown_metric_exits_2(capsys, tmp_path):
    status = main(["--baseline", str(tmp_path / "none"), "--candidate", str(tmp_path / "none"),
                   "--fail-on", "overrefusal>+5pp"])
    assert status == 2
    assert "unknown metric 'overrefusal'" in capsys.readouterr().err


def test_cli_usage_error_returns_2(capsys):
    assert main(["--baseline", "x"]) == 2  # --candidate missing: argparse's own message
    assert "--candidate" in capsys.readouterr().err
