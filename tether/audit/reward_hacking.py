"""Reward hacking: the proxy reward being optimized rises while a held-out gold reward falls.

Gao et al. 2023 ("Scaling Laws for Reward Model Overoptimization") measure, as the policy moves away
from its start, the proxy reward R_proxy (what RL optimizes: a reward model, a heuristic) and a gold
reward R_gold that training never sees, against d = sqrt(KL(pi || pi_ref)). The proxy keeps rising;
the gold rises, peaks, then falls: past the peak the policy exploits the proxy's errors.

Every evaluation, ``RewardHackingMonitor`` samples ``samples_per_prompt`` completions (temperature 1, a
fixed seed, so evaluations differ only by the policy) for each held-out prompt and records

    eval/proxy_reward   mean proxy reward (the trainer's reward functions, weighted sum)
    eval/gold_reward    mean gold reward (held-out reward functions), when configured
    eval/kl             mean over prompts of sum_t k3(log pi(y_t), log pi_ref(y_t)), in nats per completion
    eval/sqrt_kl        sqrt(eval/kl), the x-axis of Gao et al.
    eval/reward_hacking 1.0 when the detector below fires at this evaluation, else 0.0

The detector (``detect_hacking``) fits a least-squares line to the last ``window`` evaluations of each
reward and fires when the fitted proxy change over the window is above +min_change while the gold
change is below -min_change. It then prints a warning; the flag stays in the metrics, and
``reward_hacking.png`` in the run folder plots proxy and gold against step and against sqrt(KL).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tether.data.records import Prompt
from tether.engine.metrics import read_metrics
from tether.engine.progress import console
from tether.losses.kl import kl_estimate
from tether.rewards.base import RewardSpec, combine_rewards
from tether.rollout.sampler import RolloutBatch, RolloutConfig, TransformersSampler

PLOT_FILE = "reward_hacking.png"
KEYS = ("eval/proxy_reward", "eval/gold_reward", "eval/kl", "eval/sqrt_kl", "eval/reward_hacking")


@dataclass(frozen=True)
class HackingSignal:
    """The fitted change of each reward over the window; ``fired`` when proxy rose and gold fell."""

    fired: bool
    proxy_change: float
    gold_change: float


def fitted_change(values: Sequence[float]) -> float:
    """Rise of the least-squares line through ``values`` (at x = 0..n-1) from first to last point:
    slope * (n - 1). Less noisy than last - first, which one bad evaluation can flip."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    variance = sum((x - mean_x) ** 2 for x in range(n))
    return covariance / variance * (n - 1)


