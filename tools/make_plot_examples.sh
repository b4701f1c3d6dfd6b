#!/usr/bin/env bash
# The example pictures of docs/readme/plots.md, from real data: the built-in demo's
# curves.png (20 real Pfam families), crop against whole-chain contact training on two real
# chains, and the contact map of ubiquitin's PDB entry. A few minutes on 2 CPU cores.
#   bash tools/make_plot_examples.sh        (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
QF="${QF:-target/release/qf-engine}"
OUT="${OUT:-runs/plot_examples}"
SHARED="${QF_SHARED_DIR:-../shared}"
rm -rf "$OUT"
mkdir -p "$OUT/mini" docs/img

# 1. The demo on the built-in 20-family Pfam excerpt: the default (the built-in pretrained
#    encoder, <cls>) against esm2_tiny from random weights (mean pooling), one picture.
"$QF" train --output "$OUT/demo_pretrained" --quiet
"$QF" train --from-scratch --output "$OUT/demo_from_scratch" --quiet
"$QF" plot "$OUT/demo_pretrained" "$OUT/demo_from_scratch" -o docs/img/curves_demo.png

# 2. Contacts on the two chains of tests/fixtures/contacts (lysozyme 2VB1_A, ubiquitin
#    5NVG_A; real PDB coordinates), trained and evaluated on themselves: random 64-residue
#    crops against whole chains, all weights, 40 steps each.
for split in train valid; do
    ln -sf "$PWD/tests/fixtures/contacts/mini.fasta" "$OUT/mini/$split.fasta"
    ln -sf "$PWD/tests/fixtures/contacts/mini.safetensors" "$OUT/mini/$split.safetensors"
done
for crop in 64 0; do
    name=$([ "$crop" = 0 ] && echo contact_full || echo "contact_crop$crop")
    "$QF" train --task contact --contacts "$OUT/mini" --preset esm2_tiny --no-lora --crop "$crop" \
        --max-len 256 --max-tokens 1024 --lr 3e-2 --warmup 2 --epochs 40 --log-every 1 \
        --device cpu --quiet --output "$OUT/$name"
done
"$QF" plot "$OUT/contact_crop64" "$OUT/contact_full" -o docs/img/curves_crop_vs_full.png

# 3. The whole-chain model's map of ubiquitin from its PDB entry (author numbering, true
#    contacts below the diagonal, P@L and MCC in the title).
"$QF" predict-contacts --model "$OUT/contact_full/model" --structure "$SHARED/data/pdb/pdb1ubi.pdb" \
    --png-scale 8 --device cpu --quiet --output "$OUT/maps"
cp "$OUT/maps/pdb1ubi_A.png" docs/img/contact_map_1ubi.png
ls -l docs/img
