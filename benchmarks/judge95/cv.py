"""Grouped 5-fold CV on the calibration half only, over feature-block combinations."""

import sys

import numpy as np

from tether.judges.refusal_head import DEFLECTION_CUES, pattern_features
from tether.judges.refusal_head_train import best_threshold, fit_logistic, grouped_folds, is_refusal_label, load_rows

rows = load_rows()
cal = np.array([r["split"] == "calibration" for r in rows])
y = np.array([is_refusal_label(r["label"]) for r in rows], float)[cal]
folds = grouped_folds([r["prompt_id"] for r, k in zip(rows, cal) if k])
S = np.load(".runs/states.npz")
cues = pattern_features([r["response"] for r in rows])
pattern_score = cues[:, cues.shape[1] - len(DEFLECTION_CUES) - 1]
blocks = {}
for L in (8, 12, 16, 20, 24, 28):
    blocks[f"ml{L}"] = np.concatenate([S["mean"][:, L], S["last"][:, L]], 1)
    blocks[f"j{L}"] = S["judge"][:, L]
blocks["yn"] = S["yesno"][:, :1] - S["yesno"][:, 1:]
try:
    blocks["mini"] = np.load(".runs/minilm.npy")[:, : 4 * 384]
except FileNotFoundError:
    pass


def oof(x, l2, cw, ncue):
    x = np.concatenate([x, cues], 1)[cal]
    s = np.zeros(len(y))
    for f in range(5):
        tr, he = folds != f, folds == f
        m, sc = x[tr].mean(0), x[tr].std(0)
        sc = np.where(sc > 1e-8, sc, 1.0)
        sc[-cues.shape[1] :] /= cw
        w, b = fit_logistic((x[tr] - m) / sc, y[tr], l2)
        p = 1 / (1 + np.exp(-(((x[he] - m) / sc) @ w + b)))
        s[he] = np.maximum(p, pattern_score[cal][he])
    return s


combos = [c.split("+") for c in sys.argv[1:]]
for combo in combos:
    x = np.concatenate([blocks[b] for b in combo], 1)
    for l2 in (0.03, 0.1, 0.3):
        for cw in (3.0, 10.0):
            s = oof(x, l2, cw, cues.shape[1])
            acc = ((s >= 0.5) == y).mean()
            t = best_threshold(s, y)
            lab = np.array([r["label"] for r, k in zip(rows, cal) if k])
            part = ((s >= 0.5) & (lab == "partial_refusal")).sum() / (lab == "partial_refusal").sum()
            print(
                f"{'+'.join(combo):24s} l2={l2:<5} cw={cw:<4} cv@0.5={acc:.3f} ({int(((s >= 0.5) != y).sum())} err) "
                f"cv@best={((s >= t) == y).mean():.3f} partial_recall={part:.2f}",
                flush=True,
            )
            np.save(f".runs/oof_{'+'.join(combo)}_{l2}_{cw}.npy", s)