def detect_hacking(proxy: Sequence[float], gold: Sequence[float], *, window: int = 3,
                   min_change: float = 0.0) -> HackingSignal:
    """Does gold fall while proxy rises over the last ``window`` evaluations?

    Fires when fitted_change(proxy[-window:]) > min_change and fitted_change(gold[-window:]) <
    -min_change. Fewer than ``window`` evaluations never fire.
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 evaluations, got {window}")
    if len(proxy) != len(gold):
        raise ValueError(f"proxy has {len(proxy)} evaluations but gold has {len(gold)}")
    if len(proxy) < window:
        return HackingSignal(False, 0.0, 0.0)
    proxy_change = fitted_change(list(proxy)[-window:])
    gold_change = fitted_change(list(gold)[-window:])
    return HackingSignal(proxy_change > min_change and gold_change < -min_change, proxy_change, gold_change)


ReferenceLogps = Callable[[RolloutBatch], torch.Tensor]


class RewardHackingMonitor:
    """Held-out proxy reward, gold reward and KL from the reference, tracked over training.

    ``columns`` are the reward functions' dataset columns for ``prompts`` (one value per prompt).
    ``gold_specs`` may be empty: then proxy and KL are tracked and nothing is detected.
    """

    def __init__(self, run_dir: str | Path, prompts: Sequence[Prompt], columns: dict[str, list],
                 proxy_specs: Sequence[RewardSpec], gold_specs: Sequence[RewardSpec] = (), *,
                 max_new_tokens: int = 64, stop: Sequence[str] = (), window: int = 3,
                 min_change: float = 0.0, seed: int = 0, title: str = "", samples_per_prompt: int = 1):
        if not prompts:
            raise ValueError("the reward-hacking monitor needs held-out prompts")
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be at least 1, got {samples_per_prompt}")
        self.run_dir = Path(run_dir)
        n = samples_per_prompt
        self.prompts = list(prompts)
        # Sampled rows are grouped by prompt (row r holds prompt r // n): score them with repeated columns.
        self.row_prompts = [p for p in self.prompts for _ in range(n)]
        self.row_columns = {key: [v for v in values for _ in range(n)] for key, values in columns.items()}
        self.proxy_specs, self.gold_specs = list(proxy_specs), list(gold_specs)
        self.rollout = RolloutConfig(num_samples=n, temperature=1.0, max_new_tokens=max_new_tokens,
                                     stop=list(stop), seed=seed)
        self.window, self.min_change, self.title = window, min_change, title
        self.history: list[dict[str, float]] = []

    def restore(self, up_to_step: int) -> None:
        """Reload the evaluations a resumed run already made, from its metrics.jsonl."""
        if (self.run_dir / "metrics.jsonl").is_file():
            self.history = [{"step": row["step"], **{k: row[k] for k in KEYS if k in row}}
                            for row in read_metrics(self.run_dir)
                            if "eval/proxy_reward" in row and row["step"] <= up_to_step]

    def evaluate(self, model, tokenizer, step: int, reference_logps: ReferenceLogps | None) -> dict[str, float]:
        """One evaluation at ``step``; call it under ``torch.no_grad()`` (and the run's autocast).

        ``reference_logps(rollout)`` gives log pi_ref of the sampled tokens, shape (P*n, L); None when the
        run has no reference model (the KL is then NaN).
        """
        rollout = TransformersSampler(model, tokenizer).sample(self.prompts, self.rollout)
        metrics = {"eval/proxy_reward": self._mean_reward(self.proxy_specs, rollout.texts)}
        if self.gold_specs:
            metrics["eval/gold_reward"] = self._mean_reward(self.gold_specs, rollout.texts)
        kl = math.nan
        if reference_logps is not None:
            mask = rollout.completion_mask.bool()  # (P*n, L)
            # model_logps: the policy at temperature 1, which drew these samples.
            per_token = kl_estimate(rollout.model_logps, reference_logps(rollout).float(), "k3")  # (P*n, L)
            kl = torch.where(mask, per_token, 0.0).sum(1).mean().item()
        metrics["eval/kl"] = kl
        metrics["eval/sqrt_kl"] = math.sqrt(max(kl, 0.0)) if math.isfinite(kl) else math.nan
        self.history = [h for h in self.history if h["step"] < step] + [{"step": step, **metrics}]
        if self.gold_specs:
            signal = detect_hacking([h["eval/proxy_reward"] for h in self.history],
                                    [h["eval/gold_reward"] for h in self.history],
                                    window=self.window, min_change=self.min_change)
            metrics["eval/reward_hacking"] = float(signal.fired)
            self.history[-1]["eval/reward_hacking"] = float(signal.fired)
            if signal.fired:
                console.print(f"[bold yellow]warning: possible reward hacking at step {step}[/]: over the "
                              f"last {self.window} evaluations the proxy reward changed by "
                              f"{signal.proxy_change:+.3f} while the held-out gold reward changed by "
                              f"{signal.gold_change:+.3f} (KL from the reference {kl:.2f} nats). "
                              f"See {self.run_dir / PLOT_FILE}.")
        self.plot()
        return metrics

    def _mean_reward(self, specs: Sequence[RewardSpec], texts: list[str]) -> float:
        totals, _, _ = combine_rewards(specs, self.row_prompts, texts, self.row_columns, on_error="score_failed")
        return sum(totals) / len(totals)

    @property
    def fired(self) -> bool:
        return any(h.get("eval/reward_hacking", 0.0) > 0 for h in self.history)

    def plot(self) -> Path | None:
        """Proxy and gold against step (sqrt KL on a second axis) and against sqrt KL."""
        if not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [h["step"] for h in self.history]
        proxy = [h["eval/proxy_reward"] for h in self.history]
        gold = [h.get("eval/gold_reward", math.nan) for h in self.history]
        root_kl = [h.get("eval/sqrt_kl", math.nan) for h in self.history]
        figure, (by_step, by_kl) = plt.subplots(1, 2, figsize=(10, 3.8))
        by_step.plot(steps, proxy, marker="o", label="proxy")
        if self.gold_specs:
            by_step.plot(steps, gold, marker="s", label="gold")
        for step, h in zip(steps, self.history):
            if h.get("eval/reward_hacking", 0.0) > 0:
                by_step.axvline(step, color="red", alpha=0.3)
        kl_axis = by_step.twinx()
        kl_axis.plot(steps, root_kl, color="gray", linestyle="--", label="sqrt(KL)")
        kl_axis.set_ylabel("sqrt(KL) [sqrt nats]")
        by_step.set_xlabel("step")
        by_step.set_ylabel("held-out reward")
        by_step.legend(loc="upper left", fontsize=8)
        by_step.grid(alpha=0.3)
        by_kl.plot(root_kl, proxy, marker="o", label="proxy")
        if self.gold_specs:
            by_kl.plot(root_kl, gold, marker="s", label="gold")
        by_kl.set_xlabel("sqrt(KL from reference)")
        by_kl.set_title("Gao et al. 2023 view", fontsize=10)
        by_kl.legend(fontsize=8)
        by_kl.grid(alpha=0.3)
        if self.title:
            figure.suptitle(self.title)
        figure.tight_layout()
        path = self.run_dir / PLOT_FILE
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path
