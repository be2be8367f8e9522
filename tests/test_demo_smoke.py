"""A short run of the main job on the real default model (SmolLM2-135M-Instruct)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_smoke_on_the_default_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", "demo", "--steps", "2", "--eval-limit", "3",
         f"train.output_dir={tmp_path}", "train.progress=false", "train.batch_size=4", "train.bf16=false"],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "safety-dpo"
    results = json.loads((run_dir / "demo_results.json").read_text())
    assert set(results["sets"]) == {"boundary test", "heldout.jsonl"}
    for rates in results["sets"].values():
        assert rates["num_harmful"] == 3 and rates["num_benign"] == 3
        for key in ("refusal_rate_harmful", "refusal_rate_benign"):
            for when in ("before", "after"):
                rate = rates[key][when]
                assert rate["n"] == 3 and rate["rate"] == rate["refused"] / 3
                assert rate["interval"][0] <= rate["rate"] <= rate["interval"][1]
        assert 0.0 <= rates["preference_accuracy"]["after"] <= 1.0
        assert -1.0 <= rates["benign_on_topic"]["before"] <= 1.0 and -1.0 <= rates["benign_on_topic"]["after"] <= 1.0
    samples = [json.loads(line) for line in (run_dir / "demo_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and all(sample["before"] for sample in samples)
    assert all(sample["after_on_topic"] is not None for sample in samples if sample["kind"] == "benign_lookalike")
    # the numbers come from the default refusal judge, named in the results, with every score kept
    from tether.judges import default_refusal_judge, describe

    assert results["refusal_judge"] == describe(default_refusal_judge())
    assert all(0.0 <= sample["after_score"] <= 1.0 for sample in samples)
    assert (run_dir / "demo_before_after.png").stat().st_size > 10_000
    # the recipe's training-time audit ran (its baseline at least) and its pick is recorded
    audit = results["training_audit"]
    assert audit["steps"][0]["step"] == 0 and audit["kept_step"] is not None
    assert (run_dir / "demo_training_audit.png").stat().st_size > 10_000
    assert (run_dir / "final" / "adapter_config.json").is_file()
    assert "refused, harmful" in result.stderr + result.stdout  # the table wraps at 80 columns
    assert audit["gates"] == ["over_refusal>10% (value)"]


def test_arith_demo_reports_accuracy_with_intervals(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", "demo", "arith", "--steps", "1", "--eval-limit", "6",
         f"train.output_dir={tmp_path}", "train.progress=false", "train.bf16=false"],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "arith-grpo"
    results = json.loads((run_dir / "demo_results.json").read_text())
    intervals = results["accuracy_ci95"]
    for stage in ("base", "after_sft", "after_grpo"):
        assert intervals[stage]["n"] == 6 and intervals[stage]["value"] == pytest.approx(results["accuracy"][stage])
        assert intervals[stage]["low"] <= intervals[stage]["value"] <= intervals[stage]["high"]
    change = intervals["grpo_change"]
    assert change["value"] == pytest.approx(results["accuracy"]["after_grpo"] - results["accuracy"]["after_sft"])
    assert change["low"] <= change["value"] <= change["high"] and 0.0 <= change["p_value"] <= 1.0
    # the answers behind each held-out number are kept, one row per task
    for step in (0, 1):
        answers = (run_dir / "heldout_answers" / f"step-{step:05d}.jsonl").read_text().splitlines()
        assert len(answers) == 6 and all(json.loads(line)["id"] for line in answers)
    assert "paired bootstrap" in result.stdout + result.stderr
