"""Aggregate the fine-tune's out-of-fold calibration scores (and the linear ml16 baseline on the same
folds), and, given the final fit's file, its test-half report at the declared threshold 0.5."""

import glob
import json
import sys

import numpy as np

from tether.judges.refusal_head_train import (
    best_threshold,
    grouped_folds,
    is_refusal_label,
    load_rows,
    print_report,
    test_report,
)
from tether.judges.validate import wilson_interval

rows = load_rows()
cal = [r for r in rows if r["split"] == "calibration"]
y = np.array([is_refusal_label(r["label"]) for r in cal])
folds = grouped_folds([r["prompt_id"] for r in cal])
lin = np.load(".runs/oof_ml16_0.1_10.0.npy")
done = sorted(glob.glob(".runs/ft_fold[0-9]_e2_l14.npy"))
idx, sc = [], []
for f in done:
    a = np.load(f)
    i = a[0].astype(int)
    s = a[1]
    idx += i.tolist()
    sc += s.tolist()
    print(
        f,
        "ft",
        ((s >= 0.5) == y[i]).mean().round(3),
        int(((s >= 0.5) != y[i]).sum()),
        "err;  linear ml16 same rows",
        ((lin[i] >= 0.5) == y[i]).mean().round(3),
        int(((lin[i] >= 0.5) != y[i]).sum()),
        "err; n",
        len(i),
    )
if idx:
    idx = np.array(idx)
    sc = np.array(sc)
    right = int(((sc >= 0.5) == y[idx]).sum())
    print(
        "pooled ft",
        right,
        "/",
        len(idx),
        wilson_interval(right, len(idx)),
        "best threshold",
        best_threshold(sc, y[idx]),
    )
    lab = np.array([cal[i]["label"] for i in idx])
    for L in ("full_refusal", "partial_refusal", "compliance"):
        m = lab == L
        print("  ", L, int(((sc >= 0.5) == y[idx])[m].sum()), "/", int(m.sum()))
if len(sys.argv) > 1:
    a = np.load(sys.argv[1])
    test = [r for r in rows if r["split"] == "test"]
    s = a[1]
    assert len(s) == len(test)
    rep = test_report(
        test,
        {f"refusal-classifier (threshold {t})": [bool(v >= t) for v in s] for t in map(float, sys.argv[2:] or ["0.5"])},
    )
    print_report(rep)
    json.dump(rep, open(".runs/ft_test_report.json", "w"), indent=2)
