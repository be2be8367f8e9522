import numpy as np
import torch

from tether.judges.refusal_head import pair_features
from tether.judges.refusal_head_train import load_rows

torch.set_num_threads(1)

rows = load_rows()
f = pair_features([r["prompt"] for r in rows], [r["response"] for r in rows])
np.save(".runs/minilm.npy", f)
print(f.shape)
