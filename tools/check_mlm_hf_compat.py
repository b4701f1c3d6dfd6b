#!/usr/bin/env python3
"""Check in transformers what qf-engine saves for masked-language modelling and for
mean-pooled classification.

MLM (`--mlm DIR`): DIR holds `model/` (an EsmForMaskedLM saved by the engine) and
`engine_logits.safetensors` (input_ids [B, L], attention_mask [B, L], logits [B, L, 33]
the engine computed for them), as `tests/mlm.rs::export_for_transformers` writes them:
    QF_MLM_EXPORT=runs/mlm_check cargo test --release --test mlm export_for_transformers
    python tools/check_mlm_hf_compat.py --mlm runs/mlm_check
  - `EsmForMaskedLM.from_pretrained(DIR/model)` reports no missing, unexpected or
    mismatched keys, its decoder is tied to the word embeddings, and its tokenizer
    (`AutoTokenizer.from_pretrained`) gives the saved input ids;
  - its logits equal the engine's at every real token to 1e-5 relative (L2).

LoRA MLM run (`--mlm-lora RUN`, RUN = `--output` of `train --task mlm --lora` from a
preset, holding model/, base/ and adapter/):
  - `PeftModel.from_pretrained(EsmForMaskedLM.from_pretrained(RUN/base), RUN/adapter)`
    loads (`modules_to_save: ["lm_head"]`) and gives the logits of the merged RUN/model to
    1e-5 relative.

Mean-pooled classifier (`--mean-pool MODEL --fasta F --predictions TSV`, TSV from
`qf-engine predict --top-k 5`):
  - `AutoConfig`, `AutoModelForSequenceClassification` and `pipeline()` refuse MODEL;
  - the recipe of docs/readme/mlm.md (EsmForSequenceClassification's weights, the mean of
    `last_hidden_state` over residues fed to its `classifier`) gives the engine's
    probabilities to 1e-4.
"""
import argparse
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, EsmForMaskedLM
from transformers import EsmForSequenceClassification, pipeline

LOGIT_TOL = 1e-5
PROB_TOL = 1e-4


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def clean_load(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True, attn_implementation="eager")
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"{path}: loading info not clean: {bad}")
    return model.eval()


def check_mlm(root):
    path = f"{root}/model"
    model = clean_load(EsmForMaskedLM, path)
    if model.lm_head.decoder.weight.data_ptr() != model.esm.embeddings.word_embeddings.weight.data_ptr():
        sys.exit(f"{path}: the decoder is not tied to the word embeddings")
    ref = load_file(f"{root}/engine_logits.safetensors")
    ids, am, want = ref["input_ids"], ref["attention_mask"], ref["logits"]
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=am).logits
    real = am.bool()
    e = rel_err(got[real], want[real])
    if e > LOGIT_TOL:
        sys.exit(f"{path}: logits differ from the engine's: relative error {e:.2e}")
    # The saved tokenizer is ESM-2's.
    enc = tok(["MKTAYIAKQR"], return_tensors="pt")["input_ids"][0].tolist()
    if enc[0] != 0 or enc[-1] != 2 or len(enc) != 12:
        sys.exit(f"{path}: the saved tokenizer encodes MKTAYIAKQR as {enc}")
    print(f"OK: EsmForMaskedLM.from_pretrained({path}): no missing/unexpected/mismatched keys, decoder tied; "
          f"logits of {int(real.sum())} tokens ({ids.shape[0]} sequences) equal the engine's, relative error {e:.2e}")


def check_mlm_lora(run):
    from peft import PeftModel

    merged = clean_load(EsmForMaskedLM, f"{run}/model")
    base = clean_load(EsmForMaskedLM, f"{run}/base")
    peft_model = PeftModel.from_pretrained(base, f"{run}/adapter").eval()
    tok = AutoTokenizer.from_pretrained(f"{run}/model")
    enc = tok(["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVDAFQQVLRKGG<mask>LLA"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = merged(**enc).logits, peft_model(**enc).logits
    real = enc["attention_mask"].bool()
    e = rel_err(b[real], a[real])
    if e > LOGIT_TOL:
        sys.exit(f"{run}: PeftModel(base, adapter) logits differ from model/: relative error {e:.2e}")
    print(f"OK: PeftModel(EsmForMaskedLM({run}/base), {run}/adapter) gives the merged model's logits, "
          f"relative error {e:.2e}")


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


def refuses(what, load):
    try:
        load()
    except Exception as e:  # noqa: BLE001 - any refusal is what we want
        print(f"OK: {what} refuses the mean-pooled model: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return
    sys.exit(f"{what} loaded a mean-pooled model (it would read the <cls> vector: silently wrong)")


def mean_pool_logits(model, ids, am):
    """The documented recipe: mean of the final hidden states over residues (<cls>, <eos>
    and padding left out), through the classification head."""
    h = model.esm(input_ids=ids, attention_mask=am).last_hidden_state
    keep = am.clone()
    keep[:, 0] = 0
    keep[torch.arange(len(am)), am.sum(1) - 1] = 0
    pooled = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    return model.classifier(pooled[:, None, :])


def check_mean_pool(a):
    refuses("AutoConfig.from_pretrained", lambda: AutoConfig.from_pretrained(a.mean_pool))
    refuses("AutoModelForSequenceClassification.from_pretrained",
            lambda: AutoModelForSequenceClassification.from_pretrained(a.mean_pool))
    refuses('pipeline("text-classification")', lambda: pipeline("text-classification", model=a.mean_pool))
    model = EsmForSequenceClassification.from_pretrained(a.mean_pool, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(a.mean_pool)
    id2label = model.config.id2label
    label2id = {v: k for k, v in id2label.items()}
    rows = [l.rstrip("\n").split("\t") for l in open(a.predictions)][1:]
    want = {r[0]: list(zip(r[1::2], map(float, r[2::2]))) for r in rows}
    worst, n = 0.0, 0
    for name, seq in read_fasta(a.fasta):
        if len(seq) + 2 > 1024:
            continue
        enc = tok(seq, return_tensors="pt")
        with torch.no_grad():
            p = torch.softmax(mean_pool_logits(model, enc["input_ids"], enc["attention_mask"])[0].double(), -1)
        for fam, wp in want[name]:
            d = abs(float(p[label2id[fam]]) - wp)
            if d > PROB_TOL:
                sys.exit(f"{name}: {fam}: the recipe gives {float(p[label2id[fam]]):.6f}, qf-engine {wp:.6f}")
            worst = max(worst, d)
        n += 1
    print(f"OK: the mean-pool recipe on EsmForSequenceClassification's weights reproduces qf-engine's "
          f"probabilities on {n} sequences, max difference {worst:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlm", metavar="DIR")
    ap.add_argument("--mlm-lora", metavar="RUN")
    ap.add_argument("--mean-pool", metavar="MODEL")
    ap.add_argument("--fasta")
    ap.add_argument("--predictions")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.mlm:
        check_mlm(a.mlm)
    if a.mlm_lora:
        check_mlm_lora(a.mlm_lora)
    if a.mean_pool:
        if not (a.fasta and a.predictions):
            sys.exit("--mean-pool needs --fasta and --predictions")
        check_mean_pool(a)
    if not (a.mlm or a.mlm_lora or a.mean_pool):
        sys.exit("give --mlm DIR, --mlm-lora RUN and/or --mean-pool MODEL --fasta F --predictions TSV")


if __name__ == "__main__":
    main()
