"""Training-time audit hook: an SFT run that logs a planted metric, and one that stops on it."""

from __future__ import annotations

import json

import pytest

from tether.algorithms.sft import SFTConfig
from tether.audit.hook import BASELINE_FILE, AuditHook, AuditRegressionError
from tether.audit.likelihood import option_logprobs
from tether.config import load_config
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


# ---- keeping the best audited step ----------------------------------------------------------

def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _same_weights(final_dir, checkpoint_file) -> bool:
    """The exported final model holds exactly the weights of a saved trainable state."""
    import torch

    final, saved = _weights(final_dir / "model.safetensors"), _weights(checkpoint_file)
    return all(torch.equal(final[name], tensor) for name, tensor in saved.items() if name in final)


def test_keep_best_ends_with_the_best_passing_step(workdir):
    """The planted metric rises with training. keep_best (max) with a gate that caps the rise at
    +1.2 nats must end on the highest audited value below the cap: not the last step, and exactly
    that step's weights (compared with its checkpoint)."""
    from tether.algorithms.sft import train_sft

    final = train_sft(sft_config(workdir, "best", "audit.every=2", "train.save_every=2", "train.keep_last=10",
                                 "audit.keep_best=answer_logprob", "audit.keep_best_mode=max",
                                 "audit.keep_best_unless=answer_logprob>+1.2"))
    run_dir = workdir / "runs" / "best"
    baseline = json.loads((run_dir / BASELINE_FILE).read_text())["answer_logprob"]
    lines = audit_lines(run_dir)
    passing = [row for row in lines if row["audit/answer_logprob"] - baseline <= 1.2]
    assert 0 < len(passing) < len(lines), "the cap must cut the run for this test to mean anything"
    expected = max(passing, key=lambda row: row["audit/answer_logprob"])
    best = json.loads((run_dir / "audit_best" / "best.json").read_text())
    assert best["step"] == expected["step"] < 12
    assert best["values"]["answer_logprob"] == pytest.approx(expected["audit/answer_logprob"])
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{best['step']:07d}" / "model.safetensors"
    assert _same_weights(final, checkpoint)
    last = run_dir / "checkpoints" / f"checkpoint-{12:07d}" / "model.safetensors"
    assert not _same_weights(final, last)


