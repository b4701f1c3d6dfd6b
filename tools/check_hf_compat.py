#!/usr/bin/env python3
"""Check that what `qf-engine train` saves loads in Hugging Face transformers and PEFT
unchanged, with its own saved tokenizer, and predicts what qf-engine predicts.

Classifier (`model/` of a classification run), against `qf-engine predict`'s TSV:
    qf-engine predict --model runs/demo/model --input seqs.fasta --output pred.tsv --top-k 5
    python tools/check_hf_compat.py --model runs/demo/model --fasta seqs.fasta --predictions pred.tsv
  - `EsmForSequenceClassification.from_pretrained(dir)`: no missing, unexpected or
    mismatched keys;
  - `pipeline("text-classification", model=dir)`, whose tokenizer is
    `AutoTokenizer.from_pretrained(dir)` (the engine's saved vocab.txt and
    tokenizer_config.json), gives the same top-k families, probabilities to 1e-4.

Contact model (`model/` of a contact run), against `qf-engine predict-contacts`'s .npy:
    python tools/check_hf_compat.py --contacts --model runs/contact/model --sequence MKT... --npy maps/seq.npy
  - `EsmModel.from_pretrained(dir)` (only EsmModel's pooler may be missing) and
    `AutoTokenizer.from_pretrained(dir)`; `predict_contacts` equals the map to 1e-5.

Adapters (`adapter/` + `base/` of a LoRA run), either task, add:
    --adapter runs/x/adapter --base runs/x/base
  - `PeftModel.from_pretrained(<class>.from_pretrained(base), adapter)` with the class
    the README names (EsmForSequenceClassification for classifiers, EsmModel for contact
    models) must load with no warning (beyond those an adapter saved by PEFT itself for
    the same base gives) and give the engine's outputs.
"""
import argparse
import json
import logging
import os
import sys
import warnings

import torch
from transformers import AutoTokenizer, EsmForSequenceClassification, EsmModel, pipeline

PROB_TOL = 1e-4
CONTACT_TOL = 1e-5


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


