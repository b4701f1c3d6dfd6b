#!/usr/bin/env bash
# pretrain_experiment.sh — issue 15, part 4: does masked-language-model pretraining on the
# training split's own sequences help the Pfam classifier, at the same total CPU budget?
#
# Arms (same preset, same family selection, same data, same CPU):
#   a       classifier from random initialisation, <cls> pooling, the whole budget;
#   b       MLM pretraining on the training split's sequences (labels ignored) for
#           PRETRAIN_SHARE of the budget, then classification fine-tuning from it
#           (`train --checkpoint <mlm>/model`) for the rest;
#   a_mean  as a with --pool mean;
#   b_mean  as b with --pool mean.
# Every arm is scored on the whole dev split (or EVAL_LIMIT rows): accuracy overall, per
# tier, per training-family size (`qf-engine eval --json`), and summarised in OUT/summary.md
# with the wall time of each phase.
#
# The budget is in wall seconds on this machine. The engine counts steps, not seconds, so
# each phase first measures its own throughput (CALIB_STEPS steps) and then runs the number
# of steps that fits its share of the budget; the summary reports the time each phase
# really took.
#
# Usage: bash tools/pretrain_experiment.sh [OUT]            (default runs/pretrain_experiment)
#   BUDGET_MIN=60        minutes per arm (issue: about 60)
#   PRESET=esm2_tiny     model preset
#   STRATIFY=1000x200,4000x50
#   PRETRAIN_SHARE=0.5   share of an arm's budget spent on MLM pretraining (b arms)
#   MAX_TOKENS=2048      tokens per batch (both tasks)
#   CLS_LR=2e-3 MLM_LR=2e-3
#   EVAL_LIMIT=          evaluate a seeded sample of the dev split (default: all of it)
#   ARMS="a b a_mean b_mean"
#   DATA=../shared/data/pfam  QF=target/release/qf-engine  THREADS=2
#   CLS_TPS=  MLM_TPS=   tokens/s of each task measured earlier (skips the calibration)
#   MLM_FROM=            the MLM run directory of an earlier or concurrent b arm (its OUT/mlm):
#                        waits for its model and fine-tunes from it instead of pretraining
#                        again, so b and b_mean can run side by side after one MLM phase
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/pretrain_experiment}
DATA=${DATA:-../shared/data/pfam}
QF=${QF:-target/release/qf-engine}
BUDGET_MIN=${BUDGET_MIN:-60}
PRESET=${PRESET:-esm2_tiny}
STRATIFY=${STRATIFY:-1000x200,4000x50}
PRETRAIN_SHARE=${PRETRAIN_SHARE:-0.5}
MAX_TOKENS=${MAX_TOKENS:-2048}
CLS_LR=${CLS_LR:-2e-3}
MLM_LR=${MLM_LR:-2e-3}
EVAL_LIMIT=${EVAL_LIMIT:-}
ARMS=${ARMS:-a b a_mean b_mean}
THREADS=${THREADS:-2}
CALIB_STEPS=${CALIB_STEPS:-20}
[ -x "$QF" ] || cargo build --release
mkdir -p "$OUT"
COMMON=(--device cpu --threads "$THREADS" --quiet --max-tokens "$MAX_TOKENS" --max-len 1024)
LIMIT=()
[ -n "$EVAL_LIMIT" ] && LIMIT=(--limit "$EVAL_LIMIT")

# Tokens per second of a phase, from the `end` event of a short run's metrics.jsonl.
tokens_per_s() {
    python3 -c 'import json,sys
ev=[json.loads(l) for l in open(sys.argv[1])]
print([e for e in ev if e["event"]=="end"][-1]["train_tokens_per_s"])' "$1/metrics.jsonl"
}
# Optimizer steps that fill SECONDS at TOKENS_PER_S with batches of ~MAX_TOKENS tokens.
steps_for() { python3 -c "import sys; print(max(1, int($1 * $2 / ($MAX_TOKENS * 0.95))))"; }
elapsed() { python3 -c "import time; print(round(time.time() - $1, 1))"; }

calibrate() { # task dir [extra flags]
    local task=$1 dir=$2
    shift 2
    rm -rf "$dir"
    "$QF" train --task "$task" --data "$DATA" --preset "$PRESET" "${COMMON[@]}" --max-steps "$CALIB_STEPS" \
        --eval-limit 1 --output "$dir" "$@" >/dev/null
    tokens_per_s "$dir"
}