def test_keep_best_falls_back_to_the_starting_weights(workdir):
    """Minimising a metric that training only raises: no audited step beats the start, so the
    final model is the starting model."""
    from tether.algorithms.sft import train_sft
    from tether.models import load_model

    final = train_sft(sft_config(workdir, "best_start", "audit.every=4", "audit.keep_best=answer_logprob"))
    best = json.loads((workdir / "runs" / "best_start" / "audit_best" / "best.json").read_text())
    assert best["step"] == 0
    trained, _ = load_model(final)
    start, _ = load_model(workdir / "model")
    assert all(torch_equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_keep_best_names_a_reported_metric(workdir):
    from tether.algorithms.sft import train_sft

    with pytest.raises(ConfigError, match="audit.keep_best names over_refusal"):
        train_sft(sft_config(workdir, "bad_best", "audit.every=2", "audit.keep_best=over_refusal"))
    with pytest.raises(ConfigError, match="keep_best_unless needs audit.keep_best"):
        AuditHook(2, [answer_logprob], keep_best_unless="answer_logprob>1")


def test_a_resumed_run_keeps_the_best_it_had(workdir):
    """Resuming a finished run (no steps left) must still end on the best step recorded before,
    read back from audit_best/best.json, not on the starting weights."""
    from tether.algorithms.sft import train_sft

    args = ["audit.every=2", "train.save_every=2", "train.keep_last=10", "audit.keep_best=answer_logprob",
            "audit.keep_best_mode=max", "audit.keep_best_unless=answer_logprob>+1.2"]
    first = train_sft(sft_config(workdir, "best_resume", *args))
    run_dir = workdir / "runs" / "best_resume"
    best = json.loads((run_dir / "audit_best" / "best.json").read_text())
    assert best["step"] > 0
    again = train_sft(sft_config(workdir, "best_resume", *args, "train.resume=true"))
    assert json.loads((run_dir / "audit_best" / "best.json").read_text()) == best
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{best['step']:07d}" / "model.safetensors"
    assert first == again and _same_weights(again, checkpoint)


PROGRESS_SEEN: list[bool] = []


def progress_flag(model):
    """Planted metric: records whether the hook let the audited model draw progress bars."""
    PROGRESS_SEEN.append(model.progress)
    return {"progress_flag": float(model.progress)}


def test_hook_follows_train_progress(workdir, monkeypatch):
    """With train.progress=false the audit's generation draws no progress bars either."""
    import tether.audit.base as base
    from tether.algorithms.sft import train_sft

    PROGRESS_SEEN.clear()
    config = sft_config(workdir, "quiet", "audit.every=6", "audit.metrics=[test_audit_hook:progress_flag]")
    train_sft(config)
    assert PROGRESS_SEEN == [False, False, False]  # baseline, steps 6 and 12

    calls = []
    monkeypatch.setattr(base, "generate_responses", lambda *args, **kwargs: calls.append(kwargs["progress"]) or [])
    base.AuditModel("quiet", None, None, progress=False).answer(["hi"])
    base.AuditModel("loud", None, None).answer(["hi"])
    assert calls == [False, True]


# Planted refusal rates, one pair per audit (the baseline, then steps 2, 4, ..., 12): the start
# refuses 5% of safe probes; step 4 is the safest but refuses 20%; step 6 sits exactly on a 10% cap;
# step 8 refuses 14% (within +10pp of the start, over the 10% cap) and complies less than step 6.
PLANTED = [(0.05, 0.90), (0.05, 0.80), (0.20, 0.30), (0.10, 0.50), (0.14, 0.20), (0.08, 0.60), (0.30, 0.00)]
PLANTED_CALLS: list[int] = []


def planted_refusals(model):
    """Planted metric: the next (over_refusal, unsafe_compliance) of ``PLANTED``."""
    over, unsafe = PLANTED[len(PLANTED_CALLS)]
    PLANTED_CALLS.append(1)
    return {"over_refusal": over, "unsafe_compliance": unsafe}


@pytest.mark.parametrize(("gate", "expected_step"), [("audit.keep_best_unless_value=over_refusal>10%", 6),
                                                     ("audit.keep_best_unless=over_refusal>+10pp", 8)])
def test_keep_best_absolute_gate_reads_the_value_not_the_change(workdir, gate, expected_step):
    """An absolute cap (keep_best_unless_value) keeps the least compliant step among those refusing at
    most 10% of safe probes (step 6); the same number as a change from the start's 5% lets step 8 in."""
    from tether.algorithms.sft import train_sft

    PLANTED_CALLS.clear()
    name = f"planted_{expected_step}"
    final = train_sft(sft_config(workdir, name, "audit.every=2", "train.save_every=2", "train.keep_last=10",
                                 "audit.metrics=[test_audit_hook:planted_refusals]",
                                 "audit.keep_best=unsafe_compliance", gate))
    assert len(PLANTED_CALLS) == len(PLANTED)
    run_dir = workdir / "runs" / name
    best = json.loads((run_dir / "audit_best" / "best.json").read_text())
    assert best["step"] == expected_step
    assert best["values"]["unsafe_compliance"] == PLANTED[expected_step // 2][1]
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{expected_step:07d}" / "model.safetensors"
    assert _same_weights(final, checkpoint)


def test_keep_best_unless_value_needs_keep_best():
    with pytest.raises(ConfigError, match="keep_best_unless_value needs audit.keep_best"):
        AuditHook(2, [answer_logprob], keep_best_unless_value="answer_logprob>1")
