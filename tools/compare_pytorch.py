#!/usr/bin/env python3
"""qf-engine against PyTorch + transformers on the same workloads, in one run, and
BENCHMARKS.md from the results.

Workloads: ESM-2 8M and 35M (random weights; speed does not depend on them) with a
`--classes`-way classification head, on real Pfam training rows, training (forward,
loss, backward, AdamW) and inference (forward only). For each:
  * qf-engine: `qf-engine bench --mode train|infer` at each of `--qf-budgets` token
    budgets (packed batches, no padding), the median of its repeats;
  * PyTorch, the seed's way: every batch padded to 512, eager attention, batch 16;
  * PyTorch, a careful user's way: length-bucketed dynamic padding, SDPA, several batch
    sizes, and torch.compile at the best of them (where it works).
qf-engine's ratio is against the best PyTorch variant. On a GPU the PyTorch runs use
bf16 autocast and qf-engine bf16; on the CPU both run fp32, and training and inference
are also run in bf16 on both sides like with like (`--precisions`, on CPUs with
AVX512-BF16: PyTorch's CPU autocast through oneDNN, qf-engine's `--precision bf16`).

    python tools/compare_pytorch.py --data ../shared/data/pfam --device cpu --threads 2
    python tools/compare_pytorch.py --device cuda --qf .gpu/qf-engine   # one gpu_check stage

Writes BENCHMARKS.md (or --output) and every raw JSON line to --jsonl; `--from-jsonl LOG
--measured-at "YYYY-MM-DD HH:MM"` rewrites BENCHMARKS.md from such a log without running.
`--merge-jsonl LOG` keeps an earlier run's results for the workloads not run now (for
example `--precisions bf16 --modes train` adds bf16 training to an earlier fp32 run);
each section says when its runs were measured.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SEED_FIGURES = "the seed (QuantaFold) reported 63.9 training and 449.78 inference sequences/s on an A100-40GB"


def run_json(cmd, log):
    """Run `cmd`; return its last JSON line (or a dict with the error)."""
    t0 = time.time()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    p = subprocess.run(cmd, capture_output=True, text=True)
    log.write(json.dumps({"cmd": cmd, "rc": p.returncode, "seconds": time.time() - t0, "started": started}) + "\n")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": " / ".join(tail) or f"exit {p.returncode}", "cmd": cmd, "label": label_of(cmd),
                "started": started}
    r = json.loads(lines[-1])
    log.write(json.dumps(r) + "\n")
    log.flush()
    return dict(r, cmd=cmd, label=label_of(cmd), started=started)


def arg(cmd, flag, default=None):
    return cmd[cmd.index(flag) + 1] if flag in cmd else default


def label_of(cmd):
    """The table label of a logged command (the same whether run now or re-read)."""
    bf16 = arg(cmd, "--precision") == "bf16"
    if "bench" in cmd[:2]:
        return f"qf-engine{', bf16' if bf16 and arg(cmd, '--device') == 'cpu' else ''}, " \
               f"packed batches of ≤ {arg(cmd, '--max-tokens')} tokens"
    b = arg(cmd, "--batch-size")
    if arg(cmd, "--pad") == "max_length":
        return f"PyTorch, the seed's way: pad to 512, eager, batch {b}"
    if "--compile" in cmd and bf16 and arg(cmd, "--device") == "cpu":
        return f"PyTorch, bf16 autocast, as above with torch.compile, batch {b}"
    if "--compile" in cmd:
        return f"PyTorch, as above with torch.compile, batch {b}"
    if bf16 and arg(cmd, "--device") == "cpu":
        return f"PyTorch, bf16 autocast, length-bucketed, SDPA, batch {b}"
    return f"PyTorch, length-bucketed, pad to longest, SDPA, batch {b}"


def read_log(path, measured_at=None):
    """The results of a --jsonl log: each command line, then its result line unless it
    failed. A log written before commands carried their start time takes `measured_at`."""
    runs = []
    for line in open(path):
        r = json.loads(line)
        if "cmd" in r:
            runs.append([r["cmd"], {"error": f"exit {r['rc']}"} if r["rc"] else None, r.get("started", measured_at)])
        elif runs and runs[-1][1] is None:
            runs[-1][1] = r
    return [dict(r if r is not None else {"error": "no result"}, cmd=c, label=label_of(c), started=t)
            for c, r, t in runs]


def workload(r):
    """(preset, mode, engine, bf16 on the CPU) of a result."""
    return (arg(r["cmd"], "--preset"), arg(r["cmd"], "--mode")) + kind(r)


def qf_runs(a, preset, mode, log, cpu_bf16=False):
    out = []
    for budget in a.qf_budgets:
        cmd = [a.qf, "bench", "--mode", mode, "--preset", preset, "--classes", str(a.classes), "--data", a.data,
               "--max-tokens", str(budget), "--steps", str(a.qf_steps[mode]), "--warmup", "2",
               "--repeats", "3", "--device", a.device, "--quiet"]
        if a.device == "cpu":
            cmd += ["--threads", str(a.threads), "--precision", "bf16" if cpu_bf16 else "fp32"]
        else:
            cmd += ["--precision", "bf16"]
        out.append(run_json(cmd, log))
    return out


def torch_run(a, preset, mode, extra, log, cpu_bf16=False):
    cmd = [a.python, os.path.join(HERE, "pytorch_baseline.py"), "--device", a.device, "--preset", preset,
           "--num-labels", str(a.classes), "--data", a.data, "--mode", mode, "--max-rows", str(a.max_rows),
           "--steps", str(a.torch_steps[mode]), "--warmup", "2"] + extra
    if a.device == "cpu":
        cmd += ["--threads", str(a.threads), "--precision", "bf16" if cpu_bf16 else "fp32"]
    else:
        cmd += ["--precision", "bf16"]
    r = run_json(cmd, log)
    r["batch_size"] = int(arg(cmd, "--batch-size"))
    return r


def torch_runs(a, preset, mode, log):
    runs = [torch_run(a, preset, mode, ["--pad", "max_length", "--max-length", "512", "--attn", "eager", "--batch-size", "16"], log)]
    careful = []
    for b in a.batch_sizes:
        careful.append(torch_run(a, preset, mode, ["--pad", "longest", "--bucket", "--attn", "sdpa", "--batch-size", str(b)], log))
    runs += careful
    ok = [r for r in careful if "error" not in r]
    if ok and a.compile:
        best = max(ok, key=lambda r: r["sequences_per_s"])
        runs.append(torch_run(a, preset, mode, ["--pad", "longest", "--bucket", "--attn", "sdpa", "--batch-size",
                               str(best["batch_size"]), "--compile"], log))
    return runs


def torch_bf16_runs(a, preset, mode, log):
    """CPU training or inference under bf16 autocast, the careful user's way, at each batch size,
    then the fastest batch size again with torch.compile."""
    runs = [torch_run(a, preset, mode, ["--pad", "longest", "--bucket", "--attn", "sdpa", "--batch-size", str(b)], log,
                      cpu_bf16=True)
            for b in a.bf16_batch_sizes]
    ok = [r for r in runs if "error" not in r]
    if ok and a.compile:
        best = max(ok, key=lambda r: r["sequences_per_s"])
        runs.append(torch_run(a, preset, mode, ["--pad", "longest", "--bucket", "--attn", "sdpa", "--batch-size",
                                                str(best["batch_size"]), "--compile"], log, cpu_bf16=True))
    return runs


def cpu_has_bf16():
    try:
        return "avx512_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        return False


def ratio_lines(qf, pt, what):
    ok_qf = [r for r in qf if "error" not in r]
    ok_pt = [r for r in pt if "error" not in r]
    if not (ok_qf and ok_pt):
        return []
    best_qf = max(ok_qf, key=lambda r: r["tokens_per_s"])
    best_pt = max(ok_pt, key=lambda r: r["tokens_per_s"])
    ratio = best_qf["tokens_per_s"] / best_pt["tokens_per_s"]
    lines = ["", f"{what}: qf-engine ({best_qf['label']}) is **{ratio:.2f}×** the best PyTorch setup "
                 f"({best_pt['label']}) in real tokens/s."]
    if "mfu" in best_qf:
        p = best_qf["phases_ms"]
        lines += [f"Its model FLOP utilisation is {100 * best_qf['mfu']:.0f}% of the {best_qf['gemm_peak_shape']} GEMM "
                  f"rate measured in the same run (per step: forward {p['forward']:.0f} ms, backward "
                  f"{p['backward']:.0f} ms, optimizer {p['optimizer']:.0f} ms); at 100% of that rate the ratio "
                  f"would be {ratio / best_qf['mfu']:.2f}×."]
    return lines


def when_measured(fp32, bf16, default):
    """One line: when a section's fp32 and bf16 runs started (UTC)."""
    def span(rs):
        ts = sorted({r.get("started") or default for r in rs})
        return ts[0] if len(ts) == 1 else f"{ts[0]} to {ts[-1]}"
    parts = [f"{what} runs {span(rs)} UTC" for rs, what in ((fp32, "fp32"), (bf16, "bf16")) if rs]
    return f"Measured: {', '.join(parts)}."


