"""tether's GRPO-family policy losses give TRL's loss, gradient and clip/KL metrics on the same tensors.

TRL's loss lives inside ``GRPOTrainer._compute_loss``, which also runs the model. We call that real
method on a trainer built with ``object.__new__(GRPOTrainer)``: its attributes are copied from a real
``trl.GRPOConfig`` the way ``GRPOTrainer.__init__`` does (trl 1.16, grpo_trainer.py lines 782-983),
``_get_per_token_logps_and_entropies`` is replaced by a function returning our log-prob tensor, and the
accelerator is a single-process stand-in (gather and reduce are the identity). So TRL's own code, not
a transcription of it, computes the loss and the gradient with respect to the per-token log-probs.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

trl = pytest.importorskip("trl")
from trl.rewards import get_soft_overlong_punishment  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402

from tether.losses.grpo import overlong_penalty, policy_loss  # noqa: E402

TOLERANCE = dict(rtol=1e-6, atol=1e-6)
# transformers 5 renamed gradient checkpointing; TRL 1.16 still uses the old name in GRPOConfig.
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")

B, T = 6, 8
LENGTHS = [8, 5, 3, 1, 0, 8]  # an empty completion too: both sides must give it weight 0, not NaN
MAX_COMPLETION_LENGTH = 10  # larger than T, as when every completion in the batch stopped early


class _SingleProcess:
    """What ``_compute_loss`` asks of the accelerator, for one process."""

    num_processes = 1
    process_index = 0
    sync_gradients = True

    @staticmethod
    def gather(tensor):
        return tensor

    @staticmethod
    def reduce(tensor, reduction="sum"):
        return tensor


def _trl_trainer(tmp_path, **config) -> GRPOTrainer:
    args = trl.GRPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                          max_completion_length=MAX_COMPLETION_LENGTH, **config)
    trainer = object.__new__(GRPOTrainer)
    # The attributes _compute_loss reads, set from args as GRPOTrainer.__init__ sets them.
    trainer.args = args
    trainer.loss_type = args.loss_type
    trainer.beta = args.beta
    trainer.epsilon_low = args.epsilon
    trainer.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    trainer.importance_sampling_level = args.importance_sampling_level
    trainer.max_completion_length = args.max_completion_length
    trainer.top_entropy_quantile = args.top_entropy_quantile
    trainer.off_policy_mask_threshold = args.off_policy_mask_threshold
    trainer.use_vllm = args.use_vllm
    trainer.vllm_importance_sampling_correction = args.vllm_importance_sampling_correction
    trainer.entropy_coef = args.entropy_coef
    trainer.use_adaptive_entropy = args.use_adaptive_entropy
    trainer._entropy_bonus_enabled = args.entropy_coef != 0.0 or args.use_adaptive_entropy
    trainer.aux_loss_enabled = False
    trainer.current_gradient_accumulation_steps = 1
    trainer.accelerator = _SingleProcess()
    trainer.model = torch.nn.Linear(1, 1).train()  # only .training is read
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    return trainer


def _batch(seed: int, on_policy: bool = False):
    generator = torch.Generator().manual_seed(seed)
    logps = -2 * torch.rand(B, T, generator=generator, dtype=torch.float32)  # (B, T) log-probs in (-2, 0]
    mask = (torch.arange(T) < torch.tensor(LENGTHS)[:, None]).long()  # (B, T), as TRL's completion_mask
    # Off policy by ~0.3 nats a token plus ~0.3 a sequence: many token ratios and some sequence ratios
    # (gspo) fall outside [0.8, 1.2], so clipping is exercised.
    drift = 0.3 * torch.randn(B, T, generator=generator) + 0.3 * torch.randn(B, 1, generator=generator)
    old_logps = logps.detach() if on_policy else logps + drift
    ref_logps = logps + 0.2 * torch.randn(B, T, generator=generator)
    advantages = torch.randn(B, generator=generator)
    return logps, old_logps, ref_logps, advantages, mask


def _trl_loss(trainer: GRPOTrainer, logps, old_logps, ref_logps, advantages, mask, num_items_in_batch=None):
    logps = logps.clone().requires_grad_(True)
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logps, torch.zeros_like(logps), None)
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": advantages, "ref_per_token_logps": ref_logps,
        "num_items_in_batch": torch.tensor(float(mask.sum() if num_items_in_batch is None else num_items_in_batch)),
    }
    if old_logps is not None:  # TRL's on-policy path: no old log-probs, it uses per_token_logps.detach()
        inputs["old_per_token_logps"] = old_logps
    loss = trainer._compute_loss(None, inputs)
    loss.backward()
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    return loss.detach(), logps.grad, metrics


def _tether_loss(logps, old_logps, ref_logps, advantages, mask, **kwargs):
    logps = logps.clone().requires_grad_(True)
    old_logps = logps.detach() if old_logps is None else old_logps
    loss, metrics = policy_loss(logps, old_logps, advantages, mask, ref_logps=ref_logps, **kwargs)
    loss.backward()
    return loss.detach(), logps.grad, metrics


CASES = {  # id: (tether policy_loss kwargs, the TRL GRPOConfig that should give the same loss)
    "grpo": ({"loss_type": "grpo"}, {"loss_type": "grpo"}),
    "grpo-kl": ({"loss_type": "grpo", "beta": 0.04}, {"loss_type": "grpo", "beta": 0.04}),
    "grpo-kl-plain": ({"loss_type": "grpo", "beta": 0.04, "kl_bias_correction": False},
                      {"loss_type": "grpo", "beta": 0.04, "use_bias_correction_kl": False}),
    "bnpo": ({"loss_type": "bnpo", "beta": 0.04}, {"loss_type": "bnpo", "beta": 0.04}),
    "dr_grpo": ({"loss_type": "dr_grpo", "max_completion_length": MAX_COMPLETION_LENGTH},
                {"loss_type": "dr_grpo"}),
    "dr_grpo-kl": ({"loss_type": "dr_grpo", "max_completion_length": MAX_COMPLETION_LENGTH, "beta": 0.04},
                   {"loss_type": "dr_grpo", "beta": 0.04}),
    "dapo": ({"loss_type": "dapo", "epsilon_high": 0.28}, {"loss_type": "dapo", "epsilon_high": 0.28}),
    "dapo-kl": ({"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.04},
                {"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.04}),
    # GSPO is TRL's grpo loss with a sequence-level ratio (the setup TRL's docs give for the paper).
    "gspo": ({"loss_type": "gspo"}, {"loss_type": "grpo", "importance_sampling_level": "sequence"}),
    "gspo-kl": ({"loss_type": "gspo", "beta": 0.04, "epsilon_low": 3e-4, "epsilon_high": 4e-4},
                {"loss_type": "grpo", "importance_sampling_level": "sequence", "beta": 0.04,
                 "epsilon": 3e-4, "epsilon_high": 4e-4}),
}


def _assert_same(ours, theirs):
    our_loss, our_grad, our_metrics = ours
    trl_loss, trl_grad, trl_metrics = theirs
    torch.testing.assert_close(our_loss, trl_loss, **TOLERANCE)
    torch.testing.assert_close(our_grad, trl_grad, **TOLERANCE)
    assert our_grad.abs().max() > 1e-3  # the comparison is not between zeros
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "kl"):
        if name in trl_metrics:
            assert our_metrics[name].item() == pytest.approx(trl_metrics[name], abs=1e-6), name


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("on_policy", [False, True], ids=["off_policy", "on_policy"])
def test_policy_loss_and_gradient_match_trl(tmp_path, case, on_policy):
    ours_kwargs, trl_config = CASES[case]
    logps, old_logps, ref_logps, advantages, mask = _batch(seed=len(case), on_policy=on_policy)
    trl_old = None if on_policy else old_logps  # on policy TRL takes old = logps.detach() itself
    theirs = _trl_loss(_trl_trainer(tmp_path, **trl_config), logps, trl_old, ref_logps, advantages, mask)
    ours = _tether_loss(logps, old_logps, ref_logps, advantages, mask, **ours_kwargs)
    _assert_same(ours, theirs)
    if not on_policy and "epsilon" not in trl_config:  # the default clip range is exercised on both sides
        assert 0 < ours[2]["clip_ratio/region_mean"] < 1


def test_dapo_token_count_of_the_whole_generation_batch_matches_trl(tmp_path):
    # TRL divides a micro-batch's token sum by num_items_in_batch, the generation batch's token count.
    logps, old_logps, ref_logps, advantages, mask = _batch(seed=7)
    trainer = _trl_trainer(tmp_path, loss_type="dapo", epsilon_high=0.28)
    theirs = _trl_loss(trainer, logps, old_logps, ref_logps, advantages, mask, num_items_in_batch=100)
    ours = _tether_loss(logps, old_logps, ref_logps, advantages, mask, loss_type="dapo", epsilon_high=0.28,
                        num_tokens=100)
    _assert_same(ours, theirs)


def test_overlong_penalty_matches_trl_reward_function():
    # DAPO's defaults scaled down: L_max 20, buffer 8; lengths cover all three regions and both edges.
    lengths = [0, 11, 12, 13, 16, 19, 20, 21, 40]
    trl_reward = get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=8)
    expected = trl_reward([[0] * n for n in lengths])
    torch.testing.assert_close(overlong_penalty(torch.tensor(lengths), 20, 8), torch.tensor(expected),
                               rtol=0, atol=1e-7)
    hard = get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=0)
    torch.testing.assert_close(overlong_penalty(torch.tensor(lengths), 20, 0),
                               torch.tensor(hard([[0] * n for n in lengths])), rtol=0, atol=0)
