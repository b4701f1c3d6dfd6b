#!/usr/bin/env bash
# check_hf_compat.sh — train a small LoRA classifier and a small LoRA contact model with
# qf-engine, then check with transformers and PEFT (tools/check_hf_compat.py) that
#   1. model/ of each loads with its own saved tokenizer and predicts what qf-engine
#      predicts: `pipeline("text-classification", model=dir)` (same top-5, probabilities
#      to 1e-4) and `EsmModel.predict_contacts` (to 1e-5);
#   2. adapter/ of each loads with `PeftModel.from_pretrained` on the class the README
#      names (EsmForSequenceClassification, EsmModel), with no warning, and gives the
#      same outputs.
#
# Usage: bash tools/check_hf_compat.sh [OUT_DIR]        (default runs/hf_check)
#   PYTHON=/path/to/python  a Python with torch, transformers and peft (default python3)
#   QF=/path/to/qf-engine   the binary (default target/release/qf-engine, built if absent)
# With ../shared/data/pfam present the classifier is checked on 30 real dev domains,
# otherwise on the committed Pfam excerpt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/hf_check}
PY=${PYTHON:-python3}
QF=${QF:-target/release/qf-engine}
[ -x "$QF" ] || cargo build --release
mkdir -p "$OUT"

echo "== classifier: LoRA on the demo set"
"$QF" train --lora --pool cls --max-steps 150 --device cpu --quiet --output "$OUT/cls" >"$OUT/cls.log"
FASTA="$OUT/domains.fasta"
DEV=../shared/data/pfam/dev/data-00000-of-00002
if [ -f "$DEV" ]; then
    awk -F, 'NR > 1 && NR <= 31 { print ">" $2 " " $1; print $5 }' "$DEV" >"$FASTA"
else
    cp tests/fixtures/pfam/sample.fasta "$FASTA"
fi
"$QF" predict --model "$OUT/cls/model" --input "$FASTA" --output "$OUT/cls_pred.tsv" --top-k 5 --device cpu --quiet
"$PY" tools/check_hf_compat.py --model "$OUT/cls/model" --fasta "$FASTA" --predictions "$OUT/cls_pred.tsv"
"$PY" tools/check_hf_compat.py --model "$OUT/cls/model" --fasta "$FASTA" --predictions "$OUT/cls_pred.tsv" \
    --adapter "$OUT/cls/adapter" --base "$OUT/cls/base"

echo "== contact model: LoRA + trained head on a real chain"
"$QF" train --task contact --structures tests/fixtures/pdb/pdb1ubi_trimmed.pdb --preset esm2_tiny \
    --max-steps 40 --device cpu --quiet --output "$OUT/contact" >"$OUT/contact.log"
SEQ=MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG
"$QF" predict-contacts --model "$OUT/contact/model" --sequence "$SEQ" --output "$OUT/contact_maps" --device cpu --quiet >/dev/null
"$PY" tools/check_hf_compat.py --contacts --model "$OUT/contact/model" --sequence "$SEQ" --npy "$OUT/contact_maps/sequence1.npy"
"$PY" tools/check_hf_compat.py --contacts --model "$OUT/contact/model" --sequence "$SEQ" --npy "$OUT/contact_maps/sequence1.npy" \
    --adapter "$OUT/contact/adapter" --base "$OUT/contact/base"
echo "all Hugging Face / PEFT checks passed"