def machine(a):
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {a.threads} threads" if a.device == "cpu" else "GPU"
    if a.device == "cuda":
        try:
            import torch
            desc = f"{torch.cuda.get_device_name()}, driver {torch.version.cuda}"
        except Exception:
            pass
    return desc


def versions(a):
    v = subprocess.run([a.python, "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
                       capture_output=True, text=True).stdout.split()
    q = subprocess.run([a.qf, "--version"], capture_output=True, text=True).stdout.strip()
    return q, (v[0] if v else "?"), (v[1] if len(v) > 1 else "?")


def fmt(r):
    if "error" in r:
        return f"| {r['label']} | failed: {r['error'][:120]} | | |"
    return f"| {r['label']} | {r['sequences_per_s']:.1f} | {r['tokens_per_s']:,.0f} |"


def kind(r):
    """(engine, bf16 on the CPU) of a result, from its command."""
    cmd = r["cmd"]
    return ("qf" if "bench" in cmd[:2] else "torch",
            arg(cmd, "--precision") == "bf16" and arg(cmd, "--device") == "cpu")


def render(a, results, measured_at):
    qv, tv, hv = versions(a)
    data = os.path.relpath(os.path.abspath(a.data), os.path.join(HERE, ".."))
    lines = [
        "# qf-engine against PyTorch + transformers",
        "",
        f"Measured {measured_at} UTC on {machine(a)} with {qv}, torch {tv}, transformers {hv}, "
        f"by `python tools/compare_pytorch.py --device {a.device} --threads {a.threads}` "
        f"(random weights, {a.classes}-class head, Pfam training rows of `{data}`, "
        f"{'fp32, and bf16 where marked' if a.device == 'cpu' else 'bf16'}). Real tokens are residues plus "
        "`<cls>`/`<eos>`; padding is not counted. qf-engine's figure is the median of 3 runs of the same "
        "batches; PyTorch's one timed run after 2 warm-up steps. CPU bf16: the linear layers and attention's "
        "products multiply bf16 operands with fp32 sums on both sides (PyTorch's CPU autocast through oneDNN "
        "and its CPU flash attention; qf-engine's `--precision bf16`); LayerNorm, GELU and the softmax stay "
        "fp32 in qf-engine, and training keeps fp32 weights, gradients and optimizer state on both sides. "
        "qf-engine's inference is its `predict` path: a `<cls>`-pooled classifier computes its last layer for "
        "the `<cls>` rows only (the logits are the same); the model FLOP utilisation counts the whole model. "
        "Each section says when its runs were measured.",
        "",
        f"For reference, {SEED_FIGURES} (padded to 512, fp32).",
    ]
    sections = {}
    for r in results:
        key = (arg(r["cmd"], "--preset"), arg(r["cmd"], "--mode"))
        sections.setdefault(key, []).append(r)
    for (preset, mode), rs in sections.items():
        group = lambda e, b: [r for r in rs if kind(r) == (e, b)]
        qf, pt, qb, pb = group("qf", False), group("torch", False), group("qf", True), group("torch", True)
        lines += ["", f"## {preset}, {'training' if mode == 'train' else 'inference'}", ""]
        lines += [when_measured(qf + pt, qb + pb, measured_at), ""]
        lines += ["| setup | sequences/s | real tokens/s |", "|---|---:|---:|"]
        lines += [fmt(r) for r in qf + pt + qb + pb]
        lines += ratio_lines(qf, pt, "fp32 against fp32" if a.device == "cpu" else "bf16 against bf16")
        if qb and pb:
            lines += ratio_lines(qb, pb, "bf16 against bf16")
            lines += ratio_lines(qb, pt + pb, "qf-engine bf16 against PyTorch in either precision")
    if a.device == "cpu":
        lines += ["", "## GPU", "", "No GPU figures: none was measured yet. On a GPU, `tools/gpu_check.sh run` times "
                  "ESM-2 35M training against PyTorch bf16 (its speed stage), and "
                  "`python tools/compare_pytorch.py --device cuda` writes this file's GPU tables."]
    with open(a.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {a.output}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "pfam"))
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--presets", nargs="+", default=["esm2_t6_8M", "esm2_t12_35M"])
    ap.add_argument("--modes", nargs="+", default=["train", "infer"])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--qf", default=os.path.join(HERE, "..", "target", "release", "qf-engine"))
    ap.add_argument("--qf-budgets", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                    help="on the CPU: fp32, and bf16 on both sides (default: both where the CPU has AVX512-BF16)")
    ap.add_argument("--bf16-batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--max-rows", type=int, default=20000)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--output", default=os.path.join(HERE, "..", "BENCHMARKS.md"))
    ap.add_argument("--jsonl", default="compare_pytorch.jsonl")
    ap.add_argument("--from-jsonl", metavar="FILE",
                    help="write --output from the log of an earlier run instead of running (give --measured-at)")
    ap.add_argument("--measured-at", help="with --from-jsonl or --merge-jsonl: when that run started, for logs "
                                          "whose commands carry no start time (UTC, YYYY-MM-DD HH:MM)")
    ap.add_argument("--merge-jsonl", metavar="FILE",
                    help="also show an earlier run's results for the workloads not run now")
    a = ap.parse_args()
    if a.from_jsonl:
        if not a.measured_at:
            ap.error("--from-jsonl needs --measured-at")
        render(a, read_log(a.from_jsonl, a.measured_at), a.measured_at)
        return
    if a.precisions is None:
        a.precisions = ["fp32", "bf16"] if a.device == "cpu" and cpu_has_bf16() else ["fp32"]
    if a.device == "cuda":
        a.precisions = ["fp32"]  # one set of runs, bf16 autocast on both sides
    a.qf_steps = {"train": 8, "infer": 20} if a.device == "cpu" else {"train": 20, "infer": 40}
    a.torch_steps = {"train": 12, "infer": 25} if a.device == "cpu" else {"train": 30, "infer": 60}

    started = datetime.datetime.now(datetime.timezone.utc)
    results = []
    with open(a.jsonl, "w") as log:
        for preset in a.presets:
            for mode in a.modes:
                print(f"== {preset} {mode}", flush=True)
                if "fp32" in a.precisions:
                    results += qf_runs(a, preset, mode, log) + torch_runs(a, preset, mode, log)
                if "bf16" in a.precisions:
                    results += qf_runs(a, preset, mode, log, cpu_bf16=True) + torch_bf16_runs(a, preset, mode, log)
    when = f"{started:%Y-%m-%d %H:%M}"
    if a.merge_jsonl:
        now = {workload(r) for r in results}
        earlier = [r for r in read_log(a.merge_jsonl, a.measured_at) if workload(r) not in now]
        first = min([r["started"] for r in earlier if r.get("started")] + [when])
        when = when if first == when else f"{first} and {when}"
        results = earlier + results
        results.sort(key=lambda r: (a.presets.index(arg(r["cmd"], "--preset")) if arg(r["cmd"], "--preset") in a.presets
                                    else 99, a.modes.index(arg(r["cmd"], "--mode")) if arg(r["cmd"], "--mode") in a.modes
                                    else 99))
    render(a, results, when)


if __name__ == "__main__":
    main()
