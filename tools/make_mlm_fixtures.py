#!/usr/bin/env python3
"""Generate the masked-language-model parity fixtures in tests/fixtures/esm_tiny_mlm/.

The encoder is the committed tiny ESM-2 of tests/fixtures/esm_tiny (made by
tools/make_parity_fixtures.py); transformers' `EsmForMaskedLM` is built on it with a
random `lm_head` (dense, layer_norm, bias; every value random so that a bug in any of
them shows) and the decoder tied to the word embeddings, as transformers ties them.
It is run in fp32 on the CPU on the four Pfam domains of sequences.json with a fixed
corruption (ESM-2's 15 % / 80-10-10, drawn here with torch's generator and then frozen
in the fixture), and its loss, logits and every parameter gradient are recorded.

Outputs (all written by this script):
  - model.safetensors + config.json: the EsmForMaskedLM in the hub's ESM-2 layout (the
    tied `lm_head.decoder.weight` included, as the published ESM-2 files carry it; a
    loader must take the decoder from the embeddings);
  - expected_mlm.safetensors: input_ids (corrupted), attention_mask, labels (-100 where
    no loss), logits [4, 65, 33], loss [1], dlogits, grad.<name> of every parameter
    (named_parameters(): the tied matrix once, as esm.embeddings.word_embeddings.weight,
    holding the gradient of both of its uses);
  - hf_saved/: what `EsmForMaskedLM.save_pretrained` writes for this model (config.json
    and model.safetensors), so that tests compare the engine's saved key set with
    transformers' own. transformers 5.x writes LayerNorm parameters as `gamma`/`beta`
    and the rotary buffers as one `esm.encoder.layer.*…inv_freq` key (its loader maps
    both back); the tied decoder is not written;
  - README.md with the versions and the corruption.

Usage (repository root):
    /work/venv/bin/python tools/make_mlm_fixtures.py
Deterministic (seed 20240522, fp32, CPU, eager attention, 1 thread).
"""

import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import EsmConfig, EsmForMaskedLM

SEED = 20240522
MASK_PROB, MASK_SHARE, RANDOM_SHARE = 0.15, 0.8, 0.1
STANDARD = list(range(4, 24))  # L A G V S E R T I D P K Q N F Y M H W C
SPECIAL = {0, 1, 2, 3, 32}     # <cls> <pad> <eos> <unk> <mask>
MASK, PAD = 32, 1


def build(src):
    config = EsmConfig.from_pretrained(src)
    config.architectures = ["EsmForMaskedLM"]
    config.num_labels = 2
    config.id2label = {0: "LABEL_0", 1: "LABEL_1"}
    config.label2id = {"LABEL_0": 0, "LABEL_1": 1}
    config.tie_word_embeddings = True
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = EsmForMaskedLM(config)
    model.config._attn_implementation = "eager"
    enc = load_file(os.path.join(src, "model.safetensors"))
    state = {k: v for k, v in enc.items() if k.startswith("esm.") and "inv_freq" not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("lm_head.") or "inv_freq" in k for k in missing), missing
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("lm_head."):
                continue
            n = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.dim() >= 2:
                p.copy_(0.1 * n)
            elif "layer_norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * n)
            else:
                p.copy_(0.05 * n)
    assert model.lm_head.decoder.weight is model.esm.embeddings.word_embeddings.weight, "decoder not tied"
    model.eval()
    return model


def corrupt(token_lists, g):
    """ESM-2 / DataCollatorForLanguageModeling corruption, random residues standard only;
    every kind of corruption appears at least once over the batch."""
    while True:
        ids, labels, kinds = [], [], []
        for toks in token_lists:
            t = torch.tensor(toks)
            maskable = torch.tensor([x not in SPECIAL for x in toks])
            sel = (torch.rand(len(toks), generator=g) < MASK_PROB) & maskable
            to_mask = sel & (torch.rand(len(toks), generator=g) < MASK_SHARE)
            to_rand = sel & ~to_mask & (torch.rand(len(toks), generator=g) < RANDOM_SHARE / (1 - MASK_SHARE))
            picks = torch.tensor(STANDARD)[torch.randint(len(STANDARD), (len(toks),), generator=g)]
            lab = torch.where(sel, t, torch.full_like(t, -100))
            c = t.clone()
            c[to_mask] = MASK
            c[to_rand] = picks[to_rand]
            ids.append(c.tolist())
            labels.append(lab.tolist())
            kinds.append([int(to_mask[i]) * 1 + int(to_rand[i]) * 2 + int(sel[i] & ~to_mask[i] & ~to_rand[i]) * 3
                          for i in range(len(toks))])
        flat = [k for ks in kinds for k in ks]
        if all(flat.count(k) > 0 for k in (1, 2, 3)) and all(any(x != -100 for x in l) for l in labels):
            return ids, labels, kinds


def pad(lists, value):
    lmax = max(len(x) for x in lists)
    return torch.tensor([x + [value] * (lmax - len(x)) for x in lists], dtype=torch.int64)


