#!/usr/bin/env python3
"""Generate the tiny ESM-2 parity fixtures in tests/fixtures/esm_tiny/.

A randomly initialised 2-layer ESM-2 (hidden 64, 4 heads, rotary, token
dropout) is built through Hugging Face `transformers` and run in fp32 on the
CPU on four real Pfam domains.  Every parameter (LayerNorm weights and all
biases included) gets random values, so a bug in the handling of any of them
shows up in the outputs.  The Rust side loads `model.safetensors` +
`config.json` from the same folder and compares against the three
`expected_*.safetensors` files (see the README written next to them).

Token ids come from transformers' `EsmTokenizer` over a `vocab.txt` written from
fair-esm's alphabet (`esm.data.Alphabet.from_architecture("ESM-1b")`), never
from a table of this project's.

Usage (from the repository root, with a venv holding torch, transformers,
fair-esm, safetensors and numpy):

    /work/venv/bin/python tools/make_parity_fixtures.py \
        --data /work/shared/data/pfam/dev/data-00000-of-00002 \
        --out tests/fixtures/esm_tiny

The script is deterministic (seed 20240521, fp32, CPU, eager attention).
"""

import argparse
import csv
import json
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
import esm
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import EsmConfig, EsmForSequenceClassification, EsmTokenizer

SEED = 20240521

def reference_tokenizer():
    """transformers' EsmTokenizer over a vocab.txt written from fair-esm's alphabet: the
    token ids come from the two reference libraries, never from a table of ours."""
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    vocab = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(alphabet.all_toks) + "\n")
    return EsmTokenizer(vocab)


TOKENIZER = reference_tokenizer()
CLS, PAD, EOS, MASK = TOKENIZER.cls_token_id, TOKENIZER.pad_token_id, TOKENIZER.eos_token_id, TOKENIZER.mask_token_id

# The four Pfam dev rows used (shard data-00000-of-00002), picked by
# sequence_name so that the choice does not depend on row order.
SEQUENCE_NAMES = [
    "P19027/375-392",   # zf-CCHC,         18 residues
    "B7LSV6/3-42",      # RHH_1,           40 residues
    "Q05459/7-56",      # MazE_antitoxin,  50 residues
    "Q9HJA6/9-71",      # HTH_Crp_2,       63 residues
]
LABELS = [3, 0, 4, 1]
CLASS_WEIGHTS = [0.5, 2.0, 1.0, 3.0, 0.25]
# Fixture B: number of residues replaced by <mask> per sequence (one has none).
N_MASKED = [0, 1, 4, 9]


def tokenize(seq):
    ids = TOKENIZER(seq)["input_ids"]
    assert len(ids) == len(seq) + 2 and ids[0] == CLS and ids[-1] == EOS, seq
    return ids


def read_rows(path, names):
    want = set(names)
    found = {}
    with open(path, newline="") as f:
        for idx, row in enumerate(csv.DictReader(f)):
            if row["sequence_name"] in want:
                found[row["sequence_name"]] = (idx, row["family_id"], row["sequence"])
    missing = want - set(found)
    if missing:
        sys.exit(f"rows not found in {path}: {sorted(missing)}")
    return [found[n] for n in names]


def build_model():
    config = EsmConfig(
        vocab_size=33,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=1026,
        position_embedding_type="rotary",
        token_dropout=True,
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
        mask_token_id=MASK,
        pad_token_id=PAD,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=5,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = EsmForSequenceClassification(config)
    model.config._attn_implementation = "eager"

    # Random values for every parameter, by kind.
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name == "esm.contact_head.regression.weight":
                # APC-corrected attention features are small; a larger weight
                # makes the contact probabilities actually vary.
                p.copy_(3.0 * n)
            elif "word_embeddings" in name:
                p.copy_(0.5 * n)
            elif name.endswith(("query.weight", "key.weight")):
                # sharper-than-uniform attention, so rotary / scaling bugs show
                p.copy_(0.25 * n)
            elif p.dim() >= 2:
                p.copy_(0.1 * n)
            elif ("LayerNorm" in name or "layer_norm" in name) and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * n)
            else:  # biases
                p.copy_(0.05 * n)
    model.eval()
    return model


