"""One fold of grouped CV (calibration half only) for a LoRA fine-tune of SmolLM2-135M-Instruct as a
refusal classifier reading the chat-rendered (prompt, response). Fixed recipe, nothing chosen here."""

import json
import sys
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

from tether.judges.policy_states import pair_token_ids
from tether.judges.refusal_head_train import grouped_folds, is_refusal_label, load_rows
from tether.models.loading import load_tokenizer, resolve_model_path

torch.set_num_threads(1)
torch.manual_seed(0)
FOLD = int(sys.argv[1])
EPOCHS = int(sys.argv[2])
FIRST_LAYER = int(sys.argv[3])
LR = float(sys.argv[4]) if len(sys.argv) > 4 else 3e-4
rows = load_rows()
cal = [r for r in rows if r["split"] == "calibration"]
folds = grouped_folds([r["prompt_id"] for r in cal])
tok = load_tokenizer("default")
model = AutoModelForSequenceClassification.from_pretrained(
    resolve_model_path("default"), num_labels=1, dtype=torch.float32
)
model.config.pad_token_id = tok.pad_token_id
model = get_peft_model(
    model,
    LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=list(range(FIRST_LAYER, 30)),
        bias="none",
        task_type="SEQ_CLS",
        modules_to_save=["score"],
    ),
)
enc = [pair_token_ids(r["prompt"], r["response"], tok)[0] for r in cal]
y = torch.tensor([float(is_refusal_label(r["label"])) for r in cal])
train = [i for i in range(len(cal)) if folds[i] != FOLD]
held = [i for i in range(len(cal)) if folds[i] == FOLD]
if FOLD < 0:  # the final fit: every calibration row; the test half is only scored, after training
    test_rows = [r for r in rows if r["split"] == "test"]
    assert not {r["prompt_id"] for r in test_rows} & {r["prompt_id"] for r in cal}
    held = list(range(len(cal), len(cal) + len(test_rows)))
    cal = cal + test_rows
    enc += [pair_token_ids(r["prompt"], r["response"], tok)[0] for r in test_rows]
    y = torch.cat([y, torch.tensor([float(is_refusal_label(r["label"])) for r in test_rows])])
pos = y[train].mean()
assert all(cal[i]["split"] == "calibration" for i in train)
w = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos)) * torch.tensor(
    [2.0 if r["label"] == "partial_refusal" else 1.0 for r in cal]
)


def batch(ix):
    width = max(len(enc[i]) for i in ix)
    ids = torch.full((len(ix), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for k, i in enumerate(ix):
        ids[k, : len(enc[i])] = torch.tensor(enc[i])
        mask[k, : len(enc[i])] = 1
    return ids, mask


def logits(ix):
    ids, mask = batch(ix)
    # the score at each row's last real token (right padding)
    out = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    return out


opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.01)
steps = EPOCHS * ((len(train) + 7) // 8)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 10) * max(0.0, 1 - s / steps))
t0 = time.time()
step = 0
for epoch in range(EPOCHS):
    model.train()
    g = torch.Generator().manual_seed(epoch)
    order = [train[i] for i in torch.randperm(len(train), generator=g)]
    for s in range(0, len(order), 8):
        ix = order[s : s + 8]
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits(ix), y[ix], reduction="none") * w[ix]
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 5 == 0:
            print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
model.eval()
scores = []
with torch.no_grad():
    for s in range(0, len(held), 8):
        scores += torch.sigmoid(logits(held[s : s + 8])).tolist()
scores = np.array(scores)
yh = y[held].numpy()
print(
    json.dumps(
        {
            "fold": FOLD,
            "n": len(held),
            "acc@0.5": float(((scores >= 0.5) == yh).mean()),
            "errors": int(((scores >= 0.5) != yh).sum()),
            "seconds": time.time() - t0,
        }
    ),
    flush=True,
)
if FOLD < 0:
    model.save_pretrained(f".runs/ft_final_e{EPOCHS}_l{FIRST_LAYER}")
np.save(f".runs/ft_fold{FOLD}_e{EPOCHS}_l{FIRST_LAYER}_lr{LR}.npy", np.stack([np.array(held), scores]))
