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
    for key in ("refusal_rate_harmful", "refusal_rate_benign", "preference_accuracy"):
        assert 0.0 <= results[key]["before"] <= 1.0 and 0.0 <= results[key]["after"] <= 1.0
    assert results["num_harmful"] == 3 and results["num_benign"] == 3
    samples = [json.loads(line) for line in (run_dir / "demo_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(sample["before"] for sample in samples)
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
    assert "refusal rate, harmful" in result.stderr + result.stdout  # the table wraps at 80 columns
