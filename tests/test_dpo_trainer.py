"""DPO end to end on a tiny model: the chosen-vs-rejected margin rises on held-out pairs."""

import json
import math

import pytest
import torch

from tether.algorithms.dpo import DPOConfig, collate_pairs, encode_pairs, train_dpo
from tether.audit.safety_eval import preference_accuracy
from tether.config import load_config
from tether.data import load_records
from tether.engine import read_metrics
from tether.models import load_model
from tether.models.tiny import save_tiny_llama


def write_pairs(path, numbers):
    with path.open("w") as handle:
        for i in numbers:
            handle.write(json.dumps({"prompt": f"Tell me about {i}.", "chosen": f"Sure: {i} is a number.",
                                     "rejected": "No."}) + "\n")


@pytest.fixture
def job(tmp_path):
    save_tiny_llama(tmp_path / "model")
    write_pairs(tmp_path / "train.jsonl", range(0, 40))
    write_pairs(tmp_path / "heldout.jsonl", range(100, 112))
    return tmp_path


def config_for(job, *overrides):
    return load_config(DPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'train.jsonl'}",
        f"data.eval={job / 'heldout.jsonl'}", f"train.output_dir={job / 'runs'}",
        "train.batch_size=4", "train.max_steps=15", "optim.lr=3e-3", "train.progress=false", "train.bf16=false",
        "train.tensorboard=false", *overrides])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_dpo_raises_the_held_out_margin(job, loss_type):
    extra = ["dpo.length_normalize=true", "dpo.beta=0.5"] if loss_type == "ipo" else []
    extra += ["dpo.label_smoothing=0.1"] if loss_type == "robust" else []
    config = config_for(job, f"train.run_name={loss_type}", f"dpo.loss_type={loss_type}", *extra)
    final = train_dpo(config)
    history = read_metrics(config.run_dir())
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # policy == reference
    last = history[-1]
    assert last["eval/rewards/margins"] > 0.5
    assert last["eval/rewards/accuracies"] == 1.0

    base, tokenizer = load_model(job / "model")
    trained, _ = load_model(final)
    pairs = load_records(str(job / "heldout.jsonl"), "preference")
    assert preference_accuracy(trained, tokenizer, pairs) > preference_accuracy(base, tokenizer, pairs)


def test_sft_weight_keeps_chosen_answers_likely(job):
    plain = config_for(job, "train.run_name=plain")
    rpo = config_for(job, "train.run_name=rpo", "dpo.sft_weight=1.0")
    train_dpo(plain), train_dpo(rpo)
    last_plain, last_rpo = read_metrics(plain.run_dir())[-1], read_metrics(rpo.run_dir())[-1]
    assert "nll/chosen" in last_rpo and "nll/chosen" not in last_plain
    assert last_rpo["logps/chosen"] > last_plain["logps/chosen"]


def test_lora_dpo_trains_only_adapters_and_saves_them(job):
    config = config_for(job, "train.run_name=lora", "model.lora.r=4", "optim.lr=1e-2")
    final = train_dpo(config)
    assert (final / "adapter_config.json").is_file()
    assert read_metrics(config.run_dir())[-1]["eval/rewards/margins"] > 0.5


@pytest.mark.parametrize("bf16", [False, True])
def test_reference_logps_are_computed_once_from_the_initial_weights(job, bf16):
    config = config_for(job, f"train.bf16={str(bf16).lower()}")
    model, tokenizer = load_model(job / "model")
    examples = encode_pairs(config.data.train, tokenizer, config)
    from tether.algorithms.dpo import compute_reference, pair_logps

    compute_reference(model, examples, tokenizer.pad_token_id, config, [[4, 5], [0, 1, 2], [3]])
    assert not examples.ref_chosen[:6].isnan().any() and examples.ref_chosen[6:].isnan().all()
    batch = collate_pairs(examples, [0, 1, 2], tokenizer.pad_token_id)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        chosen, rejected = pair_logps(model, batch, average=False)
    # The batch the reference was scored in, under the same autocast: equal to the last bit, also in bf16.
    assert torch.equal(batch["ref_chosen"], chosen.detach().float())
    assert torch.equal(batch["ref_rejected"], rejected.detach().float())


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("lora", [False, True])
def test_the_first_loss_is_log_2_in_either_precision(job, bf16, lora):
    """Policy == reference at step 0, so every pair's loss is -log sigmoid(0) = log 2, under bf16 too:
    the reference is scored in the run's own batches (bf16 rounds other shapes differently)."""
    with (job / "varied.jsonl").open("w") as handle:  # answers of many lengths: batches pad differently
        for i in range(16):
            handle.write(json.dumps({"prompt": f"Tell me about {i}." * (1 + i % 3),
                                     "chosen": f"{i} is a number. " * (1 + i % 5),
                                     "rejected": "No." * (1 + i % 4)}) + "\n")
    config = config_for(job, f"train.run_name=first-{bf16}-{lora}", f"train.bf16={str(bf16).lower()}",
                        f"data.train={job / 'varied.jsonl'}", "train.max_steps=2", "train.grad_accum=2",
                        *(["model.lora.r=4"] if lora else []))
    train_dpo(config)
    first = read_metrics(config.run_dir())[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == 0.0


def test_first_batches_keep_the_batches_that_meet_new_pairs():
    from tether.algorithms.dpo import first_batches

    assert first_batches([[0, 1], [2, 3], [1, 0], [3, 4], [4, 2]]) == [[0, 1], [2, 3], [3, 4]]


def test_pair_logps_equal_scoring_each_full_sequence_alone(job):
    """The batch runs each prompt once for both answers; every answer's log-prob (and its gradient)
    equals scoring prompt + answer alone, as TRL and the parity tests do."""
    from tether.algorithms.dpo import pair_logps
    from tether.losses.logprobs import completion_logps

    config = config_for(job)
    model, tokenizer = load_model(job / "model")
    examples = encode_pairs(config.data.train, tokenizer, config)
    indices = [0, 3, 5]
    batch = collate_pairs(examples, indices, tokenizer.pad_token_id)
    chosen, rejected = pair_logps(model, batch, average=False)
    (chosen.sum() - 2 * rejected.sum()).backward()
    batched_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    alone = {}
    for side in ("chosen_ids", "rejected_ids"):
        values = []
        for i in indices:
            pair = examples.encoded[i]
            ids = torch.tensor([pair["prompt_ids"] + pair[side]])
            mask = torch.tensor([[0] * len(pair["prompt_ids"]) + [1] * len(pair[side])])
            values.append(completion_logps(model, ids, torch.ones_like(ids), mask))
        alone[side] = torch.cat(values)
    (alone["chosen_ids"].sum() - 2 * alone["rejected_ids"].sum()).backward()
    torch.testing.assert_close(chosen.detach(), alone["chosen_ids"].detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(rejected.detach(), alone["rejected_ids"].detach(), atol=1e-5, rtol=1e-6)
    for batched, single in zip(batched_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
