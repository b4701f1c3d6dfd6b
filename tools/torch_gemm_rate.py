#!/usr/bin/env python3
"""PyTorch's dense GEMM rate on the CPU, fp32 and bf16, at square 1,024 products and
ESM-2 8M/35M layer shapes: the ceiling that PyTorch's own training and inference share
with qf-engine's (`qf-engine bench` reports its own rate beside its MFU).

    python tools/torch_gemm_rate.py --threads 2
"""
import argparse
import time

import torch


def rate(a, b, seconds=1.0):
    for _ in range(3):
        a @ b
    t, reps = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        a @ b
        reps += 1
    m, k = a.shape
    return 2 * m * k * b.shape[1] * reps / (time.perf_counter() - t) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for m, k, n in [(1024, 1024, 1024), (4096, 320, 1280), (4096, 1280, 320), (4096, 480, 1920)]:
        x, w = torch.randn(m, k), torch.randn(k, n)
        f32 = rate(x, w)
        bf16 = rate(x.bfloat16(), w.bfloat16())
        print(f"{m}x{k}x{n}: fp32 {f32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
