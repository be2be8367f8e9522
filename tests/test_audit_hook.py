"""Training-time audit hook: an SFT run that logs a planted metric, and one that stops on it."""

from __future__ import annotations

import json

import pytest

from tether.audit.hook import BASELINE_FILE, AuditHook, AuditRegressionError
from tether.audit.likelihood import option_logprobs
from tether.config import SFTConfig, load_config
from tether.engine import latest_checkpoint, read_metrics
from tether.errors import ConfigError
from tether.models.tiny import save_tiny_llama

PROMPT, TARGET = "What is 21 plus 21?", "The answer is 42."


def answer_logprob(model):
    """Planted metric: mean per-token log-prob of the answer the SFT data teaches. It starts near
    log(1/320) on the random model and rises as SFT learns the answer."""
    (score,) = option_logprobs(model, [PROMPT], [[TARGET]])[0]
    return {"answer_logprob": score}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("hook")
    save_tiny_llama(work / "model")
    with (work / "sft.jsonl").open("w") as handle:
        for _ in range(16):
            handle.write(json.dumps({"prompt": PROMPT, "completion": TARGET}) + "\n")
    return work


def sft_config(work, name, *audit):
    return load_config(SFTConfig, None, [
        f"model.path={work / 'model'}", f"data.train={work / 'sft.jsonl'}", f"train.output_dir={work / 'runs'}",
        f"train.run_name={name}", "train.batch_size=8", "train.max_steps=12", "optim.lr=3e-3",
        "optim.schedule=constant", "train.progress=false", "train.tensorboard=false", "train.bf16=false",
        "audit.metrics=[test_audit_hook:answer_logprob]", *audit])


def audit_lines(run_dir):
    return [row for row in read_metrics(run_dir) if "audit/answer_logprob" in row]


def test_hook_logs_every_n_steps(workdir):
    from tether.algorithms.sft import train_sft

    config = sft_config(workdir, "logs", "audit.every=4")
    final = train_sft(config)
    lines = audit_lines(workdir / "runs" / "logs")
    assert [row["step"] for row in lines] == [4, 8, 12]
    values = [row["audit/answer_logprob"] for row in lines]
    baseline = json.loads((workdir / "runs" / "logs" / BASELINE_FILE).read_text())["answer_logprob"]
    assert baseline < values[0] < values[-1]  # SFT on the answer makes it likelier
    assert (final / "model.safetensors").is_file()
    # training lines are untouched: every step still logs its loss
    assert [row["step"] for row in read_metrics(workdir / "runs" / "logs") if "loss" in row] == list(range(1, 13))


def test_hook_stops_training_on_a_regression(workdir):
    """Gate: the planted metric may not rise more than 1.2 nats per token above the baseline. The
    run above shows it does within 12 steps, so training must stop at the first audit past it,
    before that step's checkpoint."""
    from tether.algorithms.sft import train_sft

    config = sft_config(workdir, "stops", "audit.every=2", "train.save_every=2", "audit.stop_on=answer_logprob>+1.2")
    with pytest.raises(AuditRegressionError, match=r"audit at step (\d+) failed: answer_logprob>\+1\.2") as caught:
        train_sft(config)
    run_dir = workdir / "runs" / "stops"
    lines = audit_lines(run_dir)
    baseline = json.loads((run_dir / BASELINE_FILE).read_text())["answer_logprob"]
    changes = [row["audit/answer_logprob"] - baseline for row in lines]
    # every audit but the last passed; the last crossed the threshold and stopped the run
    assert all(change <= 1.2 for change in changes[:-1]) and changes[-1] > 1.2
    assert [row["audit/answer_logprob/change"] for row in lines] == pytest.approx(changes)
    stopped_at = lines[-1]["step"]
    assert stopped_at < 12 and f"step {stopped_at} failed" in str(caught.value)
    # the newest checkpoint is the last audit that passed; no final model was written
    last = latest_checkpoint(run_dir / "checkpoints")
    assert stopped_at > 2, "the metric crossed at the first audit: no passing checkpoint to check"
    assert last is not None and last.name == f"checkpoint-{stopped_at - 2:07d}"
    assert str(last) in str(caught.value)
    assert not (run_dir / "final").exists()


def test_unknown_gate_metric_fails_before_training(workdir):
    from tether.algorithms.sft import train_sft

    config = sft_config(workdir, "bad_gate", "audit.every=2", "audit.stop_on=over_refusal>+5pp")
    with pytest.raises(ConfigError, match="audit.stop_on names over_refusal"):
        train_sft(config)
    assert latest_checkpoint(workdir / "runs" / "bad_gate" / "checkpoints") is None


def test_gate_syntax_is_checked_when_the_config_loads(workdir):
    with pytest.raises(ConfigError, match="cannot read --fail-on gate"):
        sft_config(workdir, "x", "audit.every=2", "audit.stop_on=answer_logprob rises a lot")


def test_metric_names_resolve():
    hook = AuditHook(3, ["refusal_calibration", "drift", answer_logprob], stop_on="over_refusal>+5pp")
    assert [label for label, _ in hook.metrics] == ["refusal_calibration", "drift", "answer_logprob"]
    assert hook._needs_pairs()  # drift compares against the starting model
    with pytest.raises(ConfigError, match="unknown audit metric"):
        AuditHook(3, ["no_such_metric"])


def test_pair_metric_compares_with_the_starting_model(workdir):
    """Drift is measured against the starting model reloaded from model.path: exactly 0 at the
    baseline, positive once training has moved the weights."""
    from tether.algorithms.sft import train_sft

    train_sft(sft_config(workdir, "drift", "audit.every=2", "audit.limit=1", "audit.metrics=[drift]",
                         "train.max_steps=2", "audit.stop_on=drift_kl>1000"))
    run_dir = workdir / "runs" / "drift"
    assert json.loads((run_dir / BASELINE_FILE).read_text())["drift_kl"] == 0.0
    (line,) = [row for row in read_metrics(run_dir) if "audit/drift_kl" in row]
    assert line["step"] == 2 and line["audit/drift_kl"] > 0
    assert line["audit/drift_kl/change"] == line["audit/drift_kl"]  # a pair metric is its own change
