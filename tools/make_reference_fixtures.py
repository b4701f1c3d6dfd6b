#!/usr/bin/env python3
"""Record ESM-2's tokenizer and constants from two independent reference
implementations, for the engine's tests to check against.

Sources (all from PyPI, no weights needed; PEFT only for peft_layout.json):
  * fair-esm 2.0.0: `esm.data.Alphabet.from_architecture("ESM-1b")`, its batch
    converter, `esm.model.esm2.ESM2` (randomly initialised), the rotary and
    contact-head modules;
  * transformers: `EsmTokenizer` over a `vocab.txt` written from fair-esm's
    alphabet, `EsmConfig` defaults, `EsmEmbeddings`, `EsmClassificationHead`,
    `EsmContactPredictionHead` and the rotary embedding.
Nothing here is typed in by hand: every id, token and constant is read from, or
measured by running, those libraries.

Writes, under tests/fixtures/reference/:
  tokenizer_cases.json   the alphabet, special ids, and the ids both tokenizers
                         give for standard residues, X B U Z O, lowercase,
                         unknown letters, whitespace, literal special tokens;
                         where fair-esm refuses an input (lowercase, unknown
                         letters), its error and both libraries' ids for the
                         input rewritten by the engine's rule (upper-case
                         letters, one literal <unk> per other character)
  hf_tokenizer/          what `EsmTokenizer.save_pretrained` writes (vocab.txt,
                         tokenizer_config.json) plus special_tokens_map.json from
                         the tokenizer's `special_tokens_map`
  peft_layout.json       how PEFT saves LoRA adapters of ESM-2 (tensor keys for
                         EsmModel and EsmForSequenceClassification over the
                         esm_tiny config) and every LoraConfig field
  esm2_constants.json    EsmConfig defaults, the LayerNorm eps of fair-esm's
                         ESM-2, token-dropout scale factors measured in both,
                         rotary inv_freq (f32 bits) of both for head dims
                         16..128, the classification head's pooling position,
                         and which positions both contact heads trim

Usage (a venv with torch, transformers, fair-esm, peft):
    /work/venv/bin/python tools/make_reference_fixtures.py [--out tests/fixtures/reference]
The output is deterministic (fixed seeds, CPU, fp32).
"""

import argparse
import json
import os
import struct
import tempfile

import esm
import torch
import transformers
from esm.model.esm2 import ESM2
from esm.modules import ContactPredictionHead
from esm.rotary_embedding import RotaryEmbedding
from transformers import EsmConfig, EsmTokenizer
from transformers.models.esm import modeling_esm

SEED = 20261206

# Inputs the tokenizers are asked to encode: (name, text). Expected ids are not
# written here; they come from the two libraries.
TOKENIZER_INPUTS = [
    ("standard_20", "ACDEFGHIKLMNPQRSTVWY"),
    ("nkq_context", "MNKQNKQ"),
    ("rare_xbuzo", "XBUZO"),
    ("gap_and_insert", "MK.-A"),
    ("pfam_domain", "LRFKDRKDNDFVIGPTHEEVITDIARNQIKSYRQMPVNFYQIQTKFRDEIRPRFGVMRGREFIMKDAYSFDK"),
    ("lowercase_all", "acdefghiklmnpqrstvwy"),
    ("lowercase_mixed", "MkTaYiAkQr"),
    ("unknown_letter_j", "MKJA"),
    ("unknown_single", "J"),
    ("unknown_run", "MKJ*1A"),
    ("unknown_star_end", "MKTAYIAK*"),
    ("mask_one", "MK<mask>A"),
    ("mask_start_end", "<mask>MKA<mask>"),
    ("mask_adjacent", "MK<mask><mask>A"),
    ("mask_upper_literal", "MK<MASK>A"),
    ("special_literals", "MK<cls>A<pad>G<eos>V<unk>S<null_1>"),
    ("whitespace_inside", "M K\tA"),
    ("whitespace_ends", "  MKA \n"),
]


def f32_bits(values):
    return [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in values]


def fair_esm_ids(converter, text):
    try:
        _, _, toks = converter([("x", text)])
        return toks[0].tolist(), None
    except Exception as e:  # fair-esm refuses letters outside its alphabet
        return None, f"{type(e).__name__}: {e}"


def engine_rule_text(alphabet, text):
    """The input rewritten by the engine's rule for what fair-esm refuses: a lower-case
    letter of the alphabet as its upper-case token, any other unknown character as a
    literal `<unk>`. Both libraries then accept it; returns (text, unknown count)."""
    specials = [t for t in alphabet.all_toks if len(t) > 1]
    out, unknown, i = [], 0, 0
    while i < len(text):
        literal = next((t for t in specials if text.startswith(t, i)), None)
        if literal:
            out.append(literal)
            i += len(literal)
            continue
        c = text[i]
        i += 1
        if c.isspace():
            continue
        if c.isascii() and c.upper() in alphabet.tok_to_idx:
            out.append(c.upper())
        else:
            out.append("<unk>")
            unknown += 1
    return "".join(out), unknown


