#!/usr/bin/env python3
"""Reference outputs of `qf-engine embed` from transformers, for tests/embed.rs.

Loads the committed tiny ESM-2 fixture (tests/fixtures/esm_tiny, 2 layers, hidden 64, with
a contact head) in `transformers.EsmModel` (eager attention, fp32, CPU) and writes, for
four real Pfam domains (18, 40, 50 residues and one of 85 to 95):

  full/{name}/...      every protein at full length (the engine's default --max-len 1024)
  win/{name}/...       --max-len 42 (windows of 40 residues, stride 20, the last aligned to
                       the protein's end, each run alone as `<cls> window <eos>`):
                       per-residue states averaged over the windows covering the residue,
                       mean = their mean over residues, bos = mean of the windows' <cls>
                       vectors, contacts = mean over the windows holding both residues
                       (0 where none does)
  trunc/{name}/...     --truncate 30: fair-esm's truncation_seq_length (BatchConverter keeps
                       seq[:30]), run at that length

with, per set, `mean/{layer}` for layers 0, 1, 2 (fair-esm's repr_layers numbering; layer 2 =
the output after emb_layer_norm_after), `bos/{layer}`, `per_tok/2` (residues only, as
fair-esm's extract saves them) and `contacts` (`EsmModel.predict_contacts`). To stay small
(under 200 KB) `full/` keeps contacts for the proteins under 60 residues, `win/` per_tok
for windowed proteins and contacts for the long one, `trunc/` per_tok for truncated ones. The mean over residues excludes <cls> and <eos>, as
fair-esm's `extract.py` does (`t[i, 1 : len + 1].mean(0)`).

    /work/venv/bin/python tools/make_embed_fixtures.py --out tests/fixtures/embed

`--check-output DIR` instead loads the shards `qf-engine embed` wrote in DIR with the Python
`safetensors` package (the users' reader), checks every index row has its tensors, and
compares them against the `full/` set:

    qf-engine embed --model tests/fixtures/esm_tiny -i tests/fixtures/embed/sequences.fasta \\
        -o /tmp/emb --repr-layers 0,1,2 --include mean,per-tok,bos,contacts --device cpu
    /work/venv/bin/python tools/make_embed_fixtures.py --check-output /tmp/emb
"""

import argparse
import csv
import os
import sys

import esm
import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import EsmModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests", "fixtures", "esm_tiny")
PFAM_DEV = "/work/shared/data/pfam/dev/data-00000-of-00002"

# Pfam dev domains by name (first three are esm_tiny's own fixture rows); the last is
# longer than the 40-residue window, so it runs as several windows.
NAMES = ["P19027/375-392", "B7LSV6/3-42", "Q05459/7-56"]
LONG_MIN, LONG_MAX = 85, 95
# Full-length contacts are kept for the proteins shorter than this (size).
FULL_CONTACTS_BELOW = 60
LAYERS = [0, 1, 2]
PER_TOK_LAYER = 2
WINDOW_MAX_LEN = 42
TRUNCATE = 30
# Token ids from fair-esm's alphabet (the reference of esm_tiny's tokenizer).
ALPHABET = esm.data.Alphabet.from_architecture("ESM-1b")


def tokens(seq):
    return [ALPHABET.cls_idx] + ALPHABET.encode(seq) + [ALPHABET.eos_idx]


def read_sequences():
    """The four named domains, then the first dev domain of LONG_MIN..LONG_MAX residues."""
    found, long_one = {}, None
    with open(PFAM_DEV, newline="") as f:
        for row in csv.DictReader(f):
            name, seq = row["sequence_name"], row["sequence"]
            if name in NAMES:
                found[name] = seq
            elif long_one is None and LONG_MIN <= len(seq) <= LONG_MAX:
                long_one = (name, seq)
    return [(n, found[n]) for n in NAMES] + [long_one]


def eval_windows(residues, window):
    """data::batching::eval_windows."""
    if residues <= window:
        return [(0, residues)]
    stride = max(window // 2, 1)
    last = residues - window
    return [(s, window) for s in range(0, last, stride)] + [(last, window)]


def run(model, seq):
    """States [layer][L+2, hidden] (fair-esm numbering) and contacts [L, L] of one sequence."""
    ids = torch.tensor([tokens(seq)])
    am = torch.ones_like(ids)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=am, output_hidden_states=True)
        contacts = model.predict_contacts(ids, am)[0]
    hs = out.hidden_states
    n = model.config.num_hidden_layers
    assert len(hs) == n + 1, len(hs)
    # fair-esm: repr n is after emb_layer_norm_after, as transformers' hidden_states[n].
    assert torch.equal(hs[n], out.last_hidden_state), "hidden_states[-1] is not the final LayerNorm's output"
    return [h[0].double().numpy() for h in hs], contacts.double().numpy()