budget_s=$(python3 -c "print($BUDGET_MIN * 60)")
pre_s=$(python3 -c "print($budget_s * $PRETRAIN_SHARE)")
echo "budget per arm: ${BUDGET_MIN} min (pretraining share ${PRETRAIN_SHARE} in the b arms); preset $PRESET"
# CLS_TPS / MLM_TPS skip the calibration: two runs of this script (ARMS="a a_mean" and
# ARMS="b b_mean", THREADS=1 each) then share one calibration made on a quiet machine and run
# side by side on two cores with the same step counts.
cls_tps=${CLS_TPS:-$(calibrate classify "$OUT/calib_cls" --stratify "$STRATIFY")}
mlm_tps=${MLM_TPS:-$(calibrate mlm "$OUT/calib_mlm")}
echo "measured: classification $cls_tps tokens/s, MLM $mlm_tps tokens/s"

run_mlm() { # dir seconds
    local t0
    t0=$(python3 -c "import time; print(time.time())")
    "$QF" train --task mlm --data "$DATA" --preset "$PRESET" "${COMMON[@]}" --lr "$MLM_LR" --warmup 0.06 \
        --max-steps "$(steps_for "$2" "$mlm_tps")" --eval-limit 2000 --output "$1" >"$1.log"
    echo "$(elapsed "$t0")"
}
run_cls() { # dir seconds [--checkpoint DIR] [--pool mean]
    local dir=$1 secs=$2 t0
    shift 2
    t0=$(python3 -c "import time; print(time.time())")
    "$QF" train --data "$DATA" --stratify "$STRATIFY" "${COMMON[@]}" --lr "$CLS_LR" --warmup 0.06 \
        --max-steps "$(steps_for "$secs" "$cls_tps")" --eval-limit 2000 --output "$dir" "$@" >"$dir.log"
    echo "$(elapsed "$t0")"
}

{
    echo "| arm | pretrain (MLM) | fine-tune | dev accuracy | top-5 | tier 1 | tier 2 | accuracy by training-family size | MLM held-out accuracy |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|---:|"
} >"$OUT/summary.md"

mlm_done=""
for arm in $ARMS; do
    pool=()
    [[ $arm == *_mean ]] && pool=(--pool mean)
    pre_t="-" mlm_acc="-"
    if [[ $arm == b* ]]; then
        mlm_dir="$OUT/mlm"
        if [ -n "${MLM_FROM:-}" ]; then
            mlm_dir=$MLM_FROM
            echo "== waiting for the MLM model in $mlm_dir"
            until [ -f "$mlm_dir/model/model.safetensors" ] && [ -f "$mlm_dir.time" ]; do sleep 20; done
            mlm_time=$(cat "$mlm_dir.time")
            shared=" (shared)"
        elif [ -z "$mlm_done" ]; then
            echo "== MLM pretraining (${pre_s} s)"
            mlm_time=$(run_mlm "$mlm_dir" "$pre_s")
            echo "$mlm_time" >"$mlm_dir.time"
            mlm_done=1
        fi
        pre_t="${mlm_time} s${shared:-}"
        mlm_acc=$(python3 -c 'import json,sys
ev=[json.loads(l) for l in open(sys.argv[1])]
e=[x for x in ev if x["event"]=="eval"][-1]; print("%.1f %% (ppl %.2f)" % (100*e["accuracy"], e["perplexity"]))' "$mlm_dir/metrics.jsonl")
        ft_s=$(python3 -c "print($budget_s - $pre_s)")
        echo "== $arm: fine-tuning from the MLM model (${ft_s} s)"
        ft_t=$(run_cls "$OUT/$arm" "$ft_s" --checkpoint "$mlm_dir/model" "${pool[@]}")
    else
        echo "== $arm: classifier from random initialisation (${budget_s} s)"
        ft_t=$(run_cls "$OUT/$arm" "$budget_s" --preset "$PRESET" "${pool[@]}")
    fi
    "$QF" eval --model "$OUT/$arm/model" --data "$DATA" --split dev --device cpu --threads "$THREADS" --quiet \
        "${LIMIT[@]}" --json "$OUT/$arm.eval.json" >"$OUT/$arm.eval.log"
    python3 - "$OUT/$arm.eval.json" "$arm" "$pre_t" "${ft_t} s" "$mlm_acc" >>"$OUT/summary.md" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
arm, pre, ft, mlm = sys.argv[2:6]
pct = lambda x: "-" if x is None else "%.1f %%" % (100 * x)
tiers = r.get("per_tier") or []
tier = lambda i: pct(tiers[i]["accuracy"]) if len(tiers) > i else "-"
sizes = r.get("by_family_size") or []
by_size = ", ".join(f"{s['group']}: {pct(s.get('accuracy'))}" for s in sizes) if sizes else "-"
print(f"| {arm} | {pre} | {ft} | {pct(r['accuracy'])} | {pct(r.get('top5_accuracy'))} | {tier(0)} | {tier(1)} | {by_size} | {mlm} |")
EOF
    tail -1 "$OUT/summary.md"
done
echo
cat "$OUT/summary.md"