def tokenizer_fixtures(out):
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    converter = alphabet.get_batch_converter()
    work = tempfile.mkdtemp()
    vocab = os.path.join(work, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(alphabet.all_toks) + "\n")
    hf = EsmTokenizer(vocab)

    cases = []
    for name, text in TOKENIZER_INPUTS:
        ids, err = fair_esm_ids(converter, text)
        case = {"name": name, "input": text, "transformers": hf(text)["input_ids"], "fair_esm": ids}
        if err:
            case["fair_esm_error"] = err
            rewritten, unknown = engine_rule_text(alphabet, text)
            case["engine_rule"] = {
                "input": rewritten,
                "unknown_chars": unknown,
                "fair_esm": fair_esm_ids(converter, rewritten)[0],
                "transformers": hf(rewritten)["input_ids"],
            }
        cases.append(case)

    special = {
        "fair_esm": {
            "cls": alphabet.cls_idx, "pad": alphabet.padding_idx, "eos": alphabet.eos_idx,
            "unk": alphabet.unk_idx, "mask": alphabet.mask_idx,
            "prepend_bos": alphabet.prepend_bos, "append_eos": alphabet.append_eos,
        },
        "transformers": {
            "cls": hf.cls_token_id, "pad": hf.pad_token_id, "eos": hf.eos_token_id,
            "unk": hf.unk_token_id, "mask": hf.mask_token_id,
        },
    }
    doc = {
        "generated_by": "tools/make_reference_fixtures.py",
        "versions": {"fair-esm": "2.0.0", "transformers": transformers.__version__, "torch": torch.__version__},
        "fair_esm_all_toks": alphabet.all_toks,
        "transformers_vocab": [hf.convert_ids_to_tokens(i) for i in range(hf.vocab_size)],
        "special_ids": special,
        "cases": cases,
    }
    with open(os.path.join(out, "tokenizer_cases.json"), "w") as f:
        json.dump(doc, f, indent=1)

    saved = os.path.join(out, "hf_tokenizer")
    os.makedirs(saved, exist_ok=True)
    hf.save_pretrained(saved)
    with open(os.path.join(saved, "special_tokens_map.json"), "w") as f:
        json.dump(hf.special_tokens_map, f, indent=2)
    for fn in os.listdir(saved):
        if fn not in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            os.remove(os.path.join(saved, fn))
    reloaded = transformers.AutoTokenizer.from_pretrained(saved)
    assert reloaded("MNKQ")["input_ids"] == hf("MNKQ")["input_ids"]
    return alphabet


def token_dropout_scales(alphabet):
    """Scale of an unmasked token's embedding for (sequence tokens, masks), in both."""
    torch.manual_seed(SEED)
    fair = ESM2(num_layers=1, embed_dim=16, attention_heads=2, alphabet=alphabet, token_dropout=True).eval()
    cfg = EsmConfig(vocab_size=33, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, position_embedding_type="rotary", token_dropout=True,
                    mask_token_id=alphabet.mask_idx, pad_token_id=alphabet.padding_idx,
                    emb_layer_norm_before=False, layer_norm_eps=1e-5)
    hf_emb = modeling_esm.EsmEmbeddings(cfg).eval()
    out = []
    for n_tokens, n_masks in [(3, 0), (10, 0), (10, 1), (10, 3), (65, 9), (200, 30), (1026, 100)]:
        residues = [alphabet.get_idx("A")] * (n_tokens - 2)
        for i in range(n_masks):
            residues[(i * 7) % len(residues)] = alphabet.mask_idx
        assert sum(r == alphabet.mask_idx for r in residues) == n_masks
        tokens = torch.tensor([[alphabet.cls_idx] + residues + [alphabet.eos_idx]])
        with torch.no_grad():
            x0 = fair(tokens, repr_layers=[0])["representations"][0][0]
            w = fair.embed_tokens.weight[tokens[0]]
            fair_scale = (x0[0] / w[0]).mean().item()  # position 0 (<cls>) is never masked
            fair_masked_zero = bool((x0[tokens[0] == alphabet.mask_idx] == 0).all())
            e = hf_emb(input_ids=tokens, attention_mask=torch.ones_like(tokens))[0]
            hw = hf_emb.word_embeddings.weight[tokens[0]]
            hf_scale = (e[0] / hw[0]).mean().item()
            hf_masked_zero = bool((e[tokens[0] == alphabet.mask_idx] == 0).all())
        out.append({"tokens": n_tokens, "masks": n_masks, "fair_esm": fair_scale, "transformers": hf_scale,
                    "masked_rows_zero": fair_masked_zero and hf_masked_zero})
    return out, fair


def rotary(head_dims):
    out = {}
    for d in head_dims:
        cfg = EsmConfig(vocab_size=33, hidden_size=d * 2, num_attention_heads=2, position_embedding_type="rotary")
        hf_inv, _ = modeling_esm.EsmRotaryEmbedding.compute_default_rope_parameters(cfg)
        fair_inv = RotaryEmbedding(d).inv_freq
        out[str(d)] = {"transformers_f32_bits": f32_bits(hf_inv.tolist()), "fair_esm_f32_bits": f32_bits(fair_inv.tolist())}
    return out


