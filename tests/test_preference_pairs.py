"""One function scores preference pairs (algorithms/preference_pairs.py:score_pairs): DPO's
reference and held-out loss, the safety demo's preference accuracy and the data audit's margins."""

import json

import pytest
import torch

from tether.algorithms.dpo import DPOConfig, compute_reference, evaluate_pairs, first_batches
from tether.algorithms.preference_pairs import PreferenceExamples, evaluation_batches, score_pairs
from tether.audit.data_audit import implicit_reward_margins
from tether.audit.safety_eval import preference_accuracy
from tether.config import load_config
from tether.data import PreferenceRecord, encode_preference, encode_prompt
from tether.models.tiny import save_tiny_llama, tiny_llama

PAIRS = [PreferenceRecord(prompt=f"Tell me about {i}.", chosen=f"Sure: {i} is a number." * (i % 3 + 1),
                          rejected="No.") for i in range(7)]


def full_row_logp(model, tokenizer, prompt, answer_ids):
    """log p(answer | prompt) from one plain forward over prompt + answer (no packing)."""
    prompt_ids = encode_prompt(prompt, tokenizer)
    ids = torch.tensor([prompt_ids + answer_ids])
    logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    return logps.gather(-1, targets[:, None]).squeeze(-1)[len(prompt_ids) - 1:].sum().item()


def test_score_pairs_matches_plain_forwards_and_restores_training_mode():
    model, tokenizer = tiny_llama()
    model.train()
    examples = PreferenceExamples([encode_preference(p, tokenizer, 512) for p in PAIRS])
    # pairs 5 and 6 are in no batch: NaN, not a number from somewhere else
    chosen, rejected = score_pairs(model, examples, tokenizer.pad_token_id, [[3, 0, 4], [1, 2]], average=False)
    assert model.training
    with torch.no_grad():
        model.eval()
        for i in range(5):
            encoded = examples.encoded[i]
            assert chosen[i].item() == pytest.approx(
                full_row_logp(model, tokenizer, PAIRS[i].prompt, encoded["chosen_ids"]), abs=1e-4)
            assert rejected[i].item() == pytest.approx(
                full_row_logp(model, tokenizer, PAIRS[i].prompt, encoded["rejected_ids"]), abs=1e-4)
    assert torch.isnan(chosen[5:]).all() and torch.isnan(rejected[5:]).all()


def test_accuracy_and_margins_are_read_from_score_pairs(tmp_path):
    save_tiny_llama(tmp_path / "a", seed=0)
    save_tiny_llama(tmp_path / "b", seed=1)
    model, tokenizer = tiny_llama(seed=0)
    examples = PreferenceExamples([encode_preference(p, tokenizer, 512) for p in PAIRS])
    batches = evaluation_batches(len(PAIRS), 3)
    chosen, rejected = score_pairs(model, examples, tokenizer.pad_token_id, batches, average=True)
    assert preference_accuracy(model, tokenizer, PAIRS, batch_size=3) == (chosen > rejected).float().mean().item()

    margins = implicit_reward_margins(PAIRS, str(tmp_path / "a"), str(tmp_path / "b"), beta=0.5, batch_size=3)
    reference, _ = tiny_llama(seed=1)
    policy_c, policy_r = score_pairs(model, examples, tokenizer.pad_token_id, batches, average=False)
    ref_c, ref_r = score_pairs(reference, examples, tokenizer.pad_token_id, batches, average=False)
    expected = 0.5 * ((policy_c - ref_c) - (policy_r - ref_r))
    assert margins == pytest.approx(expected.numpy(), abs=1e-5)


@pytest.mark.parametrize("bf16", [False, True])
def test_held_out_rewards_of_the_untrained_policy_are_exactly_zero(tmp_path, bf16):
    """The held-out loss is scored in the batches and under the autocast of its reference, so
    before training every implicit reward is 0 in bf16 too (it used to score without autocast)."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in PAIRS))
    config = load_config(DPOConfig, None, [f"model.path={tmp_path}", f"data.train={path}", "train.batch_size=3",
                                           "train.progress=false", f"train.bf16={str(bf16).lower()}"])
    model, tokenizer = tiny_llama()
    examples = PreferenceExamples([encode_preference(p, tokenizer, 512) for p in PAIRS])
    compute_reference(model, examples, tokenizer.pad_token_id, config,
                      first_batches(evaluation_batches(len(PAIRS), 3)))
    metrics = evaluate_pairs(model, examples, tokenizer.pad_token_id, config)
    assert metrics["rewards/chosen"] == 0.0 and metrics["rewards/rejected"] == 0.0
    assert metrics["loss"] == pytest.approx(0.6931472, abs=1e-6)  # log 2