def protein_outputs(model, seq, window):
    """per-residue states [layer][L, hidden], bos [layer][hidden], contacts [L, L], windows."""
    L = len(seq)
    wins = eval_windows(L, window)
    hidden = model.config.hidden_size
    sums = [np.zeros((L, hidden)) for _ in LAYERS]
    cover = np.zeros(L)
    bos = [np.zeros(hidden) for _ in LAYERS]
    csum, ccount = np.zeros((L, L)), np.zeros((L, L))
    for start, length in wins:
        states, contacts = run(model, seq[start:start + length])
        for k, layer in enumerate(LAYERS):
            sums[k][start:start + length] += states[layer][1:length + 1]
            bos[k] += states[layer][0]
        cover[start:start + length] += 1
        csum[start:start + length, start:start + length] += contacts
        ccount[start:start + length, start:start + length] += 1
    per_res = [s / cover[:, None] for s in sums]
    contacts = np.where(ccount > 0, csum / np.maximum(ccount, 1), 0.0)
    return per_res, [b / len(wins) for b in bos], contacts, len(wins)


def add_set(out, prefix, model, seqs, window, keep_per_tok, keep_contacts, cut=None):
    for name, seq in seqs:
        s = seq if cut is None else seq[:cut]
        per_res, bos, contacts, n_win = protein_outputs(model, s, window)
        for k, layer in enumerate(LAYERS):
            out[f"{prefix}/{name}/mean/{layer}"] = per_res[k].mean(0)
            out[f"{prefix}/{name}/bos/{layer}"] = bos[k]
        if keep_per_tok(seq, n_win):
            out[f"{prefix}/{name}/per_tok/{PER_TOK_LAYER}"] = per_res[LAYERS.index(PER_TOK_LAYER)]
        if keep_contacts(seq, n_win):
            out[f"{prefix}/{name}/contacts"] = contacts


def make(out_dir):
    torch.manual_seed(0)
    model = EsmModel.from_pretrained(MODEL, attn_implementation="eager", add_pooling_layer=False).eval()
    seqs = read_sequences()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "sequences.fasta"), "w") as f:
        for name, seq in seqs:
            f.write(f">{name} Pfam dev domain\n")
            for i in range(0, len(seq), 60):
                f.write(seq[i:i + 60] + "\n")
    out = {}
    big = 10 ** 9
    add_set(out, "full", model, seqs, big, lambda s, w: True, lambda s, w: len(s) < FULL_CONTACTS_BELOW)
    add_set(out, "win", model, seqs, WINDOW_MAX_LEN - 2, lambda s, w: w > 1, lambda s, w: len(s) >= LONG_MIN)
    add_set(out, "trunc", model, seqs, big, lambda s, w: len(s) > TRUNCATE, lambda s, w: False, cut=TRUNCATE)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}
    path = os.path.join(out_dir, "expected.safetensors")
    save_file(tensors, path, metadata={
        "transformers": transformers.__version__, "torch": torch.__version__,
        "window_max_len": str(WINDOW_MAX_LEN), "truncate": str(TRUNCATE), "layers": "0,1,2",
    })
    print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes; sequences "
          + ", ".join(f"{n} ({len(s)})" for n, s in seqs))


def check_output(emb_dir, fixture_dir):
    """Load qf-engine's shards with the Python safetensors package and compare with full/."""
    from safetensors.numpy import load_file
    expected = load_file(os.path.join(fixture_dir, "expected.safetensors"))
    with open(os.path.join(emb_dir, "index.tsv")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    shards = {}
    worst = 0.0
    for row in rows:
        shard = shards.setdefault(row["file"], load_file(os.path.join(emb_dir, row["file"])))
        for key, want in expected.items():
            if not key.startswith(f"full/{row['name']}/"):
                continue
            got = shard[key[len("full/"):]]
            assert got.shape == want.shape, (key, got.shape, want.shape)
            err = float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want))
            worst = max(worst, err)
            assert err <= 1e-5, (key, err)
    print(f"{len(rows)} proteins in {len(shards)} shard(s) loaded with safetensors "
          f"{__import__('safetensors').__version__}; worst relative error against transformers {worst:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "embed"))
    ap.add_argument("--check-output", metavar="DIR", help="check the shards `qf-engine embed` wrote in DIR")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.check_output:
        check_output(a.check_output, a.out)
    else:
        make(a.out)


if __name__ == "__main__":
    sys.exit(main())