def save_checkpoint(model, out):
    """Write config.json + model.safetensors in the layout of the ESM-2
    checkpoints on the Hugging Face hub (state-dict names: `LayerNorm.weight`
    / `.bias`, one `rotary_embeddings.inv_freq` buffer per layer).

    transformers 5.x `save_pretrained` is NOT used for the weights: it applies
    its load-time renamings in reverse and writes `LayerNorm.gamma` / `.beta`
    and a single key with a literal `*`
    (`esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq`)."""
    model.config.save_pretrained(out)
    tensors = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    inv_freq = model.esm.rotary_embeddings.inv_freq.detach().clone().contiguous()
    for i in range(model.config.num_hidden_layers):
        tensors[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv_freq.clone()
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    missing = [n for n, _ in model.named_parameters() if n not in keys]
    assert not missing, missing
    print(f"model.safetensors: {len(keys)} tensors; not parameters: {sorted(keys - set(n for n, _ in model.named_parameters()))}")


def batch(token_lists):
    lmax = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), lmax), PAD, dtype=torch.int64)
    am = torch.zeros((len(token_lists), lmax), dtype=torch.int64)
    for b, t in enumerate(token_lists):
        ids[b, : len(t)] = torch.tensor(t)
        am[b, : len(t)] = 1
    return ids, am


