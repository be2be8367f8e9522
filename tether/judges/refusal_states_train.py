"""Fit the ``refusal-states`` judge on the calibration half of the labeled refusal set, then report.

    python -m tether.judges.refusal_states_train            # fit, write the weights, report
    python -m tether.judges.refusal_states_train --report   # report the shipped weights only

As for ``refusal-head`` (``refusal_head_train``): the layers read, the L2 strength and the cue
weight are chosen by 5-fold cross-validation on the calibration half grouped by prompt, the
threshold on the out-of-fold scores, and the test half is scored once, for the report. The base
model reads every labeled pair once (about 10 minutes on two busy CPU cores), then the fits are cheap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tether.judges.refusal_head_train import (
    LABELED,
    _save,
    best_threshold,
    fit_logistic,
    grouped_folds,
    is_refusal_label,
    load_rows,
    print_report,
    test_report,
)
from tether.judges.refusal_states import WEIGHTS, RefusalStatesJudge, combined_score, cue_width

# Candidate layer sets (SmolLM2-135M has 30 layers; hidden_states[0] is the embeddings).
LAYER_SETS = ((12,), (16,), (20,), (24,))
L2_GRID = (3e-2, 1e-1, 3e-1)
CUE_WEIGHTS = (1.0, 3.0, 10.0)


def layer_columns(layers: tuple[int, ...], all_layers: list[int], hidden: int) -> np.ndarray:
    """Columns of ``layers`` (mean and last token each) in features computed for ``all_layers``."""
    return np.concatenate([np.arange(2 * hidden) + all_layers.index(layer) * 2 * hidden for layer in layers])


def standardization(features: np.ndarray, cues: int, cue_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale; the last ``cues`` columns' scale divided by ``cue_weight`` so
    the L2 penalty spares those few precise columns that much more. Shapes: (N, F) -> (F,), (F,)."""
    mean, scale = features.mean(0), features.std(0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    scale[features.shape[1] - cues:] /= cue_weight
    return mean, scale


def out_of_fold_scores(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float, cues: int,
                       cue_weight: float) -> np.ndarray:
    scores = np.zeros(len(y))
    for fold in sorted(set(folds.tolist())):
        train, held = folds != fold, folds == fold
        mean, scale = standardization(x[train], cues, cue_weight)
        weight, bias = fit_logistic((x[train] - mean) / scale, y[train], l2)
        scores[held] = combined_score(x[held], weight, bias, mean, scale)
    return scores


def train(rows: list[dict], states: np.ndarray, cue_features: np.ndarray, all_layers: list[int],
          path: Path = WEIGHTS) -> dict:
    """Choose layers, L2 and cue weight on the calibration rows, fit, write the weights to ``path``.
    ``states``: state features of every row at ``all_layers``; ``cue_features``: its cue columns."""
    calibration = np.array([row["split"] == "calibration" for row in rows])
    y = np.array([is_refusal_label(row["label"]) for row in rows], dtype=np.float64)[calibration]
    folds = grouped_folds([row["prompt_id"] for row, keep in zip(rows, calibration) if keep])
    hidden = states.shape[1] // (2 * len(all_layers))
    cues = cue_features.shape[1]
    cv = {}
    for layers in LAYER_SETS:
        x = np.concatenate([states[calibration][:, layer_columns(layers, all_layers, hidden)],
                            cue_features[calibration]], axis=1)
        for l2 in L2_GRID:
            for cue_weight in CUE_WEIGHTS:
                scores = out_of_fold_scores(x, y, folds, l2, cues, cue_weight)
                cv[layers, l2, cue_weight] = (float(((scores >= 0.5) == y).mean()), scores)
    # ties: fewer layers, the stronger penalty, then the smaller cue weight
    layers, l2, cue_weight = max(cv, key=lambda k: (cv[k][0], -len(k[0]), k[1], -k[2]))
    threshold = best_threshold(cv[layers, l2, cue_weight][1], y)
    x = np.concatenate([states[calibration][:, layer_columns(layers, all_layers, hidden)],
                        cue_features[calibration]], axis=1)
    mean, scale = standardization(x, cues, cue_weight)
    weight, bias = fit_logistic((x - mean) / scale, y, l2)
    chosen = {"layers": list(layers), "l2": l2, "cue_weight": cue_weight, "threshold": threshold,
              "cv_accuracy": {f"layers={list(k[0])},l2={k[1]},cue_weight={k[2]}": v[0] for k, v in cv.items()},
              "calibration_rows": int(calibration.sum()), "calibration_refusals": int(y.sum())}
    _save(path, weight, bias, mean, scale, chosen, layers=json.dumps(chosen["layers"]))
    return chosen



def all_features(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """State features at every candidate layer, and the cue columns, of every row."""
    from tether.judges.policy_states import state_features
    from tether.judges.refusal_head import pattern_features

    all_layers = sorted({layer for layers in LAYER_SETS for layer in layers})
    prompts, responses = [row["prompt"] for row in rows], [row["response"] for row in rows]
    return state_features(prompts, responses, all_layers), pattern_features(responses), all_layers


def test_features(judge: RefusalStatesJudge, states: np.ndarray, cue_features: np.ndarray,
                  all_layers: list[int]) -> np.ndarray:
    hidden = states.shape[1] // (2 * len(all_layers))
    return np.concatenate([states[:, layer_columns(tuple(judge.layers), all_layers, hidden)], cue_features], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", default=str(LABELED))
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--report", action="store_true", help="only report the weights already there")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    rows = load_rows(args.labels)
    states, cue_features, all_layers = all_features(rows)
    assert cue_features.shape[1] == cue_width()
    if not args.report:
        print(json.dumps(train(rows, states, cue_features, all_layers, Path(args.weights)), indent=2))
    judge = RefusalStatesJudge(args.weights)
    test = np.array([row["split"] == "test" for row in rows])
    scores = judge.score_features(test_features(judge, states, cue_features, all_layers)[test])
    test_rows = [row for row in rows if row["split"] == "test"]
    report = test_report(test_rows, {f"{judge.name} {judge.version} (threshold {judge.threshold:.3f})":
                                     [bool(s >= judge.threshold) for s in scores]})
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
