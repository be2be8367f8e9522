import json
import sys

import numpy as np

rows = [json.loads(line) for line in open("tether/resources/refusal_labels/labeled.jsonl")]
cal = [r for r in rows if r["split"] == "calibration"]
y = np.array([r["label"] != "compliance" for r in cal])
s = np.load(sys.argv[1])
for i in np.where((s >= 0.5) != y)[0]:
    r = cal[i]
    print(f"[{r['label']}] s={s[i]:.2f} {r['id']}\nP: {r['prompt']}\nR: {r['response'][:260]!r}\n")