def grads(model, prefix="grad.", skip=()):
    out = {}
    for name, p in model.named_parameters():
        if any(name.startswith(s) for s in skip):
            continue
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        out[prefix + name] = g.detach().clone().contiguous()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/pfam/dev/data-00000-of-00002")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "esm_tiny"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)

    rows = read_rows(args.data, SEQUENCE_NAMES)
    seqs = [r[2] for r in rows]
    toks = [tokenize(s) for s in seqs]
    input_ids, attention_mask = batch(toks)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    class_weights = torch.tensor(CLASS_WEIGHTS, dtype=torch.float32)

    model = build_model()
    # Save BEFORE any forward with labels (that would set config.problem_type).
    save_checkpoint(model, out)

    # ---------------- Fixture A: classification ----------------
    model.zero_grad(set_to_none=True)
    res = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    logits = res.logits
    loss_ref = F.cross_entropy(logits, labels)
    assert torch.equal(res.loss, loss_ref), (res.loss, loss_ref)
    logits.retain_grad()
    res.loss.backward()
    fa = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "logits": logits.detach().clone(),
        "loss": res.loss.detach().reshape(1),
        "dlogits": logits.grad.detach().clone(),
    }
    fa.update(grads(model))

    # weighted CE: only loss and d loss / d logits
    lw = logits.detach().clone().requires_grad_(True)
    wl = F.cross_entropy(lw, labels, weight=class_weights)
    wl.backward()
    fa["class_weights"] = class_weights
    fa["weighted_loss"] = wl.detach().reshape(1)
    fa["weighted_dlogits"] = lw.grad.detach().clone()

    # localisation aids: final hidden state and layer-0 attention probabilities
    with torch.no_grad():
        enc = model.esm(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    assert enc.attentions is not None and len(enc.attentions) == 2, "eager attentions not returned"
    fa["last_hidden_state"] = enc.last_hidden_state.clone()
    fa["attn0"] = enc.attentions[0].clone()
    save_file({k: v.contiguous() for k, v in fa.items()}, os.path.join(out, "expected_cls.safetensors"))

    # ---------------- Fixture B: <mask> tokens / token dropout ----------------
    g = torch.Generator().manual_seed(SEED + 1)
    mids = input_ids.clone()
    masked_positions = []
    for b, n in enumerate(N_MASKED):
        L = len(seqs[b])
        pos = (torch.randperm(L, generator=g)[:n] + 1).sort().values  # residue positions 1..L
        mids[b, pos] = MASK
        masked_positions.append(pos.tolist())
    model.zero_grad(set_to_none=True)
    res = model(input_ids=mids, attention_mask=attention_mask, labels=labels)
    res.logits.retain_grad()
    res.loss.backward()
    fb = {
        "input_ids": mids,
        "attention_mask": attention_mask,
        "labels": labels,
        "logits": res.logits.detach().clone(),
        "loss": res.loss.detach().reshape(1),
        "dlogits": res.logits.grad.detach().clone(),
    }
    fb.update(grads(model))
    save_file({k: v.contiguous() for k, v in fb.items()}, os.path.join(out, "expected_mask.safetensors"))

    # ---------------- Fixture C: contact head ----------------
    model.zero_grad(set_to_none=True)
    probs = model.esm.predict_contacts(input_ids, attention_mask)  # [B, Lmax-2, Lmax-2]
    B, P, _ = probs.shape
    R = torch.randn((B, P, P), generator=torch.Generator().manual_seed(SEED + 2))
    valid = torch.zeros((B, P, P))
    for b, s in enumerate(seqs):
        valid[b, : len(s), : len(s)] = 1.0
    closs = (probs * R * valid).sum()
    closs.backward()
    fc = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "contacts": probs.detach().clone(),
        "R": R,
        "loss": closs.detach().reshape(1),
    }
    fc.update(grads(model))
    save_file({k: v.contiguous() for k, v in fc.items()}, os.path.join(out, "expected_contacts.safetensors"))

    # ---------------- checks ----------------
    # 1. reload reproduces the logits exactly (eager) and closely (sdpa)
    re = EsmForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        l2 = re(input_ids=input_ids, attention_mask=attention_mask).logits
        c2 = re.esm.predict_contacts(input_ids, attention_mask)
    assert torch.equal(l2, fa["logits"]), (l2 - fa["logits"]).abs().max()
    assert torch.equal(c2, fc["contacts"]), (c2 - fc["contacts"]).abs().max()
    re_sdpa = EsmForSequenceClassification.from_pretrained(out, attn_implementation="sdpa").eval()
    with torch.no_grad():
        l3 = re_sdpa(input_ids=input_ids, attention_mask=attention_mask).logits
    print("reload eager: logits and contacts bit-identical; sdpa max |diff| = %.3g" % (l3 - fa["logits"]).abs().max())
    # 2. padding is invisible: each sequence alone gives the same outputs
    with torch.no_grad():
        for b, t in enumerate(toks):
            ids1 = torch.tensor([t])
            am1 = torch.ones_like(ids1)
            l1 = model(input_ids=ids1, attention_mask=am1).logits[0]
            c1 = model.esm.predict_contacts(ids1, am1)[0]
            n = len(seqs[b])
            dl = (l1 - fa["logits"][b]).abs().max().item()
            dc = (c1 - fc["contacts"][b, :n, :n]).abs().max().item()
            print(f"seq {b} alone vs padded batch: max|dlogits|={dl:.3g} max|dcontacts|={dc:.3g}")
    # 3. token dropout applies in eval mode
    with torch.no_grad():
        e = model.esm.embeddings(input_ids=input_ids, attention_mask=attention_mask)
        w = model.esm.embeddings.word_embeddings.weight
        assert torch.allclose(e[0, 1], w[input_ids[0, 1]] * 0.88, atol=0, rtol=1e-6)
    print("token dropout: 0.88 scaling applied in eval mode")

    meta = {
        "seed": SEED,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "source": args.data,
        "rows": [
            {"row_index": r[0], "sequence_name": n, "family_id": r[1], "length": len(r[2]), "sequence": r[2]}
            for n, r in zip(SEQUENCE_NAMES, rows)
        ],
        "labels": LABELS,
        "class_weights": CLASS_WEIGHTS,
        "mask_fixture_masked_positions": masked_positions,
        "losses": {
            "cls": fa["loss"].item(),
            "cls_weighted": fa["weighted_loss"].item(),
            "mask": fb["loss"].item(),
            "contacts": fc["loss"].item(),
        },
        "contacts_range_valid": [probs[valid.bool()].min().item(), probs[valid.bool()].max().item()],
    }
    print(json.dumps(meta, indent=1))
    # The sequences and the ids the reference tokenizer gave them, so that a test can
    # check the engine's tokenizer on the very inputs of the fixtures.
    with open(os.path.join(out, "sequences.json"), "w") as f:
        json.dump({"tokenizer": "transformers EsmTokenizer over fair-esm's alphabet",
                   "rows": [{"sequence_name": n, "sequence": r[2], "input_ids": t}
                            for n, r, t in zip(SEQUENCE_NAMES, rows, toks)]}, f, indent=1)
    for fn in sorted(os.listdir(out)):
        os.chmod(os.path.join(out, fn), 0o644)
        print(f"{os.path.getsize(os.path.join(out, fn)):>9}  {fn}")


if __name__ == "__main__":
    main()
