#!/usr/bin/env python3
"""PyTorch + transformers peer for qf-engine's training and inference benchmarks.

Trains (`--mode train`) or runs inference with (`--mode infer`)
`EsmForSequenceClassification` (random init from an ESM-2 preset's config) on real
Pfam train rows, the way users do it: random batches, each padded to its longest
sequence (DataCollatorWithPadding style) or to --max-length, optionally
length-bucketed (`--bucket`, transformers' group_by_length) and compiled
(`--compile`), and prints ONE JSON line with the measured throughput.

Example:
    /work/venv/bin/python tools/pytorch_baseline.py --device cuda \
        --preset esm2_t12_35M --batch-size 32 --steps 50 --precision bf16 --attn sdpa

Labels: families are ranked by their number of rows in the rows read (largest
first, ties by name); label = rank % --num-labels. With --top-families N only
rows of the N largest families are used (then labels are 0..N-1 when
N <= --num-labels).

Timing: --warmup steps run first (not timed), then --steps steps are timed
end to end: batch collation (padding, host->device copy), forward, loss,
backward, optimizer step; torch.cuda.synchronize() before reading the clock.
tokens_per_s counts real tokens (residues + <cls> + <eos>, after truncation to
--max-length); padded_tokens_per_s counts every position of the padded batches.
"""

import argparse
import csv
import glob
import json
import os
import random
import resource
import sys
import time

import torch
import transformers
from transformers import EsmConfig, EsmForSequenceClassification

# layers, hidden, heads, intermediate
PRESETS = {
    "esm2_t6_8M": (6, 320, 20, 1280),
    "esm2_t12_35M": (12, 480, 20, 1920),
    "esm2_t30_150M": (30, 640, 20, 2560),
    "esm2_t33_650M": (33, 1280, 20, 5120),
    "esm2_t36_3B": (36, 2560, 40, 10240),
    "esm2_t48_15B": (48, 5120, 40, 20480),
}

# ESM-2's tokenizer as a user loads it from a checkpoint directory: transformers'
# EsmTokenizer over the vocab.txt that tools/make_reference_fixtures.py saved from
# fair-esm's alphabet.
TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "reference",
                             "hf_tokenizer")