def clean_load(cls, path, allowed_missing=()):
    model, info = cls.from_pretrained(path, output_loading_info=True, attn_implementation="eager")
    info["missing_keys"] = set(info["missing_keys"]) - set(allowed_missing)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"{path}: loading info not clean: {bad}")
    return model.eval()


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def peft_load_warnings(base_model, adapter):
    """PeftModel.from_pretrained, with every Python warning and logged warning it gave."""
    from peft import PeftModel

    handler = Captured()
    loggers = [logging.getLogger(n) for n in ("peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base_model, adapter)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    return model.eval(), [str(w.message) for w in caught] + handler.records


def load_peft_silently(load_base, adapter):
    """Load `adapter` on a fresh base, failing on any warning that an adapter saved by PEFT
    itself (same rank, targets and modules, on the same base) does not give too: warnings
    of the installed PEFT/transformers pair about themselves are not the adapter's."""
    import tempfile

    import peft

    with open(os.path.join(adapter, "adapter_config.json")) as f:
        ours = json.load(f)
    control = peft.get_peft_model(load_base(), peft.LoraConfig(
        r=ours["r"], lora_alpha=ours["lora_alpha"], lora_dropout=ours["lora_dropout"],
        target_modules=ours["target_modules"], modules_to_save=ours["modules_to_save"]))
    control_dir = tempfile.mkdtemp()
    control.save_pretrained(control_dir)
    _, expected = peft_load_warnings(load_base(), control_dir)
    model, said = peft_load_warnings(load_base(), adapter)
    extra = [w for w in said if w not in expected]
    if extra:
        sys.exit(f"{adapter}: PEFT warned while loading:\n  " + "\n  ".join(extra))
    for w in sorted(set(said)):
        print(f"  (PEFT's own adapter gives this warning too: {w})")
    return model


def load_classifier(a):
    """(a callable sequence -> probabilities over classes, id2label, what was loaded)."""
    tok = AutoTokenizer.from_pretrained(a.model)
    if a.adapter:
        model = load_peft_silently(lambda: clean_load(EsmForSequenceClassification, a.base), a.adapter)
        id2label = model.base_model.model.config.id2label

        def probs(seq):
            ids = tok(seq, return_tensors="pt")
            with torch.no_grad():
                return torch.softmax(model(**ids).logits[0].double(), -1)

        return probs, id2label, f"PeftModel(EsmForSequenceClassification({a.base}), {a.adapter})"
    clean_load(EsmForSequenceClassification, a.model)
    pipe = pipeline("text-classification", model=a.model, tokenizer=a.model, device="cpu")
    id2label = pipe.model.config.id2label
    label2id = {v: k for k, v in id2label.items()}

    def probs(seq):
        scores = pipe(seq, top_k=None, function_to_apply="softmax")
        p = torch.zeros(len(id2label), dtype=torch.float64)
        for s in scores:
            p[label2id[s["label"]]] = s["score"]
        return p

    return probs, id2label, f'pipeline("text-classification", model={a.model})'


def ties(ranked, tol):
    """Whether some neighbours of a ranking are within `tol` (their order is then free)."""
    return any(abs(a[1] - b[1]) <= tol for a, b in zip(ranked, ranked[1:]))


def check_classifier(a):
    probs, id2label, what = load_classifier(a)
    label2id = {v: k for k, v in id2label.items()}
    rows = [l.rstrip("\n").split("\t") for l in open(a.predictions)][1:]
    want = {r[0]: list(zip(r[1::2], map(float, r[2::2]))) for r in rows}
    worst, n, skipped = 0.0, 0, 0
    for name, seq in read_fasta(a.fasta):
        if len(seq) + 2 > a.max_len:
            skipped += 1  # the engine averages windows there; transformers runs it whole
            continue
        p = probs(seq)
        engine = want[name]
        k = len(engine)
        for fam, wp in engine:
            gp = float(p[label2id[fam]])
            if abs(gp - wp) > PROB_TOL:
                sys.exit(f"{name}: {fam}: {what} gives {gp:.6f}, qf-engine {wp:.6f}")
            worst = max(worst, abs(gp - wp))
        top = torch.topk(p, k)
        got = [(id2label[int(i)], float(v)) for v, i in zip(top.values, top.indices)]
        # the same top-k, except for families tied with the k-th within the tolerance
        kth = engine[-1][1]
        extra = [(f, v) for f, v in got if f not in dict(engine) and abs(v - kth) > PROB_TOL]
        if extra or [f for f, _ in got] != [f for f, _ in engine] and not ties(got, PROB_TOL):
            sys.exit(f"{name}: {what} says {got}, qf-engine says {engine}")
        n += 1
    note = f" ({skipped} longer than {a.max_len} tokens not compared)" if skipped else ""
    print(f"OK: {what}: {n} sequences, same top-{k} families, max probability difference {worst:.2e}{note}")


def check_contacts(a):
    import numpy as np

    tok = AutoTokenizer.from_pretrained(a.model)
    pooler = ("pooler.dense.weight", "pooler.dense.bias")
    if a.adapter:
        model = load_peft_silently(lambda: clean_load(EsmModel, a.base, pooler), a.adapter)
        what = f"PeftModel(EsmModel({a.base}), {a.adapter})"
        contacts = lambda ids: model.base_model.model.predict_contacts(ids["input_ids"], ids["attention_mask"])
    else:
        model = clean_load(EsmModel, a.model, pooler)
        what = f"EsmModel({a.model})"
        contacts = lambda ids: model.predict_contacts(ids["input_ids"], ids["attention_mask"])
    ids = tok(a.sequence, return_tensors="pt")
    with torch.no_grad():
        hf = contacts(ids)[0].double().numpy()
    ours = np.load(a.npy).astype(np.float64)
    diff = float(np.abs(hf - ours).max()) if hf.shape == ours.shape else float("inf")
    if diff > CONTACT_TOL:
        sys.exit(f"contact maps differ: shapes {hf.shape} {ours.shape}, max difference {diff:.2e}")
    print(f"OK: {what}: {hf.shape[0]}×{hf.shape[0]} contact map, max probability difference {diff:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the run's model/ directory (its tokenizer is used)")
    ap.add_argument("--fasta", help="classifier: the sequences qf-engine predicted")
    ap.add_argument("--predictions", help="classifier: qf-engine predict's TSV")
    ap.add_argument("--max-len", type=int, default=1024, help="classifier: qf-engine predict's --max-len")
    ap.add_argument("--contacts", action="store_true", help="check a contact model (EsmModel) instead")
    ap.add_argument("--sequence", help="with --contacts: the sequence qf-engine predicted")
    ap.add_argument("--npy", help="with --contacts: qf-engine's .npy map of it")
    ap.add_argument("--adapter", help="a PEFT adapter directory to apply on --base instead of loading --model")
    ap.add_argument("--base", help="with --adapter: the base model directory")
    a = ap.parse_args()
    if bool(a.adapter) != bool(a.base):
        ap.error("--adapter and --base go together")
    if a.contacts:
        return check_contacts(a)
    if not (a.fasta and a.predictions):
        ap.error("a classifier check needs --fasta and --predictions")
    check_classifier(a)


if __name__ == "__main__":
    main()
