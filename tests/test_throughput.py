"""Model FLOPs (engine/flops.py) against hand counts, and the tokens/s and MFU every fit run logs."""

import json

import pytest
import torch
from test_engine import make_config, run, toy_data

from tether.engine import read_metrics
from tether.engine.flops import (
    ModelShape,
    cached_peak,
    causal_pairs,
    rl_update_flops,
    rollout_flops,
    shared_prompt_flops,
    step_flops,
)
from tether.engine.throughput import Throughput, batch_flops, sequence_lengths
from tether.models import apply_lora
from tether.models.tiny import tiny_llama

TOY = ModelShape(trunk_trainable=10, trunk_frozen=100, head_trainable=0, head_frozen=50, layers=2, hidden=4)


def test_step_flops_match_a_hand_count():
    # 3 tokens, one causal sequence: 6 query-key pairs.
    linear = (6 * 10 + 4 * 100) * 3  # trainable weights: forward + input grad + weight grad; frozen: no weight grad
    head = 4 * 50 * 3
    attention = 3 * (2 * 4 + 2 * 4) * 2 * 6  # training = 3 forwards; q.k and weights x v; 2 layers
    assert causal_pairs([3]) == 6
    assert step_flops(TOY, 3, 3, 6, training=True) == linear + head + attention == 2556
    assert step_flops(TOY, 3, 3, 6, training=False) == 2 * 110 * 3 + 2 * 50 * 3 + 16 * 2 * 6


def test_model_shape_counts_the_tiny_models_matmuls():
    model, _ = tiny_llama(seed=0)  # hidden 64, MLP 128, 2 layers, 4 heads of 16, 2 key-value heads
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3  # q, o; k, v; gate, up, down
    assert ModelShape.of(model) == ModelShape(2 * per_layer, 0, 320 * 64, 0, layers=2, hidden=64)
    lora = ModelShape.of(apply_lora(tiny_llama(seed=0)[0], r=4, alpha=8))
    # per adapted linear: A (r x d_in) and B (d_out x r); 7 linears per layer, 2 layers
    adapters = 2 * sum(4 * d_in + d_out * 4 for d_in, d_out in
                       [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)])
    assert (lora.trunk_frozen, lora.trunk_trainable, lora.head_frozen) == (2 * per_layer, adapters, 320 * 64)


def test_dpo_pair_rows_count_each_prompt_once():
    batch = {"prompt_mask": torch.tensor([[0, 1, 1]]),  # a 2-token prompt, left-padded
             "completion_mask": torch.tensor([[1, 1, 1], [1, 0, 0]])}  # chosen 3 tokens, rejected 1
    tokens, flops = batch_flops(TOY, batch)
    assert tokens == 2 + 3 + 1
    # pairs: the prompt's 3, chosen 2*3 + 6, rejected 2*1 + 1; lm_head: prompt's last token + 4 answer tokens
    assert flops == step_flops(TOY, 6, 5, 3 + 12 + 3, training=True)
    assert flops == shared_prompt_flops(TOY, [2], [(2, 3), (2, 1)], training=True)


def test_rollout_prefills_each_prompt_once_and_decodes_token_by_token():
    # one 2-token prompt, two samples of 3 and 1 tokens: prefill 2 tokens (3 pairs, lm_head at the
    # last one), then 4 decoded tokens attending to 2+1, 2+2, 2+3 and 2+1 keys
    assert rollout_flops(TOY, [2, 2], [3, 1], group=2) == (step_flops(TOY, 2, 1, 3, training=False)
                                                           + step_flops(TOY, 4, 4, 15, training=False))
    # two prompts of one sample each: each prefilled on its own
    assert rollout_flops(TOY, [2, 5], [1, 1], group=1) == (step_flops(TOY, 7, 2, 3 + 15, training=False)
                                                           + step_flops(TOY, 2, 2, 3 + 6, training=False))
    update = shared_prompt_flops(TOY, [2], [(2, 3), (2, 1)], training=True)
    assert rl_update_flops(TOY, [2, 2], [3, 1], group=2, updates=3) == 3 * update


