#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention at the shapes of benches/attention.rs, for
the flash kernel's comparison (run beside it by tools/gpu_check.sh).

The same batches: 16,384 tokens of Pfam-like lengths (the benchmark's log-normal sample)
or of fixed lengths 256 and 1,024, at ESM-2 head shapes 20×16 (8M), 20×24 (35M) and
20×64 (650M). PyTorch needs rectangular tensors, so the sequences are sorted by length
and cut into padded batches of at most 16,384 padded tokens, with a key-padding mask
(SDPA then takes its memory-efficient or math backend; `--backends` restricts it).
Rotary is not included (qf-engine's kernel applies it inside). Throughput is TFLOP/s of
real work, 4·L²·hidden per sequence forward and twice that backward, as the Rust
benchmark counts it. Prints one JSON line per case.

    python tools/pytorch_attention_bench.py --device cuda
    python tools/pytorch_attention_bench.py --device cpu --tiny     # the dry run
"""
import argparse
import json
import math
import random
import time

import torch
import torch.nn.functional as F

SHAPES = [("8M", 20, 16), ("35M", 20, 24), ("650M", 20, 64)]


def lengths(mix, tokens, seed=42):
    """Sequence lengths (with <cls>/<eos>) summing to `tokens`, as benches/cuda_bench does
    in spirit: log-normal, median 120, clipped to [20, 1022] residues."""
    rng = random.Random(seed)
    out, total = [], 0
    while total < tokens:
        if mix == "pfam":
            z = rng.gauss(0.0, 1.0)
            n = int(min(max(math.exp(math.log(120) + 0.7 * z), 20), 1022)) + 2
        else:
            n = int(mix)
        n = max(1, min(n, tokens - total))
        out.append(n)
        total += n
    return out


def padded_batches(lens, budget):
    lens = sorted(lens)
    batches, cur = [], []
    for n in lens:
        if cur and (len(cur) + 1) * max(cur + [n]) > budget:
            batches.append(cur)
            cur = []
        cur.append(n)
    if cur:
        batches.append(cur)
    return batches


def timed(fn, device, reps):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def case(a, preset, heads, hd, mix):
    dev, dt = torch.device(a.device), (torch.bfloat16 if a.device == "cuda" else torch.float32)
    tokens = 48 if a.tiny else 16384
    lens = lengths(mix, tokens)
    batches = []
    for b in padded_batches(lens, tokens):
        L = max(b)
        q, k, v = (torch.randn(len(b), heads, L, hd, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
        mask = torch.zeros(len(b), 1, 1, L, dtype=torch.bool, device=dev)
        for i, n in enumerate(b):
            mask[i, ..., :n] = True
        batches.append((q, k, v, mask))

    def forward():
        with torch.no_grad():
            for q, k, v, m in batches:
                F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    def backward():
        for q, k, v, m in batches:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
            o.backward(torch.full_like(o, 1e-3))

    reps = 1 if a.tiny else 10
    t_fwd = timed(forward, a.device, reps)
    t_fb = timed(backward, a.device, reps)
    t_bwd = max(t_fb - t_fwd, 1e-12)
    flops = sum(4.0 * n * n * heads * hd for n in lens)
    padded = sum(len(b[0]) * b[0].shape[2] for b in batches)
    return {"framework": "pytorch", "op": "scaled_dot_product_attention", "device": a.device, "dtype": str(dt),
            "preset": preset, "heads": heads, "head_dim": hd, "mix": mix, "tokens": sum(lens),
            "padded_tokens": padded, "forward_ms": 1e3 * t_fwd, "backward_ms": 1e3 * t_bwd,
            "forward_tflops": flops / t_fwd / 1e12, "backward_tflops": 2 * flops / t_bwd / 1e12}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="one small case (the dry run on the CPU)")
    a = ap.parse_args()
    shapes = [("8M", 2, 16)] if a.tiny else SHAPES
    mixes = ["pfam"] if a.tiny else ["pfam", "256", "1024"]
    for preset, heads, hd in shapes:
        for mix in mixes:
            print(json.dumps(case(a, preset, heads, hd, mix)), flush=True)


if __name__ == "__main__":
    main()
