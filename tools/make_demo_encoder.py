#!/usr/bin/env python3
"""Build the built-in demo's pretrained encoder (src/data/demo/encoder/) from an MLM run.

The encoder is `esm2_tiny` (4 layers, hidden 96, 0.46 M parameters) trained by qf-engine's
own masked-language-model task on the sequences of the training split of
../shared/data/pfam (labels ignored; the demo's held-out domains come from dev/, which the
MLM run never sees). It was made with:

    qf-engine train --task mlm --data ../shared/data/pfam --preset esm2_tiny --device cpu \\
        --threads 1 --max-tokens 2048 --max-len 1024 --lr 2e-3 --warmup 0.06 \\
        --max-steps 13797 --eval-limit 2000 --output runs/p60_b/mlm
    python tools/make_demo_encoder.py runs/p60_b/mlm/model

(that run is the MLM phase of README's 60-minute pretraining experiment: 1,771 s on one
core of an AMD EPYC, 2026-12-07; held-out masked-token accuracy 19.9 %, perplexity 14.16).

This script keeps the encoder (EsmModel layout, no `esm.` prefix), drops the MLM head,
stores the weights as fp16 (the loader widens them to fp32; 0.90 MB instead of 1.8) and
writes config.json with `architectures: ["EsmModel"]`. Deterministic.
Needs numpy and safetensors (both come with transformers).
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

SRC = sys.argv[1] if len(sys.argv) > 1 else "runs/p60_b/mlm/model"
OUT = sys.argv[2] if len(sys.argv) > 2 else "src/data/demo/encoder"

tensors = load_file(os.path.join(SRC, "model.safetensors"))
encoder = {}
for name, value in sorted(tensors.items()):
    if name.startswith("lm_head."):
        continue
    name = name[len("esm."):] if name.startswith("esm.") else name
    encoder[name] = np.ascontiguousarray(value.astype(np.float16))

config = json.load(open(os.path.join(SRC, "config.json")))
config["architectures"] = ["EsmModel"]
config.pop("qf_engine_task", None)
config["torch_dtype"] = "float16"

os.makedirs(OUT, exist_ok=True)
save_file(encoder, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})
with open(os.path.join(OUT, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
size = os.path.getsize(os.path.join(OUT, "model.safetensors"))
print(f"wrote {OUT}: {len(encoder)} tensors, {sum(v.size for v in encoder.values()):,} parameters, {size:,} bytes")