def classification_pooling_position():
    """Which token position EsmClassificationHead reads: perturb one position at a time."""
    torch.manual_seed(SEED)
    cfg = EsmConfig(vocab_size=33, hidden_size=8, num_labels=3, hidden_dropout_prob=0.0)
    head = modeling_esm.EsmClassificationHead(cfg).eval()
    feats = torch.randn(1, 6, 8)
    with torch.no_grad():
        base = head(feats)
        read = []
        for t in range(6):
            f = feats.clone()
            f[0, t] += 1.0
            if not torch.equal(head(f), base):
                read.append(t)
    return read


def contact_trimmed_positions(alphabet):
    """Token positions whose attention rows/columns do not reach the contact map, in both heads."""
    torch.manual_seed(SEED)
    T, layers, heads = 9, 2, 2
    tokens = torch.tensor([[alphabet.cls_idx] + [alphabet.get_idx("L")] * (T - 2) + [alphabet.eos_idx]])
    attn = torch.rand(1, layers, heads, T, T)
    fair = ContactPredictionHead(layers * heads, prepend_bos=True, append_eos=True, eos_idx=alphabet.eos_idx)
    hf = modeling_esm.EsmContactPredictionHead(layers * heads, eos_idx=alphabet.eos_idx)
    hf.regression.load_state_dict(fair.regression.state_dict())
    result = {}
    for name, head in (("fair_esm", fair), ("transformers", hf)):
        with torch.no_grad():
            base = head(tokens, attn)
            ignored = []
            for t in range(T):
                a = attn.clone()
                a[..., t, :] += 0.5
                a[..., :, t] += 0.5
                if torch.equal(head(tokens, a), base):
                    ignored.append(t)
        result[name] = {"tokens": T, "map_size": base.shape[-1], "ignored_positions": ignored}
    return result


def peft_layouts(esm_tiny_dir):
    """How PEFT itself saves LoRA adapters of ESM-2: the tensor keys for `EsmModel` (a
    contact model, head in `modules_to_save`) and `EsmForSequenceClassification` (its
    `classifier`), and every field `LoraConfig` knows (an `adapter_config.json` key outside
    them makes PEFT warn)."""
    import dataclasses

    import peft
    from safetensors import safe_open
    from transformers import EsmForSequenceClassification, EsmModel

    cfg = EsmConfig.from_pretrained(esm_tiny_dir)
    setups = {
        "EsmModel": (EsmModel, ["query", "value", "intermediate.dense"], ["contact_head.regression"]),
        "EsmForSequenceClassification": (
            EsmForSequenceClassification, ["query", "value"], ["classifier.dense", "classifier.out_proj"]),
    }
    out = {"peft": peft.__version__,
           "lora_config_fields": sorted(f.name for f in dataclasses.fields(peft.LoraConfig))}
    for name, (cls, targets, to_save) in setups.items():
        torch.manual_seed(SEED)
        model = peft.get_peft_model(cls(cfg), peft.LoraConfig(r=8, lora_alpha=8, target_modules=targets,
                                                                modules_to_save=to_save))
        d = tempfile.mkdtemp()
        model.save_pretrained(d)
        with safe_open(os.path.join(d, "adapter_model.safetensors"), "pt") as f:
            keys = sorted(f.keys())
        with open(os.path.join(d, "adapter_config.json")) as f:
            written = json.load(f)
        out[name] = {"target_modules": targets, "modules_to_save": to_save, "keys": keys,
                     "config_keys": sorted(written)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "reference"))
    out = os.path.abspath(ap.parse_args().out)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)

    alphabet = tokenizer_fixtures(out)
    scales, fair_model = token_dropout_scales(alphabet)
    defaults = EsmConfig()
    constants = {
        "generated_by": "tools/make_reference_fixtures.py",
        "versions": {"fair-esm": "2.0.0", "transformers": transformers.__version__, "torch": torch.__version__},
        "transformers_esm_config_defaults": {
            k: getattr(defaults, k)
            for k in ["layer_norm_eps", "rope_theta", "position_embedding_type", "token_dropout",
                      "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                      "mask_token_id", "pad_token_id", "emb_layer_norm_before", "initializer_range"]
        },
        "fair_esm_esm2": {
            "layer_norm_eps": fair_model.emb_layer_norm_after.eps,
            "token_dropout_default": ESM2.__init__.__defaults__[-1],
        },
        "token_dropout_scales": scales,
        "rotary_inv_freq": rotary([16, 24, 32, 64, 128]),
        "classification_head_reads_positions": classification_pooling_position(),
        "contact_head": contact_trimmed_positions(alphabet),
    }
    with open(os.path.join(out, "esm2_constants.json"), "w") as f:
        json.dump(constants, f, indent=1)
    esm_tiny = os.path.join(os.path.dirname(out), "esm_tiny")
    with open(os.path.join(out, "peft_layout.json"), "w") as f:
        json.dump(peft_layouts(esm_tiny), f, indent=1)
    for root, _, files in os.walk(out):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            print(f"{os.path.getsize(p):>8}  {os.path.relpath(p, out)}")


if __name__ == "__main__":
    main()
