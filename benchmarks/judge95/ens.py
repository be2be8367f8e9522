import numpy as np

from tether.judges.refusal_head_train import is_refusal_label, load_rows
from tether.judges.validate import wilson_interval

rows = load_rows()
cal = [r for r in rows if r["split"] == "calibration"]
y = np.array([is_refusal_label(r["label"]) for r in cal])
lab = np.array([r["label"] for r in cal])
lin = np.load(".runs/oof_ml16_0.1_10.0.npy")
ft = np.load(".runs/oof_minilm_ft_e4_lr5e-05.npy")
for name, s in (("layer-16 head", lin), ("MiniLM fine-tuned", ft), ("mean of the two", (lin + ft) / 2)):
    ok = (s >= 0.5) == y
    k = int(ok.sum())
    lo, hi = wilson_interval(k, len(y))
    print(
        f"{name:20s} {k}/{len(y)} = {k / len(y):.3f} [{lo:.3f}, {hi:.3f}]",
        {
            L: f"{int(ok[lab == L].sum())}/{int((lab == L).sum())}"
            for L in ("full_refusal", "partial_refusal", "compliance")
        },
    )