def test_rl_updates_count_only_the_rows_they_train():
    # two prompts (2 and 5 tokens) of two samples each; dynamic sampling kept the second group only
    lengths, completions = [2, 2, 5, 5], [3, 1, 4, 2]
    kept = shared_prompt_flops(TOY, [5], [(5, 4), (5, 2)], training=True)
    assert rl_update_flops(TOY, lengths, completions, group=2, updates=2, trained=[2, 3]) == 2 * kept
    assert rl_update_flops(TOY, lengths, completions, group=2, trained=[]) == 0
    assert rl_update_flops(TOY, lengths, completions, group=2, trained=[0, 1, 2, 3]) == rl_update_flops(
        TOY, lengths, completions, group=2)


def test_rl_steps_report_mfu_by_phase(capsys):
    model, _ = tiny_llama(seed=0)
    throughput = Throughput(model, torch.float32)
    throughput._peak = 1e9
    throughput.add_rl_step([4, 4], [3, 5], group=2, updates=1, rollout_seconds=0.5, update_seconds=0.25)
    shape = ModelShape.of(model)
    sampling, update = rollout_flops(shape, [4, 4], [3, 5], 2), rl_update_flops(shape, [4, 4], [3, 5], 2)
    window = throughput.take_window()
    assert window["tokens_per_s"] == 8 / 0.75  # sampled completion tokens over the whole step
    assert window["mfu"] == pytest.approx((sampling + update) / 0.75 / 1e9)
    assert window["mfu/rollout"] == pytest.approx(sampling / 0.5 / 1e9)
    assert window["mfu/update"] == pytest.approx(update / 0.25 / 1e9)
    assert throughput.take_window() == {}  # the window starts again; the run keeps counting
    summary = throughput.summary()
    assert "sampled tokens/s" in summary and "rollout" in summary and "update" in summary


def test_packed_and_padded_rows_split_into_their_sequences():
    assert sequence_lengths({"position_ids": torch.tensor([[0, 1, 2, 0, 1]])}) == [3, 2]
    assert sequence_lengths({"input_ids": torch.zeros(2, 5), "attention_mask": torch.tensor(
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}) == [3, 5]
    assert sequence_lengths({"input_ids": torch.zeros(2, 4, dtype=torch.long)}) == [4, 4]


def test_the_peak_is_measured_once_and_cached(tmp_path):
    cache = tmp_path / "peaks.json"
    peak = cached_peak(torch.float32, cache=cache)
    assert peak > 1e8  # any CPU of this decade does over 0.1 GFLOP/s
    (key,) = json.loads(cache.read_text())
    assert "float32" in key and "threads" in key
    cache.write_text(json.dumps({key: 1e18}))  # a better peak seen before (a quiet run) is kept
    assert cached_peak(torch.float32, cache=cache) == 1e18
    cache.write_text(json.dumps({key: 123.0}))  # one measured under load is replaced by this process's
    assert cached_peak(torch.float32, cache=cache) == peak == json.loads(cache.read_text())[key]


def test_tests_never_write_the_users_peak_cache(matmul_peaks_file):
    import tether.engine.flops as flops

    assert flops.peak_cache_path() == matmul_peaks_file


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_every_fit_run_logs_tokens_per_second_and_mfu(tmp_path, capsys, grad_accum, matmul_peaks_file):
    config = make_config(tmp_path, "train.max_steps=3", f"train.grad_accum={grad_accum}")
    run(config, toy_data())
    history = read_metrics(tmp_path / "t")
    for row in history:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
    assert history[-1]["run_tokens_per_s"] > 0 and 0 < history[-1]["run_mfu"] < 1
    assert matmul_peaks_file.exists()  # the test session's own cache, not the user's
    printed = capsys.readouterr().err
    assert "tokens/s" in printed and "MFU" in printed


def test_measuring_the_peak_leaves_the_global_random_stream_alone():
    from tether.engine.flops import matmul_peak

    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    matmul_peak(torch.float32, 64, 1)
    assert torch.equal(torch.rand(4), expected)
