"""Quick CV variants (calibration half only): prompt-kind interactions (oracle and estimated), averaging heads."""

import numpy as np

from tether.judges.refusal_head import DEFLECTION_CUES, pattern_features
from tether.judges.refusal_head_train import fit_logistic, grouped_folds, is_refusal_label, load_rows

rows = load_rows()
cal = np.array([r["split"] == "calibration" for r in rows])
y = np.array([is_refusal_label(r["label"]) for r in rows], float)[cal]
folds = grouped_folds([r["prompt_id"] for r, k in zip(rows, cal) if k])
S = np.load(".runs/states.npz")
mini = np.load(".runs/minilm.npy")
cues = pattern_features([r["response"] for r in rows])
ps = cues[:, cues.shape[1] - len(DEFLECTION_CUES) - 1][cal]
harm = np.array([r["prompt_kind"] == "harmful" for r in rows], float)[cal]
ml16 = np.concatenate([S["mean"][:, 16], S["last"][:, 16]], 1)[cal]
C = cues[cal]
P = mini[cal, 768:1152]


def std(tr, x, ncue, cw):
    m, s = x[tr].mean(0), x[tr].std(0)
    s = np.where(s > 1e-8, s, 1)
    s[x.shape[1] - ncue :] /= cw
    return m, s


def oof(x, ncue, l2=0.1, cw=10.0):
    out = np.zeros(len(y))
    for f in range(5):
        tr, he = folds != f, folds == f
        m, s = std(tr, x, ncue, cw)
        w, b = fit_logistic((x[tr] - m) / s, y[tr], l2)
        out[he] = 1 / (1 + np.exp(-(((x[he] - m) / s) @ w + b)))
    return out


def rep(name, p):
    s = np.maximum(p, ps)
    print(f"{name:40s} cv@0.5={((s >= 0.5) == y).mean():.3f} ({int(((s >= 0.5) != y).sum())} err)", flush=True)


# estimated harmfulness of the prompt, out of fold, from the prompt's MiniLM embedding
hp = np.zeros(len(y))
for f in range(5):
    tr, he = folds != f, folds == f
    m, s = P[tr].mean(0), P[tr].std(0) + 1e-8
    w, b = fit_logistic((P[tr] - m) / s, harm[tr], 0.1)
    hp[he] = 1 / (1 + np.exp(-(((P[he] - m) / s) @ w + b)))
print("prompt-kind accuracy (oof)", ((hp >= 0.5) == harm).mean())
base = oof(np.concatenate([ml16, C], 1), C.shape[1])
rep("ml16+cues", base)
for name, h in (("oracle kind", harm), ("estimated kind", (hp >= 0.5).astype(float))):
    x = np.concatenate([ml16, C, C * h[:, None], h[:, None]], 1)
    rep(f"ml16+cues+cues*{name}", oof(x, 2 * C.shape[1] + 1))
    p = np.zeros(len(y))
    for k in (0, 1):
        sel = h == k
        x = np.concatenate([ml16, C], 1)
        out = np.zeros(len(y))
        for f in range(5):
            tr, he = (folds != f) & sel, (folds == f) & sel
            m, s = std(tr, x, C.shape[1], 10.0)
            w, b = fit_logistic((x[tr] - m) / s, y[tr], 0.1)
            out[he] = 1 / (1 + np.exp(-(((x[he] - m) / s) @ w + b)))
        p[sel] = out[sel]
    rep(f"separate heads by {name}", p)
o_mini = oof(np.concatenate([mini[cal, :1536], C], 1), C.shape[1], 0.1, 3.0)
rep("mini", o_mini)
j16 = S["judge"][cal, 16]
o_j = oof(np.concatenate([j16, C], 1), C.shape[1], 0.1, 3.0)
rep("j16", o_j)
rep("mean(ml16, mini)", (base + o_mini) / 2)
rep("mean(ml16, j16)", (base + o_j) / 2)
rep("mean(all3)", (base + o_mini + o_j) / 3)
np.save(".runs/oof_mean3.npy", np.maximum((base + o_mini + o_j) / 3, ps))
