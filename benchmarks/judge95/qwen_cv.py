"""Grouped 5-fold CV on the calibration rows done so far: logistic heads over Qwen judge-token states
(with and without the pattern cues), and the zero-shot Yes/No log-odds.

    python benchmarks/judge95/qwen_cv.py .runs/qwen.npz 14 18 22 14+22
"""
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from tether.judges.refusal_head import DEFLECTION_CUES, pattern_features
from tether.judges.refusal_head_train import best_threshold, fit_logistic, grouped_folds, is_refusal_label, load_rows

rows = load_rows()
S = np.load(sys.argv[1])
cal = np.array([r["split"] == "calibration" for r in rows]) & S["done"]
y = np.array([is_refusal_label(r["label"]) for r in rows], float)[cal]
folds = grouped_folds([r["prompt_id"] for r, k in zip(rows, cal) if k])
cues = pattern_features([r["response"] for r in rows])
pattern_score = cues[:, cues.shape[1] - len(DEFLECTION_CUES) - 1]
lab = np.array([r["label"] for r, k in zip(rows, cal) if k])
yn = (S["yesno"][:, 0] - S["yesno"][:, 1])[cal]
print(f"n={cal.sum()} refusals={int(y.sum())}; zero-shot yes-no: AUC {roc_auc_score(y, yn):.3f}, "
      f"acc@0 {((yn > 0) == y).mean():.3f}, best-cut acc {max(((yn > c) == y).mean() for c in np.unique(yn)):.3f}")


def oof(x, l2, cw, use_cues, use_max):
    if use_cues:
        x = np.concatenate([x, cues], 1)
    x = x[cal]
    s = np.zeros(len(y))
    for f in range(5):
        tr, he = folds != f, folds == f
        m, sc = x[tr].mean(0), x[tr].std(0)
        sc = np.where(sc > 1e-8, sc, 1.0)
        if use_cues:
            sc[-cues.shape[1]:] /= cw
        w, b = fit_logistic((x[tr] - m) / sc, y[tr], l2)
        p = 1 / (1 + np.exp(-(((x[he] - m) / sc) @ w + b)))
        s[he] = np.maximum(p, pattern_score[cal][he]) if use_max else p
    return s


layers = list(S["layers"])
for spec in sys.argv[2:]:
    idx = [layers.index(int(L)) for L in spec.split("+") if L != "yn"]
    log_odds = [S["yesno"][:, :1] - S["yesno"][:, 1:]] if "yn" in spec else []
    x = np.concatenate([S["judge"][:, i] for i in idx] + log_odds, 1)
    for l2 in (0.01, 0.03, 0.1, 0.3):
        for use_cues, cw, use_max in ((False, 1.0, False), (True, 3.0, True), (True, 10.0, True)):
            s = oof(x, l2, cw, use_cues, use_max)
            part = ((s >= 0.5) & (lab == "partial_refusal")).sum() / max(1, (lab == "partial_refusal").sum())
            print(f"L{spec:10s} l2={l2:<5} cues={use_cues!s:5} cw={cw:<4} cv@0.5={((s >= 0.5) == y).mean():.3f} "
                  f"({int(((s >= 0.5) != y).sum())} err) cv@best={((s >= best_threshold(s, y)) == y).mean():.3f} "
                  f"partial={part:.2f}", flush=True)
