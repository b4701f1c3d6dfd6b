#!/usr/bin/env python3
"""CPU inference: qf-engine against esm-cpp (PyPI `esm-cpp`, a C++ inference engine for
ESM-2, the closest peer for CPU inference) in the same run, written as a section of
BENCHMARKS.md.

Like for like: esm-cpp runs the whole encoder over every token (its packed
variable-length forward, with the masked-LM head), so qf-engine runs
`bench --mode infer --pool mean` (the whole encoder over every token, then a mean-pooled
classifier head); both heads are a few per cent of a layer. The same checkpoint would load
in both (a random-weights `EsmForMaskedLM` that transformers writes here; speed does not
depend on the values), and both pack length-sorted sequences into batches of at most the
same token budget, on Pfam training rows, timed over 3 runs of the same batches (median).

Run it with the Python that has torch and transformers (it writes the checkpoint), after
`compare_pytorch.py` (which rewrites BENCHMARKS.md whole); esm-cpp runs in its own venv
(it wants numpy < 2):

    python3 -m venv /tmp/esmcpp && /tmp/esmcpp/bin/pip install esm-cpp
    python tools/compare_esm_cpp.py --esm-cpp-python /tmp/esmcpp/bin/python --threads 2
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION = "## CPU inference against esm-cpp"


def run_json(cmd, log):
    log.write(json.dumps({"cmd": cmd}) + "\n")
    p = subprocess.run(cmd, capture_output=True, text=True)
    line = next((l for l in p.stdout.splitlines() if l.startswith("{")), None)
    if p.returncode or line is None:
        sys.stderr.write(p.stderr[-2000:])
        r = {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}"}
    else:
        r = json.loads(line)
    log.write(json.dumps(r) + "\n")
    log.flush()
    return r


def make_checkpoint(preset, out_dir):
    """A random-weights EsmForMaskedLM of the preset's shape, saved as safetensors."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM
    sys.path.insert(0, HERE)
    from pytorch_baseline import PRESETS
    layers, hidden, heads, inter = PRESETS[preset]
    torch.manual_seed(0)
    cfg = EsmConfig(vocab_size=33, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    intermediate_size=inter, max_position_embeddings=1026, position_embedding_type="rotary",
                    token_dropout=True, emb_layer_norm_before=False, layer_norm_eps=1e-5, mask_token_id=32,
                    pad_token_id=1)
    EsmForMaskedLM(cfg).save_pretrained(out_dir, safe_serialization=True)
    # Written with the names of the published ESM-2 checkpoints, which esm-cpp expects:
    # LayerNorm `weight`/`bias` (transformers 5 writes `gamma`/`beta`) and each layer's
    # rotary `inv_freq` buffer (which recent transformers no longer writes).
    from safetensors.torch import load_file, save_file
    path = os.path.join(out_dir, "model.safetensors")
    rename = {".gamma": ".weight", ".beta": ".bias"}
    tensors = {next((k[: -len(o)] + n for o, n in rename.items() if k.endswith(o)), k): v
               for k, v in load_file(path).items()}
    d = hidden // heads
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    for i in range(layers):
        tensors[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv_freq.clone()
    save_file(tensors, path, metadata={"format": "pt"})
    return path


CHECK_SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ"[:60]


def logits_error(model_dir, npy):
    """‖esm-cpp − transformers‖ / ‖transformers‖ of the check sequence's logits, as text."""
    try:
        import numpy as np
        import torch
        from transformers import EsmForMaskedLM
        sys.path.insert(0, HERE)
        from pytorch_baseline import TOKENIZER
        got = np.load(npy)
        model = EsmForMaskedLM.from_pretrained(model_dir).eval()
        ids = torch.tensor([TOKENIZER(CHECK_SEQUENCE)["input_ids"]])
        with torch.no_grad():
            want = model(input_ids=ids).logits[0].numpy()
        return f"{np.linalg.norm(got - want) / np.linalg.norm(want):.1e}"
    except Exception as e:  # the speed table is still worth writing
        return f"not measured ({type(e).__name__}: {e})"


def label(r):
    if r.get("engine") == "esm-cpp" or r.get("_engine") == "esm-cpp":
        return f"esm-cpp {r.get('version', '')} fp32 ({r.get('isa', '?')}), packed batches of ≤ {r['_budget']} tokens"
    return f"qf-engine, {r['_precision']}, mean pooling, packed batches of ≤ {r['_budget']} tokens"


def fmt(r):
    if "error" in r:
        return f"| {label(r)} | failed: {r['error'][:120]} | |"
    return f"| {label(r)} | {r['sequences_per_s']:.1f} | {r['tokens_per_s']:,.0f} |"


def best(rs):
    ok = [r for r in rs if "error" not in r]
    return max(ok, key=lambda r: r["tokens_per_s"]) if ok else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--esm-cpp-python", required=True, help="the Python of a venv with esm-cpp installed")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "pfam"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--presets", nargs="+", default=["esm2_t6_8M", "esm2_t12_35M"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--qf", default=os.path.join(HERE, "..", "target", "release", "qf-engine"))
    ap.add_argument("--output", default=os.path.join(HERE, "..", "BENCHMARKS.md"),
                    help="the file whose esm-cpp section is replaced (appended when it has none)")
    ap.add_argument("--jsonl", default="compare_esm_cpp.jsonl")
    a = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    lines = [SECTION, "",
             f"Measured {started:%Y-%m-%d %H:%M} UTC, {a.threads} threads, by `python tools/compare_esm_cpp.py "
             f"--esm-cpp-python … --threads {a.threads}`. esm-cpp runs the whole encoder and its masked-LM head over "
             "every token (fp32: its INT8 path starts at 150M); qf-engine runs `bench --mode infer --pool mean`, the "
             "whole encoder over every token and a mean-pooled head, so neither skips work (qf-engine's default "
             "`<cls>` pooling would skip most of the last layer). Same budgets, length-sorted packing, Pfam "
             "training rows, median of 3 runs of the same 20 batches on each side."]
    with open(a.jsonl, "w") as log, tempfile.TemporaryDirectory() as tmp:
        for preset in a.presets:
            print(f"== {preset}", flush=True)
            ckpt = make_checkpoint(preset, os.path.join(tmp, preset))
            runs = []
            check = os.path.join(tmp, f"{preset}.npy")
            for budget in a.budgets:
                r = run_json([a.esm_cpp_python, os.path.join(HERE, "esm_cpp_baseline.py"), "--model", ckpt,
                              "--preset", preset, "--data", a.data, "--max-tokens", str(budget),
                              "--threads", str(a.threads), "--check-sequence", CHECK_SEQUENCE, "--check-out", check],
                             log)
                runs.append(dict(r, _engine="esm-cpp", _budget=budget))
            err = logits_error(os.path.dirname(ckpt), check)
            for precision in ["fp32", "bf16"]:
                for budget in a.budgets:
                    r = run_json([a.qf, "bench", "--mode", "infer", "--pool", "mean", "--preset", preset,
                                  "--classes", "1000", "--data", a.data, "--max-tokens", str(budget), "--steps", "20",
                                  "--warmup", "2", "--repeats", "3", "--device", "cpu", "--threads", str(a.threads),
                                  "--precision", precision, "--quiet"], log)
                    runs.append(dict(r, _engine="qf-engine", _precision=precision, _budget=budget))
            ec = best([r for r in runs if r["_engine"] == "esm-cpp"])
            lines += ["", f"### {preset}", "", f"esm-cpp's masked-LM logits of a 60-residue sequence against "
                      f"transformers' on the same checkpoint: relative error {err}.", "",
                      "| setup | sequences/s | real tokens/s |", "|---|---:|---:|"]
            lines += [fmt(r) for r in runs]
            for precision in ["fp32", "bf16"]:
                q = best([r for r in runs if r["_engine"] == "qf-engine" and r["_precision"] == precision])
                if q and ec:
                    lines += ["", f"qf-engine {precision} ({label(q)}) is **{q['tokens_per_s'] / ec['tokens_per_s']:.2f}×** "
                                  f"esm-cpp ({label(ec)}) in real tokens/s."]
    text = open(a.output).read() if os.path.exists(a.output) else ""
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head + "\n".join(lines) + "\n" + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    with open(a.output, "w") as f:
        f.write(text)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
