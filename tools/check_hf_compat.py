#!/usr/bin/env python3
"""Check that a model directory saved by `qf-engine train` loads in Hugging Face
transformers unchanged and predicts what qf-engine predicts.

Classifiers:
    qf-engine predict --model runs/demo/model --input seqs.fasta --output pred.tsv --top-k 3
    python tools/check_hf_compat.py --model runs/demo/model --fasta seqs.fasta --predictions pred.tsv
Loads the directory with `EsmForSequenceClassification.from_pretrained` (no missing or
unexpected keys allowed), runs each sequence alone in fp32, and compares the top-k
families and probabilities with qf-engine's TSV (probabilities to 1e-4).

Contact models:
    qf-engine predict-contacts --model runs/contact/model --sequence MKT... --output maps
    python tools/check_hf_compat.py --contacts --model runs/contact/model --sequence MKT... --npy maps/sequence1.npy
Loads the directory with `EsmModel.from_pretrained` (only the pooler, which EsmModel adds
and contact prediction does not use, may be missing) and compares `predict_contacts` with
qf-engine's map (to 1e-5).
"""
import argparse, sys
import torch
from transformers import EsmForSequenceClassification

VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "N",
         "K", "Q", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]
IDS = {t: i for i, t in enumerate(VOCAB)}

def read_fasta(path):
    name, seq, out = None, [], []
    for line in open(path):
        line = line.strip()
        if line.startswith(">"):
            if name is not None:
                out.append((name, "".join(seq)))
            name, seq = line[1:].split()[0], []
        elif line:
            seq.append(line)
    if name is not None:
        out.append((name, "".join(seq)))
    return out

def check_contacts(a):
    import numpy as np
    from transformers import EsmModel
    model, info = EsmModel.from_pretrained(a.model, output_loading_info=True, attn_implementation="eager")
    missing = set(info["missing_keys"]) - {"pooler.dense.weight", "pooler.dense.bias"}
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        sys.exit(f"loading info not clean: {info}")
    model.eval()
    ids = torch.tensor([[0] + [IDS.get(c, 3) for c in a.sequence.upper()] + [2]])
    with torch.no_grad():
        hf = model.predict_contacts(ids, torch.ones_like(ids))[0].double().numpy()
    ours = np.load(a.npy).astype(np.float64)
    diff = float(np.abs(hf - ours).max())
    if hf.shape != ours.shape or diff > 1e-5:
        sys.exit(f"contact maps differ: shapes {hf.shape} {ours.shape}, max difference {diff:.2e}")
    print(f"OK: {hf.shape[0]}×{hf.shape[0]} contact map, max probability difference {diff:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--fasta")
    ap.add_argument("--predictions")
    ap.add_argument("--contacts", action="store_true", help="check a contact model (EsmModel) instead")
    ap.add_argument("--sequence", help="with --contacts: the sequence qf-engine predicted")
    ap.add_argument("--npy", help="with --contacts: qf-engine's .npy map of it")
    a = ap.parse_args()
    if a.contacts:
        return check_contacts(a)
    model, info = EsmForSequenceClassification.from_pretrained(a.model, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"loading info not clean: {bad}")
    model.eval()
    rows = [l.rstrip("\n").split("\t") for l in open(a.predictions)][1:]
    want = {r[0]: list(zip(r[1::2], map(float, r[2::2]))) for r in rows}
    worst = 0.0
    for name, seq in read_fasta(a.fasta):
        ids = torch.tensor([[0] + [IDS.get(c, 3) for c in seq.upper()] + [2]])
        with torch.no_grad():
            p = torch.softmax(model(input_ids=ids).logits[0].double(), -1)
        top = torch.topk(p, len(want[name]))
        got = [(model.config.id2label[int(i)], float(v)) for v, i in zip(top.values, top.indices)]
        for (gf, gp), (wf, wp) in zip(got, want[name]):
            if gf != wf and abs(gp - wp) > 1e-4:
                sys.exit(f"{name}: transformers says {got}, qf-engine says {want[name]}")
            worst = max(worst, abs(gp - wp))
    print(f"OK: {len(want)} sequences, same top-{len(got)} families, max probability difference {worst:.2e}")

if __name__ == "__main__":
    main()