TOKENIZER = transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)
PAD = TOKENIZER.pad_token_id


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="esm2_t6_8M")
    ap.add_argument("--num-labels", type=int, default=5000)
    ap.add_argument("--top-families", type=int, default=0, help="only use rows of the N largest families (0 = all)")
    ap.add_argument("--data", default="/work/shared/data/pfam",
                    help="Pfam split root (uses its train/ shards), a folder of shards, or one shard file")
    ap.add_argument("--max-rows", type=int, default=0, help="read at most this many rows (0 = all)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                    help="fp16/bf16 = torch.autocast mixed precision with fp32 master weights (fp16 adds GradScaler)")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="sdpa")
    ap.add_argument("--pad", choices=["longest", "max_length"], default="longest")
    ap.add_argument("--max-length", type=int, default=1024, help="truncate to this many tokens (incl. <cls>/<eos>)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                    help="fused AdamW (default: on for cuda, off for cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["train", "infer"], default="train",
                    help="train: forward, loss, backward, AdamW; infer: forward only under torch.inference_mode")
    ap.add_argument("--bucket", action=argparse.BooleanOptionalAction, default=False,
                    help="length-bucketed batches (sort each window of 50 batches by length, then shuffle the "
                         "batches), as transformers' group_by_length does")
    return ap.parse_args()


def shard_files(path):
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(os.path.join(path, "train")):
        path = os.path.join(path, "train")
    files = sorted(glob.glob(os.path.join(path, "data-*")))
    if not files:
        sys.exit(f"error: no Pfam shards (data-*) under {path}")
    return files


def read_rows(files, max_rows):
    rows = []
    for fn in files:
        with open(fn, newline="") as f:
            r = csv.reader(f)
            header = next(r)
            try:
                fi, si = header.index("family_id"), header.index("sequence")
            except ValueError:
                sys.exit(f"error: {fn}: header {header} lacks family_id/sequence")
            for row in r:
                rows.append((row[fi], row[si]))
                if max_rows and len(rows) >= max_rows:
                    return rows
    return rows


def tokenize(seq, max_length):
    return TOKENIZER(seq, truncation=True, max_length=max_length)["input_ids"]


def main():
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False")
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)

    # ---- data ----
    rows = read_rows(shard_files(args.data), args.max_rows)
    counts = {}
    for fam, _ in rows:
        counts[fam] = counts.get(fam, 0) + 1
    ranked = sorted(counts, key=lambda f: (-counts[f], f))
    if args.top_families:
        keep = set(ranked[: args.top_families])
        rows = [r for r in rows if r[0] in keep]
    rank = {f: i for i, f in enumerate(ranked)}
    n_needed = (args.warmup + args.steps) * args.batch_size
    rng = random.Random(args.seed)
    picks = [rows[rng.randrange(len(rows))] for _ in range(n_needed)]  # plain random batches
    examples = [(tokenize(s, args.max_length), rank[f] % args.num_labels) for f, s in picks]
    if args.bucket:
        window = 50 * args.batch_size
        for i in range(0, len(examples), window):
            examples[i:i + window] = sorted(examples[i:i + window], key=lambda e: len(e[0]))

    def collate(batch):
        L = args.max_length if args.pad == "max_length" else max(len(t) for t, _ in batch)
        ids = torch.full((len(batch), L), PAD, dtype=torch.long)
        am = torch.zeros((len(batch), L), dtype=torch.long)
        for i, (t, _) in enumerate(batch):
            ids[i, : len(t)] = torch.tensor(t)
            am[i, : len(t)] = 1
        labels = torch.tensor([y for _, y in batch], dtype=torch.long)
        return ids, am, labels, sum(len(t) for t, _ in batch), len(batch) * L

    # ---- model ----
    layers, hidden, heads, inter = PRESETS[args.preset]
    config = EsmConfig(
        vocab_size=33, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inter, max_position_embeddings=1026, position_embedding_type="rotary",
        token_dropout=True, emb_layer_norm_before=False, layer_norm_eps=1e-5, mask_token_id=32,
        pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=args.num_labels, problem_type="single_label_classification",
    )
    config._attn_implementation = args.attn
    model = EsmForSequenceClassification(config)
    model.config._attn_implementation = args.attn
    model.to(dev).train(args.mode == "train")
    n_params = sum(p.numel() for p in model.parameters())
    fused = args.fused if args.fused is not None else args.device == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=fused)
    step_model = torch.compile(model) if args.compile else model
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision)
    scaler = torch.amp.GradScaler(args.device, enabled=args.precision == "fp16")

    def infer_step(batch):
        ids, am, labels, real, padded = collate(batch)
        ids = ids.to(dev, non_blocking=True)
        am = am.to(dev, non_blocking=True)
        with torch.inference_mode(), torch.autocast(args.device, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = step_model(input_ids=ids, attention_mask=am).logits
        return logits.float().softmax(-1).sum().detach(), real, padded

    def train_step(batch):
        ids, am, labels, real, padded = collate(batch)
        ids = ids.to(dev, non_blocking=True)
        am = am.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        with torch.autocast(args.device, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = step_model(input_ids=ids, attention_mask=am, labels=labels)
        scaler.scale(out.loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach(), real, padded

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    step = train_step if args.mode == "train" else infer_step
    B = args.batch_size
    batches = [examples[i * B:(i + 1) * B] for i in range(args.warmup + args.steps)]
    if args.bucket:
        rng.shuffle(batches)
    for b in batches[: args.warmup]:
        step(b)
    sync()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    real_tok = padded_tok = 0
    t0 = time.perf_counter()
    for b in batches[args.warmup:]:
        loss, r, p = step(b)
        real_tok += r
        padded_tok += p
    sync()
    dt = time.perf_counter() - t0

    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        gpu_name = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        gpu_name = None
    seqs = args.steps * B
    print(json.dumps({
        "framework": "pytorch",
        "mode": args.mode,
        "bucket": args.bucket,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": args.device,
        "gpu_name": gpu_name,
        "threads": torch.get_num_threads() if args.device == "cpu" else None,
        "preset": args.preset,
        "params": n_params,
        "num_labels": args.num_labels,
        "precision": args.precision,
        "attn": args.attn,
        "pad": args.pad,
        "max_length": args.max_length,
        "compile": args.compile,
        "batch_size": B,
        "steps": args.steps,
        "warmup": args.warmup,
        "seconds": dt,
        "sequences_per_s": seqs / dt,
        "tokens_per_s": real_tok / dt,
        "padded_tokens_per_s": padded_tok / dt,
        "mean_tokens_per_seq": real_tok / seqs,
        "mean_padded_len": padded_tok / seqs,
        "padding_fraction": 1 - real_tok / padded_tok,
        "final_loss": loss.item(),
        "peak_mem_bytes": peak,
    }))


if __name__ == "__main__":
    main()
