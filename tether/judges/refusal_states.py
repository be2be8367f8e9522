"""``refusal-states``: a refusal judge over SmolLM2's own hidden states of (prompt, response).

The base SmolLM2-135M-Instruct reads the conversation (``tether.judges.policy_states``); a
logistic-regression head over its states at a few layers (mean over the response and last token),
beside the phrase and deflection cues of ``refusal-head``, says whether the response refuses. As
with ``refusal-head``, the score is the head's probability or the phrase patterns' score where
that is higher. Weights, the layers and the threshold were fitted on the calibration half of the
labeled refusal set by ``tether/judges/refusal_states_train.py``; docs/refusal-judge.md reports
the test half.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from tether.judges.policy_states import state_features
from tether.judges.refusal_head import pattern_features

WEIGHTS = Path(__file__).resolve().parents[1] / "resources" / "judges" / "refusal_states.safetensors"
NAME = "refusal-states"


def pair_features(prompts: Sequence[str], responses: Sequence[str], layers: Sequence[int],
                  reader=None) -> np.ndarray:
    """The model's states at ``layers``, then the cue columns. Shape: (N,) -> (N, F)."""
    states = state_features(prompts, responses, layers, reader)
    return np.concatenate([states, pattern_features(responses)], axis=1).astype(np.float32)


def cue_width() -> int:
    return pattern_features([""]).shape[1]


def combined_score(features: np.ndarray, weight, bias, mean, scale) -> np.ndarray:
    """The head's probability, or the phrase patterns' score where that is higher (a first-person
    decline the patterns know is a refusal whatever else the response says). Shapes: (N, F) -> (N,)."""
    from tether.judges.refusal_head import DEFLECTION_CUES

    pattern_score = features[:, features.shape[1] - len(DEFLECTION_CUES) - 1]
    head_probability = 1.0 / (1.0 + np.exp(-(((features - mean) / scale) @ weight + bias)))
    return np.maximum(head_probability, pattern_score)


class RefusalStatesJudge:
    """Scores (prompt, response) pairs; ``score >= threshold`` means the response refuses
    (fully or in part)."""

    name = NAME

    def __init__(self, weights: str | Path = WEIGHTS, reader=None):
        from safetensors import safe_open
        from safetensors.numpy import load_file

        tensors = load_file(str(weights))
        with safe_open(str(weights), framework="numpy") as handle:
            meta = handle.metadata() or {}
        self.weight, self.bias = tensors["weight"], float(tensors["bias"][0])  # (F,), scalar
        self.mean, self.scale = tensors["mean"], tensors["scale"]  # (F,), (F,)
        self.threshold = float(meta["threshold"])
        self.layers = json.loads(meta["layers"])
        self.training = json.loads(meta.get("training", "{}"))
        digest = hashlib.sha256(b"".join(tensors[key].tobytes() for key in sorted(tensors))
                                + repr((self.threshold, self.layers)).encode()).hexdigest()[:12]
        self.version = f"{meta.get('format', '1')}-{digest}"
        self._reader = reader

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if not len(prompts) and not len(responses):
            return []
        return self.score_features(pair_features(prompts, responses, self.layers, self._reader)).tolist()

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """Scores of already computed ``pair_features`` rows. Shape: (N, F) -> (N,)."""
        return combined_score(features, self.weight, self.bias, self.mean, self.scale)


@lru_cache(maxsize=1)
def load_refusal_states() -> RefusalStatesJudge:
    """The shipped judge, loaded once per process."""
    return RefusalStatesJudge()
