"""Grouped 5-fold CV (calibration half only) of a small attention-pooling head over per-token
SmolLM2 states of the response (cached), plus the judge-token state and the cue columns."""

import sys

import numpy as np
import torch

from tether.judges.refusal_head import DEFLECTION_CUES, pattern_features
from tether.judges.refusal_head_train import grouped_folds, is_refusal_label, load_rows

torch.set_num_threads(1)
torch.manual_seed(0)
rows = load_rows()
cal = np.array([r["split"] == "calibration" for r in rows])
yall = np.array([is_refusal_label(r["label"]) for r in rows], np.float32)
folds = grouped_folds([r["prompt_id"] for r, k in zip(rows, cal) if k])
T = np.load(".runs/tokens.npz")
S = np.load(".runs/states.npz")
TOKEN_LAYERS = [12, 16, 20, 24]
use = [TOKEN_LAYERS.index(int(v)) for v in sys.argv[1].split(",")]
lengths = T["lengths"]
starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
tok = T["tokens"][:, use].reshape(len(T["tokens"]), -1).astype(np.float32)  # (sum T, layers*H)
cues = pattern_features([r["response"] for r in rows])
pscore = cues[:, cues.shape[1] - len(DEFLECTION_CUES) - 1]
jl = [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 and sys.argv[2] else []
extra = np.concatenate([cues] + [S["judge"][:, L] for L in jl], 1).astype(np.float32)
maxT = lengths.max()
X = np.zeros((len(rows), maxT, tok.shape[1]), np.float32)
M = np.zeros((len(rows), maxT), bool)
for i in range(len(rows)):
    X[i, : lengths[i]] = tok[starts[i] : starts[i] + lengths[i]]
    M[i, : lengths[i]] = True


class Head(torch.nn.Module):
    def __init__(self, d, e, k=32, heads=4):
        super().__init__()
        self.proj = torch.nn.Linear(d, k * heads)
        self.att = torch.nn.Linear(d, heads)
        self.heads = heads
        self.out = torch.nn.Linear(k * heads + e, 1)
        self.drop = torch.nn.Dropout(0.2)

    def forward(self, x, m, e):
        a = self.att(x).masked_fill(~m[..., None], -1e9).softmax(1)  # (B,T,h)
        v = self.proj(self.drop(x)).view(*x.shape[:2], self.heads, -1)  # (B,T,h,k)
        pooled = torch.einsum("bth,bthk->bhk", a, v).flatten(1)
        return self.out(torch.cat([torch.tanh(pooled), e], 1)).squeeze(1)


def fit_predict(tr, he, wd, epochs=60):
    mu = X[tr][M[tr]].mean(0)
    sd = X[tr][M[tr]].std(0) + 1e-5
    emu = extra[tr].mean(0)
    esd = extra[tr].std(0)
    esd = np.where(esd > 1e-8, esd, 1)

    def prep(ix):
        return (
            torch.from_numpy((X[ix] - mu) / sd) * torch.from_numpy(M[ix][..., None]),
            torch.from_numpy(M[ix]),
            torch.from_numpy((extra[ix] - emu) / esd),
        )

    xt, mt, et = prep(tr)
    yt = torch.from_numpy(yall[tr])
    torch.manual_seed(0)
    model = Head(X.shape[2], extra.shape[1])
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=wd)
    pos = yt.mean()
    w = torch.where(yt > 0, 0.5 / pos, 0.5 / (1 - pos))
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(yt))
        for s in range(0, len(yt), 32):
            b = perm[s : s + 32]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt[b], mt[b], et[b]), yt[b], weight=w[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xh, mh, eh = prep(he)
    with torch.no_grad():
        return np.maximum(torch.sigmoid(model(xh, mh, eh)).numpy(), pscore[he])


calidx = np.where(cal)[0]
y = yall[cal]
lab = np.array([rows[i]["label"] for i in calidx])
for wd in [float(v) for v in sys.argv[3].split(",")]:
    for epochs in [int(v) for v in sys.argv[4].split(",")]:
        s = np.zeros(len(calidx))
        for f in range(5):
            s[folds == f] = fit_predict(calidx[folds != f], calidx[folds == f], wd, epochs)
        acc = ((s >= 0.5) == y).mean()
        part = ((s >= 0.5) & (lab == "partial_refusal")).sum() / (lab == "partial_refusal").sum()
        print(
            f"attn layers={sys.argv[1]} judge={jl} wd={wd} epochs={epochs} cv@0.5={acc:.3f} "
            f"({int(((s >= 0.5) != y).sum())} err) partial_recall={part:.2f}",
            flush=True,
        )
        np.save(f".runs/oof_attn_{sys.argv[1]}_{'-'.join(map(str, jl))}_{wd}_{epochs}.npy", s)
