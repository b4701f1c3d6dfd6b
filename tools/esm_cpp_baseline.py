#!/usr/bin/env python3
"""esm-cpp (PyPI `esm-cpp`, a C++ CPU inference engine for ESM-2) on the rows qf-engine's
inference benchmark reads, for `tools/compare_esm_cpp.py`.

Runs esm-cpp's packed variable-length forward (`Model.forward_batch`: the encoder and the
masked-LM head over every token) on real Pfam training rows, batched the way
`qf-engine bench --mode infer` batches them: sequences sorted by length and packed into
batches of at most --max-tokens tokens, the batches shuffled. --warmup batches run
untimed, then --repeats timed runs over the same --steps batches; prints ONE JSON line
with the median run. Real tokens are residues plus <cls>/<eos>.

It needs only esm-cpp and numpy (esm-cpp 0.2 wants numpy < 2), so it runs in its own
venv:

    python3 -m venv /tmp/esmcpp && /tmp/esmcpp/bin/pip install esm-cpp
    /tmp/esmcpp/bin/python tools/esm_cpp_baseline.py --model runs/esm8m/model.safetensors \\
        --data ../shared/data/pfam --preset esm2_t6_8M --max-tokens 2048 --threads 2
"""

import argparse
import csv
import glob
import json
import os
import random
import statistics
import sys
import time

import numpy as np


def threads_from_args():
    """esm-cpp reads its thread count from ESM_NUM_THREADS when its pool starts."""
    for i, x in enumerate(sys.argv):
        if x == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if x.startswith("--threads="):
            return x.split("=", 1)[1]
    return str(os.cpu_count())


os.environ["ESM_NUM_THREADS"] = threads_from_args()
import esm_cpp  # noqa: E402  (after ESM_NUM_THREADS)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model.safetensors of an ESM-2 checkpoint (EsmForMaskedLM)")
    ap.add_argument("--preset", required=True, help="the preset the checkpoint was made from (for the record)")
    ap.add_argument("--data", required=True, help="Pfam split directory (its train/ shards are read)")
    ap.add_argument("--max-rows", type=int, default=20000, help="rows read from the training shards")
    ap.add_argument("--max-tokens", type=int, default=2048, help="token budget per packed batch")
    ap.add_argument("--steps", type=int, default=20, help="timed batches per run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--check-sequence", help="also write esm-cpp's logits of this sequence to --check-out (.npy)")
    ap.add_argument("--check-out")
    return ap.parse_args()


def read_sequences(data, max_rows):
    path = os.path.join(data, "train") if os.path.isdir(os.path.join(data, "train")) else data
    files = sorted(glob.glob(os.path.join(path, "data-*")))
    if not files:
        sys.exit(f"error: no Pfam shards (data-*) under {path}")
    seqs = []
    for fn in files:
        with open(fn, newline="") as f:
            r = csv.reader(f)
            col = next(r).index("sequence")
            for row in r:
                seqs.append(row[col])
                if len(seqs) >= max_rows:
                    return seqs
    return seqs


def packed_batches(token_ids, max_tokens, seed):
    """Length-sorted batches of at most max_tokens tokens, in random order."""
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    batches, cur, used = [], [], 0
    for i in order:
        n = len(token_ids[i])
        if cur and used + n > max_tokens:
            batches.append(cur)
            cur, used = [], 0
        cur.append(token_ids[i])
        used += n
    if cur:
        batches.append(cur)
    random.Random(seed).shuffle(batches)
    return batches


def main():
    a = parse_args()
    model = esm_cpp.Model.load_from_safetensors(a.model)
    if esm_cpp.Model.num_threads != a.threads:
        sys.exit(f"error: esm-cpp runs {esm_cpp.Model.num_threads} threads, not {a.threads}")
    tok = esm_cpp.Tokenizer()
    if a.check_sequence:
        np.save(a.check_out, model.forward(np.asarray(tok.encode(a.check_sequence), dtype=np.int32)))
    ids = [np.asarray(tok.encode(s), dtype=np.int32) for s in read_sequences(a.data, a.max_rows)]
    batches = packed_batches(ids, a.max_tokens, a.seed)
    if len(batches) < a.warmup + a.steps:
        sys.exit(f"error: only {len(batches)} batches for {a.warmup} warm-up and {a.steps} timed steps")
    for b in batches[: a.warmup]:
        model.forward_batch(b)
    timed = batches[a.warmup: a.warmup + a.steps]
    seqs = sum(len(b) for b in timed)
    toks = sum(len(x) for b in timed for x in b)
    runs = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for b in timed:
            out = model.forward_batch(b)
        runs.append(time.perf_counter() - t0)
        if not all(np.isfinite(o).all() for o in out):
            sys.exit("error: esm-cpp returned non-finite logits")
    dt = statistics.median(runs)
    cfg = model.config
    print(json.dumps({
        "engine": "esm-cpp",
        "version": esm_cpp.__version__,
        "isa": esm_cpp.current_isa(),
        "preset": a.preset,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "threads": esm_cpp.Model.num_threads,
        "max_tokens": a.max_tokens,
        "steps": a.steps,
        "repeats": a.repeats,
        "runs_seconds": runs,
        "sequences_per_s": seqs / dt,
        "tokens_per_s": toks / dt,
        "mean_tokens_per_sequence": toks / seqs,
    }))


if __name__ == "__main__":
    main()
