"""More calibration-half CV candidates: multi-layer heads, an RBF SVM, the prompt-response cosine."""

import numpy as np
from sklearn.decomposition import PCA
from sklearn.svm import SVC

from tether.judges.refusal_head import DEFLECTION_CUES, pattern_features
from tether.judges.refusal_head_train import fit_logistic, grouped_folds, is_refusal_label, load_rows

rows = load_rows()
cal = np.array([r["split"] == "calibration" for r in rows])
y = np.array([is_refusal_label(r["label"]) for r in rows], float)[cal]
folds = grouped_folds([r["prompt_id"] for r, k in zip(rows, cal) if k])
S = np.load(".runs/states.npz")
mini = np.load(".runs/minilm.npy")
cues = pattern_features([r["response"] for r in rows])
C = cues[cal]
ps = C[:, C.shape[1] - len(DEFLECTION_CUES) - 1]
w, a = mini[cal, :384], mini[cal, 768:1152]
cos = ((w * a).sum(1) / np.linalg.norm(w, axis=1) / np.linalg.norm(a, axis=1))[:, None]


def ml(layer):
    return np.concatenate([S["mean"][cal, layer], S["last"][cal, layer]], 1)


def rep(name, p):
    s = np.maximum(p, ps)
    print(f"{name:44s} cv@0.5={((s >= 0.5) == y).mean():.3f} ({int(((s >= 0.5) != y).sum())} err)", flush=True)


def lr(x, ncue, l2=0.1, cw=10.0):
    out = np.zeros(len(y))
    for f in range(5):
        tr, he = folds != f, folds == f
        m, s = x[tr].mean(0), x[tr].std(0)
        s = np.where(s > 1e-8, s, 1)
        s[x.shape[1] - ncue :] /= cw
        wt, b = fit_logistic((x[tr] - m) / s, y[tr], l2)
        out[he] = 1 / (1 + np.exp(-(((x[he] - m) / s) @ wt + b)))
    return out


nc = C.shape[1]
rep("ml16+cues+cos", lr(np.concatenate([ml(16), C, cos], 1), nc + 1))
for l2 in (0.1, 0.3, 1.0):
    rep(f"ml12+ml16+ml20+cues l2={l2}", lr(np.concatenate([ml(12), ml(16), ml(20), C], 1), nc, l2))
    rep(
        f"ml16+j16+j24+cues l2={l2}",
        lr(np.concatenate([ml(16), S["judge"][cal, 16], S["judge"][cal, 24], C], 1), nc, l2),
    )
for Cs in (1.0, 3.0, 10.0):
    for dims in (64, 256):
        out = np.zeros(len(y))
        x = np.concatenate([ml(16), S["judge"][cal, 16]], 1)
        for f in range(5):
            tr, he = folds != f, folds == f
            m, s = x[tr].mean(0), x[tr].std(0) + 1e-6
            pca = PCA(dims, random_state=0).fit((x[tr] - m) / s)
            cm, cs = C[tr].mean(0), C[tr].std(0)
            cs = np.where(cs > 1e-8, cs, 1)

            def z(ix, pca=pca, x=x, m=m, s=s, dims=dims, cm=cm, cs=cs):
                return np.concatenate(
                    [pca.transform((x[ix] - m) / s) / np.sqrt(dims), (C[ix] - cm) / cs / np.sqrt(nc) * 3], 1
                )

            svm = SVC(C=Cs, kernel="rbf", gamma="scale", probability=True, random_state=0, class_weight="balanced").fit(
                z(tr), y[tr]
            )
            out[he] = svm.predict_proba(z(he))[:, 1]
        rep(f"svm rbf C={Cs} pca={dims} (ml16+j16, cues)", out)
