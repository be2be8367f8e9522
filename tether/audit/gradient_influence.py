"""Which RL examples would push the policy in a direction the rest of the set does not?

For each example (a prompt, K completions, their rewards) this takes the policy-gradient step it
contributes at the current policy, the first GRPO step with the importance ratio at 1:

    g_x = grad_theta  -(1/K) sum_j A_j * (1/|y_j|) log pi_theta(y_j | x),   A_j = (r_j - mean r) / (std r + eps)

over the LoRA parameters (fresh adapters are added to a model without them), and compares it with
the others: the cosine of g_x with the mean gradient of the *other* examples. An example whose
reward pulls the policy somewhere the set does not (a stereotyped answer among arithmetic) has a
cosine far below the set's; :func:`tether.audit.rl_data_audit.robust_z` flags it. Examples whose K
rewards are all equal give no gradient (A = 0) and no cosine (NaN): GRPO would skip them too.

The gradients are not stored whole: each is projected onto ``dim`` random directions with a
CountSketch (every parameter goes to one random coordinate with a random sign,
``sketch = S g``), which keeps inner products in expectation (E[S^T S] = I), so cosines between
sketches estimate cosines between gradients (error ~ 1/sqrt(dim)) at the memory of ``dim`` floats
per example. Pass ``dim=None`` to keep whole gradients (small models, tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tether.data.tokenize import encode_prompt
from tether.losses.logprobs import completion_logps


class CountSketch:
    """A fixed random projection of the trainable parameters' gradient to ``dim`` numbers."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], dim: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.buckets = [torch.randint(0, dim, (p.numel(),), generator=generator) for p in parameters]
        self.signs = [torch.randint(0, 2, (p.numel(),), generator=generator).float() * 2 - 1 for p in parameters]

    def __call__(self, gradients: Sequence[torch.Tensor]) -> np.ndarray:
        sketch = torch.zeros(self.dim)
        for gradient, buckets, signs in zip(gradients, self.buckets, self.signs):
            sketch.index_add_(0, buckets, gradient.detach().float().flatten().cpu() * signs)
        return sketch.numpy()


def group_advantages(rewards: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """(r - mean r) / (std r + eps) within one example's K rewards; zeros when they are all equal."""
    rewards = np.asarray(rewards, dtype=float)
    centered = rewards - rewards.mean()
    if np.allclose(centered, 0.0):
        return np.zeros_like(rewards)
    return centered / (rewards.std() + eps)


def _trainable(model: Any, seed: int) -> tuple[Any, list[torch.nn.Parameter]]:
    from tether.models.lora import apply_lora

    if not any("lora_" in name for name, _ in model.named_parameters()):
        # fresh adapters have B = 0, so only B gets a gradient: dL/dB = dL/dW A^T, the full
        # gradient seen through A's random rows, which is what the comparison needs
        with torch.random.fork_rng():  # A's random init: the same adapters, so the same cosines, every call
            torch.manual_seed(seed)
            model = apply_lora(model, r=8, alpha=16, target_modules="all-linear")
    parameters = [p for name, p in model.named_parameters() if "lora_" in name]
    for p in parameters:
        p.requires_grad_(True)
    return model, parameters


def example_gradient(model: Any, tokenizer: Any, prompt: Any, completions: Sequence[str],
                     rewards: Sequence[float], parameters: Sequence[torch.nn.Parameter]) -> list[torch.Tensor] | None:
    """The policy-gradient of one example (module docstring), or None when its rewards are all equal."""
    advantages = group_advantages(np.asarray(rewards, dtype=float))
    if not advantages.any():
        return None
    prompt_ids = encode_prompt(prompt, tokenizer)
    rows = [prompt_ids + list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in completions]
    longest = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([row + [pad] * (longest - len(row)) for row in rows])  # (K, T)
    attention_mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows])  # (K, T)
    completion_mask = attention_mask.clone()
    completion_mask[:, :len(prompt_ids)] = 0
    model.zero_grad(set_to_none=True)
    logps = completion_logps(model, input_ids, attention_mask, completion_mask, average=True)  # (K,)
    loss = -(torch.as_tensor(advantages, dtype=logps.dtype) * logps).mean()
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(gradients, parameters)]


def leave_one_out_cosines(vectors: np.ndarray) -> np.ndarray:
    """cos(v_i, mean of the other rows) for each row; NaN rows (no gradient) stay NaN and are left
    out of the others' means. Shape: (N, D) -> (N,)."""
    present = ~np.isnan(vectors).any(axis=1)
    total = vectors[present].sum(axis=0)
    count = int(present.sum())
    cosines = np.full(len(vectors), np.nan)
    for i in np.flatnonzero(present):
        if count < 2:
            break
        others = (total - vectors[i]) / (count - 1)
        denominator = np.linalg.norm(vectors[i]) * np.linalg.norm(others)
        cosines[i] = float(vectors[i] @ others / denominator) if denominator > 0 else np.nan
    return cosines


def gradient_cosines(model: Any, tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Sequence[str]],
                     rewards: Sequence[np.ndarray], *, dim: int | None = 256,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per example: the cosine of its policy gradient with the others' mean, and its gradient norm
    (of the sketch when ``dim`` is set). Shape: rewards N arrays of (K,) -> (N,), (N,)."""
    model, parameters = _trainable(model, seed)
    model.eval()  # no dropout: the gradient of the policy as it samples
    sketch = CountSketch(parameters, dim, seed) if dim is not None else None
    vectors = []
    for prompt, texts, row in zip(prompts, completions, rewards):
        gradient = example_gradient(model, tokenizer, prompt, texts, row, parameters)
        if gradient is None:
            vectors.append(None)
        elif sketch is not None:
            vectors.append(sketch(gradient))
        else:
            vectors.append(torch.cat([g.detach().float().flatten() for g in gradient]).numpy())
    width = next((len(v) for v in vectors if v is not None), 1)
    matrix = np.stack([v if v is not None else np.full(width, np.nan) for v in vectors])  # (N, D)
    return leave_one_out_cosines(matrix), np.linalg.norm(matrix, axis=1)