def main():
    root = os.path.join(os.path.dirname(__file__), "..")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=os.path.join(root, "tests", "fixtures", "esm_tiny"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "esm_tiny_mlm"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    seqs = json.load(open(os.path.join(args.src, "sequences.json")))["rows"]
    toks = [r["input_ids"] for r in seqs]
    model = build(args.src)

    # The checkpoint in the hub's layout (tied decoder written, as in the ESM-2 files).
    model.config.save_pretrained(out)
    tensors = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    tensors["lm_head.decoder.weight"] = model.lm_head.decoder.weight.detach().clone().contiguous()
    enc = load_file(os.path.join(args.src, "model.safetensors"))
    for k, v in enc.items():
        if "inv_freq" in k:
            tensors[k] = v
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(args.src, "sequences.json"), os.path.join(out, "sequences.json"))

    # What transformers' own save_pretrained writes (key-set reference).
    hf_dir = os.path.join(out, "hf_saved")
    if os.path.isdir(hf_dir):
        shutil.rmtree(hf_dir)
    model.save_pretrained(hf_dir, safe_serialization=True)
    with safe_open(os.path.join(hf_dir, "model.safetensors"), "pt") as f:
        hf_keys = sorted(f.keys())

    # The fixed corruption and the forward/backward.
    g = torch.Generator().manual_seed(SEED + 1)
    ids, labels, kinds = corrupt(toks, g)
    input_ids, labels_t = pad(ids, PAD), pad(labels, -100)
    attention_mask = pad([[1] * len(t) for t in toks], 0)
    model.zero_grad(set_to_none=True)
    res = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels_t)
    res.logits.retain_grad()
    res.loss.backward()
    sel = labels_t != -100
    ref = torch.nn.functional.cross_entropy(res.logits[sel], labels_t[sel])
    assert torch.allclose(ref, res.loss, rtol=1e-6, atol=0), (ref, res.loss)
    fx = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels_t,
        "corruption": pad(kinds, 0),
        "logits": res.logits.detach().clone(),
        "loss": res.loss.detach().reshape(1),
        "dlogits": res.logits.grad.detach().clone(),
    }
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        fx["grad." + name] = grad.detach().clone()
    save_file({k: v.contiguous() for k, v in fx.items()}, os.path.join(out, "expected_mlm.safetensors"))

    # Checks: reloads of both directories give the same logits; the decoder really is tied.
    for d in (out, hf_dir):
        re, info = EsmForMaskedLM.from_pretrained(d, attn_implementation="eager", output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        assert not bad, (d, bad)
        assert re.lm_head.decoder.weight.data_ptr() == re.esm.embeddings.word_embeddings.weight.data_ptr()
        with torch.no_grad():
            l2 = re.eval()(input_ids=input_ids, attention_mask=attention_mask).logits
        assert torch.equal(l2, fx["logits"]), (d, (l2 - fx["logits"]).abs().max())
    counts = {name: sum(k.count(c) for k in kinds) for c, name in ((1, "mask"), (2, "random"), (3, "kept"))}
    meta = {
        "seed": SEED,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "loss": fx["loss"].item(),
        "selected": int(sel.sum()),
        "corruption_counts": counts,
        "hf_saved_keys": hf_keys,
    }
    print(json.dumps(meta, indent=1))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(README.format(**meta, n_hf=len(hf_keys), keys="\n".join(f"  - `{k}`" for k in hf_keys)))
    for d in (out, hf_dir):
        for fn in sorted(os.listdir(d)):
            if os.path.isfile(os.path.join(d, fn)):
                os.chmod(os.path.join(d, fn), 0o644)
                print(f"{os.path.getsize(os.path.join(d, fn)):>9}  {os.path.relpath(os.path.join(d, fn), out)}")


README = """# esm_tiny_mlm: transformers `EsmForMaskedLM` parity fixtures

Made by `tools/make_mlm_fixtures.py` (read its docstring) from the tiny ESM-2 of
`../esm_tiny`: its encoder, a random `lm_head` (dense and decoder-free weights
0.1·N(0,1), LayerNorm weight 1 + 0.1·N(0,1), biases 0.05·N(0,1)), decoder tied to
`esm.embeddings.word_embeddings.weight`.

- torch {torch}, transformers {transformers}, numpy {numpy}; seed {seed}; fp32, CPU,
  eager attention, 1 thread.
- Batch: the four Pfam domains of `sequences.json`, right-padded to 65 tokens.
- Corruption (fixed, drawn once with torch's generator): each non-special token selected
  with p = 0.15; selected → `<mask>` with p = 0.8, else a random standard residue with
  p = 0.5, else kept. {selected} positions selected: {corruption_counts}. `labels` holds the
  original token at the selected positions and -100 elsewhere; `corruption` 1 = `<mask>`,
  2 = random, 3 = kept, 0 = not selected.
- `loss` = transformers' `EsmForMaskedLM` loss = {loss}.

Files: `config.json` + `model.safetensors` (the hub's layout: `lm_head.decoder.weight`
written as the tied copy, rotary `inv_freq` buffers), `expected_mlm.safetensors`
(`input_ids`, `attention_mask`, `labels`, `corruption`, `logits` [4, 65, 33], `loss`,
`dlogits`, `grad.<name>` of every parameter — the tied matrix once, under
`esm.embeddings.word_embeddings.weight`, with the gradients of both of its uses),
`hf_saved/` = `EsmForMaskedLM.save_pretrained` output, whose {n_hf} keys are:

{keys}
"""

if __name__ == "__main__":
    main()
