"""Tokens per second and MFU of a training run: the lines ``fit`` adds to metrics.jsonl
(``tokens_per_s``, ``mfu``) and the summary it prints at the end.

A micro-batch's model FLOPs come from its shape, with the formulas of ``engine/flops.py``:
    DPO pair rows (``prompt_mask``, ``completion_mask``): each prompt once, both answers on it,
        lm_head on answer tokens only (what ``score_pairs`` computes).
    Packed rows (``position_ids``): each sequence (positions restart at 0) is causal on its own.
    Padded rows (``attention_mask``, else ``input_ids``): each row's real tokens.
Outside DPO the lm_head is counted on every real token, an upper bound where a loss skips the
prompt's logits. Time is the optimizer steps' own (forward, backward, step), without evaluation
or checkpoints. MFU divides by the matmul peak of the dtype the run computes in (``cached_peak``).

RL steps (GRPO, PPO; ``add_rl_step``) have two phases, each with its own MFU (``mfu/rollout``,
``mfu/update``): sampling (``rollout_flops``: prefill once per prompt, one forward per generated
token) and the policy updates (``rl_update_flops``); their tokens are the sampled completion tokens.
Reward scoring is in the step's time but not its FLOPs.
"""

from __future__ import annotations

import torch

from tether.engine.flops import (
    ModelShape,
    cached_peak,
    causal_pairs,
    rl_update_flops,
    rollout_flops,
    shared_prompt_flops,
    step_flops,
)


def sequence_lengths(batch: dict) -> list[int]:
    """Real tokens of each causal sequence in a padded or packed batch ([] when it has neither)."""
    if "position_ids" in batch:
        lengths = []
        for row in batch["position_ids"].tolist():
            starts = [i for i, position in enumerate(row) if position == 0] + [len(row)]
            lengths += [end - start for start, end in zip(starts, starts[1:]) if end > start]
        return lengths
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(1).tolist()
    if isinstance(batch.get("input_ids"), torch.Tensor):
        rows, width = batch["input_ids"].shape
        return [width] * rows
    return []


def batch_flops(shape: ModelShape, batch: dict) -> tuple[int, int]:
    """(tokens, training FLOPs) of one micro-batch."""
    if "prompt_mask" in batch and "completion_mask" in batch:
        prompts = batch["prompt_mask"].sum(1).tolist()  # (B,)
        answers = batch["completion_mask"].sum(1).tolist()  # (k B,): rows of prompt 0..B-1, k times
        repeats = len(answers) // max(len(prompts), 1)
        rows = list(zip(prompts * repeats, answers))
        return sum(prompts) + sum(answers), shared_prompt_flops(shape, prompts, rows, training=True)
    lengths = sequence_lengths(batch)
    tokens = sum(lengths)
    return tokens, step_flops(shape, tokens, tokens, causal_pairs(lengths), training=True)


class Throughput:
    """Tokens and model FLOPs over time, for a window (one metrics line) and the whole run."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, device: str = "cpu"):
        try:
            self.shape: ModelShape | None = ModelShape.of(model)
        except ValueError:  # not a Hugging Face model (a test's toy module): nothing to count
            self.shape = None
        self.dtype, self.device = dtype, device
        self._peak: float | None = None
        self.window = [0, 0, 0.0]  # tokens, FLOPs, seconds
        self.run = [0, 0, 0.0]
        self.window_phases: dict[str, list] = {}  # RL steps: phase -> [FLOPs, seconds]
        self.run_phases: dict[str, list] = {}

    @property
    def peak(self) -> float:
        if self._peak is None:  # measured (or read from the cache) on first use, not at start-up
            self._peak = cached_peak(self.dtype, self.device)
        return self._peak

    def add(self, batches: list[dict], seconds: float) -> None:
        """Count one optimizer step: its micro-batches and the seconds it took."""
        if self.shape is None:
            return
        counts = [batch_flops(self.shape, batch) for batch in batches]
        for totals in (self.window, self.run):
            totals[0] += sum(tokens for tokens, _ in counts)
            totals[1] += sum(flops for _, flops in counts)
            totals[2] += seconds

    def add_rl_step(self, prompt_lengths: list[int], completion_lengths: list[int], group: int, updates: int,
                    rollout_seconds: float, update_seconds: float, trained: list[int] | None = None) -> None:
        """Count one RL step: ``group`` completions per prompt sampled in ``rollout_seconds`` (lengths
        per row), then ``updates`` policy updates on the ``trained`` rows (default all) in ``update_seconds``."""
        if self.shape is None:
            return
        phases = {"rollout": (rollout_flops(self.shape, prompt_lengths, completion_lengths, group), rollout_seconds),
                  "update": (rl_update_flops(self.shape, prompt_lengths, completion_lengths, group, updates, trained),
                             update_seconds)}
        for totals, by_phase in ((self.window, self.window_phases), (self.run, self.run_phases)):
            totals[0] += sum(completion_lengths)
            for name, (flops, seconds) in phases.items():
                totals[1] += flops
                totals[2] += seconds
                by_phase.setdefault(name, [0, 0.0])
                by_phase[name][0] += flops
                by_phase[name][1] += seconds

    def rates(self, totals: list, phases: dict[str, list] | None = None) -> dict[str, float]:
        tokens, flops, seconds = totals
        if tokens == 0 or seconds <= 0:
            return {}
        rates = {"tokens_per_s": tokens / seconds, "mfu": flops / seconds / self.peak}
        for name, (phase_flops, phase_seconds) in (phases or {}).items():
            if phase_seconds > 0:
                rates[f"mfu/{name}"] = phase_flops / phase_seconds / self.peak
        return rates

    def take_window(self) -> dict[str, float]:
        rates = self.rates(self.window, self.window_phases)
        self.window, self.window_phases = [0, 0, 0.0], {}
        return rates

    def summary(self) -> str | None:
        rates = self.rates(self.run, self.run_phases)
        if not rates:
            return None
        achieved = self.run[1] / self.run[2]
        name = str(self.dtype).removeprefix("torch.")
        tokens = "sampled tokens/s" if self.run_phases else "tokens/s"
        phases = "".join(f", {phase} {rates[f'mfu/{phase}']:.1%}" for phase in self.run_phases
                         if f"mfu/{phase}" in rates)
        line = (f"throughput: {rates['tokens_per_s']:.0f} {tokens}, {achieved / 1e9:.1f} GFLOP/s of model "
                f"matmuls, MFU {rates['mfu']:.1%}{phases} of this machine's {name} matmul peak "
                f"({self.peak / 1e9:.1f} GFLOP/s)")
        if rates["mfu"] > 1:
            line += (" [over 100%: the peak was measured while other jobs shared the cores; a run on a quiet "
                     "machine measures it again and keeps the higher one]")
        return line
