"""Linear probes and difference-of-means directions on hidden states: pure tensor functions.

A probe is L2-regularised logistic regression on standardised features,

    p(y = 1 | h) = sigmoid(w . (h - mu) / sigma + b),

fitted by L-BFGS on one set of states and scored on another. Its direction in the raw space is
``w / sigma``; two probes' directions are compared by their cosine. The difference-of-means
direction of a concept is ``mean(h | y = 1) - mean(h | y = 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Probe:
    weight: torch.Tensor  # (H,) in standardised units
    bias: torch.Tensor  # ()
    mean: torch.Tensor  # (H,)
    scale: torch.Tensor  # (H,)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Shape: states (N, H) -> (N,)."""
        return ((states.float() - self.mean) / self.scale) @ self.weight + self.bias

    def accuracy(self, states: torch.Tensor, labels: torch.Tensor) -> float:
        return ((self.logits(states) > 0) == labels.bool()).float().mean().item()

    @property
    def direction(self) -> torch.Tensor:
        """The probe's normal vector in the raw (unstandardised) space. Shape: (H,)."""
        return self.weight / self.scale


def fit_probe(states: torch.Tensor, labels: torch.Tensor, *, l2: float = 1e-2, steps: int = 100) -> Probe:
    """Logistic regression of ``labels`` on ``states`` (mean loss + l2 * |w|^2 / 2).
    Shape: states (N, H), labels (N,) in {0, 1}."""
    states = states.float()
    mean, scale = states.mean(0), states.std(0).clamp(min=1e-6)
    x = (states - mean) / scale
    y = labels.float()
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y)
                + l2 * weight.square().sum() / 2)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return Probe(weight.detach(), bias.detach(), mean, scale)


def mean_difference(states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean(h | y = 1) - mean(h | y = 0). Shape: states (N, H), labels (N,) -> (H,)."""
    labels = labels.bool()
    return states[labels].float().mean(0) - states[~labels].float().mean(0)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0).item()
