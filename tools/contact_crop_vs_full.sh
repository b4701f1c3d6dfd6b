#!/usr/bin/env bash
# Contact prediction: random 200-residue crops vs whole chains at the same training-token
# budget (ContactProject's comparison), ESM-2 "tiny" from random initialisation on the CPU,
# with LoRA (the default) and with every weight trained. Each run is evaluated at the end on
# the whole valid split (1,020 proteins, full length).
# Usage: bash tools/contact_crop_vs_full.sh [BUDGET]   (default 2M tokens; run from the repo root)
set -euo pipefail
BUDGET=${1:-2M}
B=./target/release/qf-engine
D=${QF_SHARED_DIR:-../shared}/data/contacts
cargo build --release
mkdir -p runs
for cfg in "lora --lr 5e-3" "full --no-lora --lr 2e-3"; do
  set -- $cfg; name=$1; shift
  for crop in 200 0; do
    out=runs/mr_${name}_crop${crop}
    rm -rf "$out"
    /usr/bin/time -v $B train --task contact --contacts "$D" --preset esm2_tiny --crop $crop --token-budget "$BUDGET" \
      --max-tokens 2048 --max-len 1024 --eval-limit 100 --warmup 0.05 --seed 42 --device cpu --quiet \
      --output "$out" "$@" > "$out.log" 2>&1
    $B eval --task contact --model "$out/model" --contacts "$D" --split valid --max-len 1024 --device cpu --quiet \
      --json "$out/eval_valid_full.json" > "$out.eval.log" 2>&1
  done
done
