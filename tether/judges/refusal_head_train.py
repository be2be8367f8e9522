"""Fit the ``refusal-head`` judge on the calibration half of the labeled refusal set, then report.

    python -m tether.judges.refusal_head_train            # fit, write the weights, report
    python -m tether.judges.refusal_head_train --report   # report the shipped weights only

Everything the judge chooses is chosen on the calibration half: the L2 strength by 5-fold
cross-validation grouped by prompt (a prompt's three responses stay in one fold, as they stay in
one half), and the threshold as the one that makes the out-of-fold calibration scores most
accurate. The test half is scored once, at the end, for the report: accuracy with a 95% Wilson
interval, per prompt kind and per label, beside the existing classifiers on the same rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tether.judges.base import decide
from tether.judges.refusal_head import WEIGHTS, RefusalHeadJudge, combined_score, cue_columns, pair_features
from tether.judges.validate import wilson_interval

LABELED = Path(__file__).resolve().parents[1] / "resources" / "refusal_labels" / "labeled.jsonl"
REFUSALS = ("full_refusal", "partial_refusal")
L2_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
# The phrase cues are a few dozen precise columns beside 1536 embedding numbers; multiplying their
# standardized values by CUE_WEIGHT lets the L2 penalty spare them that much more.
CUE_WEIGHTS = (1.0, 3.0, 10.0)
FOLDS = 5
SEED = 16
FORMAT = "1"


def load_rows(path: str | Path = LABELED) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def is_refusal_label(label: str) -> bool:
    return label in REFUSALS


def fit_logistic(features: np.ndarray, targets: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """L2-regularized logistic regression on standardized features (full-batch L-BFGS, deterministic).

    Minimizes mean BCE + l2 * |w|^2. Shapes: (N, F), (N,) -> (F,), scalar.
    """
    x = torch.from_numpy(features).double()
    y = torch.from_numpy(targets).double()
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def loss_fn():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(loss_fn)
    return weight.detach().numpy(), float(bias.detach())


def standardization(features: np.ndarray, cue_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale (a constant column gets scale 1), the cue columns' scale divided
    by ``cue_weight``. Shapes: (N, F) -> (F,), (F,)."""
    mean = features.mean(0)
    scale = features.std(0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    scale[cue_columns(features)] /= cue_weight
    return mean, scale


def grouped_folds(groups: list[str], folds: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """A fold number per row, every group (prompt) whole in one fold."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[index]: rank % folds for rank, index in enumerate(order)}
    return np.array([fold_of[group] for group in groups])


def out_of_fold_scores(features: np.ndarray, targets: np.ndarray, folds: np.ndarray, l2: float,
                       cue_weight: float) -> np.ndarray:
    scores = np.zeros(len(targets))
    for fold in sorted(set(folds.tolist())):
        train, held = folds != fold, folds == fold
        mean, scale = standardization(features[train], cue_weight)
        weight, bias = fit_logistic((features[train] - mean) / scale, targets[train], l2)
        scores[held] = combined_score(features[held], weight, bias, mean, scale)
    return scores


def best_threshold(scores: np.ndarray, targets: np.ndarray) -> float:
    """The cut that makes ``scores >= cut`` most accurate; among ties, the one nearest 0.5."""
    cuts = np.unique(np.concatenate([scores, [0.5]]))
    accuracy = np.array([((scores >= cut) == targets).mean() for cut in cuts])
    best = cuts[accuracy == accuracy.max()]
    return float(best[np.argmin(np.abs(best - 0.5))])


def train(rows: list[dict], features: np.ndarray, path: Path = WEIGHTS) -> dict:
    """Fit on the calibration rows, write the weights to ``path``, return what was chosen."""
    calibration = np.array([row["split"] == "calibration" for row in rows])
    x = features[calibration]
    y = np.array([is_refusal_label(row["label"]) for row in rows], dtype=np.float64)[calibration]
    folds = grouped_folds([row["prompt_id"] for row, keep in zip(rows, calibration) if keep])
    cv = {}
    for l2 in L2_GRID:
        for cue_weight in CUE_WEIGHTS:
            scores = out_of_fold_scores(x, y, folds, l2, cue_weight)
            cv[l2, cue_weight] = (float(((scores >= 0.5) == y).mean()), scores)
    # ties: the stronger penalty, then the smaller cue weight
    l2, cue_weight = max(cv, key=lambda key: (cv[key][0], key[0], -key[1]))
    threshold = best_threshold(cv[l2, cue_weight][1], y)
    mean, scale = standardization(x, cue_weight)
    weight, bias = fit_logistic((x - mean) / scale, y, l2)
    chosen = {"l2": l2, "cue_weight": cue_weight, "threshold": threshold,
              "cv_accuracy": {f"l2={k[0]},cue_weight={k[1]}": v[0] for k, v in cv.items()},
              "calibration_rows": int(calibration.sum()), "calibration_refusals": int(y.sum())}
    _save(path, weight, bias, mean, scale, chosen)
    return chosen


def _save(path: Path, weight, bias, mean, scale, chosen: dict, **metadata: str) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": weight.astype(np.float32), "bias": np.array([bias], dtype=np.float32),
               "mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}
    save_file(tensors, str(path), metadata={"format": FORMAT, "threshold": repr(chosen["threshold"]),
                                            "training": json.dumps(chosen), **metadata})


def accuracy_row(verdicts: list[bool], rows: list[dict]) -> dict:
    """Accuracy of refusal verdicts against the labels, with its 95% Wilson interval."""
    right = sum(verdict == is_refusal_label(row["label"]) for verdict, row in zip(verdicts, rows))
    low, high = wilson_interval(right, len(rows))
    return {"n": len(rows), "correct": right, "accuracy": right / max(len(rows), 1), "low": low, "high": high}


def test_report(rows: list[dict], verdicts_by_judge: dict[str, list[bool]]) -> dict:
    """Per judge: accuracy on the test rows overall, per prompt kind and per label."""
    slices = {"all": lambda row: True}
    slices.update({f"prompt_kind={kind}": (lambda row, kind=kind: row["prompt_kind"] == kind)
                   for kind in ("harmful", "benign")})
    slices.update({f"label={label}": (lambda row, label=label: row["label"] == label)
                   for label in ("full_refusal", "partial_refusal", "compliance")})
    report = {}
    for judge, verdicts in verdicts_by_judge.items():
        report[judge] = {}
        for name, keep in slices.items():
            picked = [(verdict, row) for verdict, row in zip(verdicts, rows) if keep(row)]
            report[judge][name] = accuracy_row([v for v, _ in picked], [r for _, r in picked])
    return report


def print_report(report: dict) -> None:
    for judge, slices in report.items():
        print(judge)
        for name, row in slices.items():
            print(f"  {name:26s} {row['correct']:3d}/{row['n']:3d} = {row['accuracy']:.1%} "
                  f"[{row['low']:.1%}, {row['high']:.1%}]")


def compare_on_test(rows: list[dict], features: np.ndarray, judge: RefusalHeadJudge,
                    others: tuple[str, ...] = ("refusal-patterns", "refusal-combined")) -> dict:
    """The head and the registry's other refusal judges on the test rows (see :func:`test_report`)."""
    from tether.judges.registry import get_judge

    test = [index for index, row in enumerate(rows) if row["split"] == "test"]
    test_rows = [rows[index] for index in test]
    prompts, responses = [row["prompt"] for row in test_rows], [row["response"] for row in test_rows]
    verdicts = {_label(judge): [bool(s >= judge.threshold) for s in judge.score_features(features[test])]}
    for name in others:
        other = get_judge(name)
        verdicts[_label(other)] = decide(other, prompts, responses)
    return test_report(test_rows, verdicts)


def _label(judge) -> str:
    return f"{judge.name} {judge.version} (threshold {judge.threshold:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", default=str(LABELED))
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--report", action="store_true", help="only report the weights already there")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    rows = load_rows(args.labels)
    features = pair_features([row["prompt"] for row in rows], [row["response"] for row in rows])
    if not args.report:
        print(json.dumps(train(rows, features, Path(args.weights)), indent=2))
    report = compare_on_test(rows, features, RefusalHeadJudge(args.weights))
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
