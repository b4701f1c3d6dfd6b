#!/usr/bin/env bash
# tools/gpu_check.sh — check qf-engine's CUDA path on a lent GPU machine in ONE call, with
# binaries built here (that machine has no Rust toolchain and no network), and prove the
# script itself beforehand on the CPU emulation of CUDA.
#
#   bash tools/gpu_check.sh build      HERE: release binary + GPU test executables (kernels
#                                      required), stripped and packed into one xz archive in the
#                                      git-ignored .gpu/ (~6 MB: a call carries at most 64 MiB),
#                                      with a Pfam excerpt (train shard rows and a FASTA of them)
#   bash tools/gpu_check.sh --dry-run  HERE or in CI: `build`, then every stage below at tiny
#                                      sizes on the CUDA emulation (the test executables load
#                                      it themselves; the binary through LD_PRELOAD) and the
#                                      PyTorch baseline on the CPU. Only what needs real
#                                      hardware (nvidia-smi, compute-sanitizer, Nsight) is
#                                      skipped, each with a printed SKIP line.
#   bash tools/gpu_check.sh run        ON THE GPU MACHINE, the one `device` call:
#        run(carry: [".gpu"], timeout_s: 540,
#            command: "bash tools/gpu_check.sh run 2>&1 | tee $OUT/gpu.log")
#
# Stages, in priority order, each with its own time limit cut so that all of them end
# within QF_GPU_BUDGET_S (default 480 s) of the start:
#   1. correctness: the GPU test executables (every op, a whole training step in three
#      precisions, 8-bit AdamW), each measured error printed;
#   2. speed: ESM-2 35M training with a 5,000-class head on the Pfam excerpt (qf-engine bf16
#      and fp16, then PyTorch + transformers bf16 SDPA on the same rows), a short `train`
#      run that saves a model, `predict` throughput with it (inference), and the criterion
#      benchmarks of every kernel with their roofline fractions (benches/cuda_ops.rs);
#   3. memory: ESM-2 650M at 1,024 tokens, full fine-tuning (8-bit AdamW, recompute) against
#      12 GB and LoRA q,v r=8 against 6 GB;
#   4. compute-sanitizer memcheck and racecheck over the op tests;
#   5. profiles: an Nsight Systems summary of bench steps and Nsight Compute on one kernel.
# Every stage writes its log and a line of results.tsv into $OUT as soon as it ends, so a
# run cut short still returns what ran. The summary table is the last thing printed.
#
# Environment: OUT (run: /tmp/qf-gpu-out; dry run: target/gpu-dry-run), QF_GPU_BUDGET_S,
# QF_SHARED_DIR (build; default ../shared), QF_GPU_PFAM_ROWS (build; 20000),
# PYTHON (default python3; the dry run skips PyTorch, with a SKIP line, if it lacks torch).
set -uo pipefail
cd "$(dirname "$0")/.."

GPU_DIR=.gpu
TESTS=(cuda_ops cuda_model optim_8bit_cuda)
PY=${PYTHON:-python3}

# The executable cargo built for target $1, from its --message-format=json on stdin.
executable_named() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])
' "$1" | tail -n 1
}

build() {
    set -e
    export QF_REQUIRE_CUDA_KERNELS=1
    rm -rf "$GPU_DIR"
    mkdir -p "$GPU_DIR"
    echo "== building qf-engine (release, kernels required)"
    cargo build --release --bin qf-engine
    echo "== building the GPU test executables"
    local json exe t b
    json=$(cargo test --release --no-run --message-format=json $(printf -- '--test %s ' "${TESTS[@]}"))
    for t in "${TESTS[@]}"; do
        exe=$(executable_named "$t" <<< "$json")
        [ -n "$exe" ] || { echo "no executable for test $t" >&2; exit 1; }
        strip -o "$GPU_DIR/$t" "$exe"
    done
    for b in cuda_ops attention; do
        exe=$(cargo bench --no-run --bench "$b" --message-format=json | executable_named "$b")
        [ -n "$exe" ] || { echo "no executable for the $b benchmark" >&2; exit 1; }
        strip -o "$GPU_DIR/bench_$b" "$exe"
    done
    strip -o "$GPU_DIR/qf-engine" target/release/qf-engine
    local shared="${QF_SHARED_DIR:-../shared}" shard rows
    shard=$(ls "$shared"/data/pfam/train/data-* 2>/dev/null | head -n 1 || true)
    rows=${QF_GPU_PFAM_ROWS:-20000}
    if [ -z "$shard" ]; then
        shard=tests/fixtures/pfam/split/train/data-00000-of-00003
        echo "== no Pfam shard under $shared/data/pfam/train: using the committed excerpt"
    fi
    mkdir -p "$GPU_DIR/pfam/train"
    head -n $((rows + 1)) "$shard" > "$GPU_DIR/pfam/train/data-00000-of-00001"
    awk -F, 'NR > 1 && NR <= 2001 { print ">" $2; print $5 }' "$GPU_DIR/pfam/train/data-00000-of-00001" > "$GPU_DIR/pfam/domains.fasta"
    echo "== Pfam excerpt: $(($(wc -l < "$GPU_DIR/pfam/train/data-00000-of-00001") - 1)) rows of $shard"
    pack_executables
    du -ah "$GPU_DIR" | sort -k2
    local total
    total=$(du -sm "$GPU_DIR" | cut -f1)
    [ "$total" -lt 60 ] || { echo "$GPU_DIR is ${total} MB: over the 64 MiB a call may carry" >&2; exit 1; }
    set +e
}

# Every executable embeds the same kernel fatbins (about 25 MB each), so six of them
# stripped are ~180 MB, three times what one device call may carry. One xz archive with a
# dictionary larger than an executable stores the repeated fatbins once.
PACKED=executables.tar.xz
pack_executables() {
    local names=()
    for f in "$GPU_DIR"/*; do [ -f "$f" ] && [ -x "$f" ] && names+=("$(basename "$f")"); done
    echo "== packing ${#names[@]} executables into $GPU_DIR/$PACKED"
    tar -C "$GPU_DIR" -cf - "${names[@]}" | xz -T1 --lzma2=preset=1,dict=192MiB > "$GPU_DIR/$PACKED"
    (cd "$GPU_DIR" && rm -f "${names[@]}")
}

# The inverse, first thing on the GPU machine (and in the dry run).
unpack_executables() {
    [ -f "$GPU_DIR/$PACKED" ] || return 0
    tar -C "$GPU_DIR" -xJf "$GPU_DIR/$PACKED" && rm -f "$GPU_DIR/$PACKED"
}

# ---------------------------------------------------------------------------------------
# Stages (run and dry run)
# ---------------------------------------------------------------------------------------

START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
stage() { echo; echo "=== [$(elapsed) s] $*"; }

# `record STAGE ITEM STATUS DETAIL`: one line of results.tsv, written at once.
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$OUT/results.tsv"; }

# `skip_hw STAGE ITEM WHAT`: a stage that needs real hardware, in the dry run.
skip_hw() {
    echo "SKIP (dry run; needs a real GPU): $3"
    record "$1" "$2" SKIP "dry run: needs a real GPU"
}

# `limit SECONDS CMD...`: CMD with a time limit (× LIMIT_SCALE: the emulation is slow), cut
# to what is left of the budget; a stage that would get under 10 s is skipped (status 125).
limit() {
    local secs=$(($1 * LIMIT_SCALE))
    shift
    local left=$((BUDGET - $(elapsed)))
    [ "$secs" -gt "$left" ] && secs=$left
    if [ "$secs" -lt 10 ]; then
        echo "!!! skipped (time budget spent): $*"
        return 125
    fi
    timeout --kill-after=5 "$secs" "$@"
    local rc=$?
    [ $rc -eq 124 ] && echo "!!! timed out after ${secs} s: $*"
    return $rc
}

status_of() { case $1 in 0) echo ok ;; 124) echo TIMEOUT ;; 125) echo "SKIP (budget)" ;; *) echo "FAIL rc=$1" ;; esac; }

# Put the folders of libcublas and libnvToolsExt on LD_LIBRARY_PATH.
NVTX_FOUND=0
find_libs() {
    local cublas nvtx hits
    cublas=$(ldconfig -p 2>/dev/null | grep -m1 -o '/[^ ]*/libcublas\.so[^ ]*' || true)
    nvtx=$(ldconfig -p 2>/dev/null | grep -m1 -o '/[^ ]*/libnvToolsExt\.so[^ ]*' || true)
    if [ -z "$cublas" ] || [ -z "$nvtx" ]; then
        hits=$(timeout 60 find / -xdev \( -path /proc -o -path /sys \) -prune -o \
               \( -name 'libcublas.so*' -o -name 'libnvToolsExt.so*' \) -print 2>/dev/null | grep -v '/stubs/' || true)
        [ -z "$cublas" ] && cublas=$(printf '%s\n' "$hits" | grep -m1 'libcublas\.so' || true)
        [ -z "$nvtx" ] && nvtx=$(printf '%s\n' "$hits" | grep -m1 'libnvToolsExt\.so' || true)
    fi
    for lib in "$cublas" "$nvtx"; do
        [ -n "$lib" ] || continue
        echo "found $lib"
        case ":${LD_LIBRARY_PATH:-}:" in
            *":$(dirname "$lib"):"*) ;;
            *) export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
        esac
    done
    [ -n "$cublas" ] || echo "!!! no libcublas.so found: the GPU tests will skip"
    if [ -n "$nvtx" ]; then NVTX_FOUND=1; else echo "(no libnvToolsExt.so: NVTX ranges unavailable)"; fi
}

# The binary as a command prefix (`timeout` runs executables, not shell functions): on the
# GPU as it is; in the dry run over the emulation libraries that the test executables
# built (the newest pair under target/tmp/kernel-emu/).
set_qf() {
    QF=("$GPU_DIR/qf-engine")
    if [ "$DRY" = 1 ]; then
        local d
        d=$(ls -td target/tmp/kernel-emu/*/ 2>/dev/null | head -n 1)
        [ -n "$d" ] || echo "!!! no emulation libraries under target/tmp/kernel-emu (the GPU tests build them)"
        QF=(env "LD_PRELOAD=${d}libqf_kernel_emu.so ${d}libqf_cublas_emu.so" "$GPU_DIR/qf-engine")
    fi
}

stage_correctness() {
    local t secs summary rc
    for t in "${TESTS[@]}"; do
        case $t in cuda_ops) secs=90 ;; cuda_model) secs=150 ;; *) secs=60 ;; esac
        stage "1. correctness: $t (limit ${secs} s)"
        limit "$secs" "$GPU_DIR/$t" --nocapture 2>&1 | tee "$OUT/$t.log"
        rc=${PIPESTATUS[0]}
        summary=$(grep -E '^test result:' "$OUT/$t.log" | tail -n 1 | sed 's/^test result: //; s/; finished.*//')
        if grep -q '^SKIP: no CUDA device' "$OUT/$t.log"; then
            summary="$summary; SKIPPED: $(grep -m1 '^SKIP' "$OUT/$t.log")"
        fi
        record correctness "$t" "$(status_of "$rc")" "${summary:-no result line}"
    done
}

stage_speed() {
    local prec rc line
    for prec in "${BENCH_PRECISIONS[@]}"; do
        stage "2. speed: qf-engine bench $PRESET_TRAIN, $CLASSES classes, $prec"
        limit 45 "${QF[@]}" bench --preset "$PRESET_TRAIN" --classes "$CLASSES" --data "$GPU_DIR/pfam" --device cuda \
            --precision "$prec" --max-tokens "$MAX_TOKENS" --max-len "$MAX_LEN" --steps "$STEPS" --warmup "$WARMUP" \
            --json "$OUT/bench.jsonl" 2>&1 | tee "$OUT/bench_$prec.log"
        rc=${PIPESTATUS[0]}
        line=$(grep -m1 'sequences/s' "$OUT/bench_$prec.log" || true)
        record speed "train qf-engine $prec" "$(status_of "$rc")" "${line:-no result}"
    done

    stage "2. speed: PyTorch + transformers, same preset and rows"
    if "$PY" -c 'import torch, transformers' 2>/dev/null; then
        PYTHONUNBUFFERED=1 limit 90 "$PY" tools/pytorch_baseline.py "${PYTORCH_ARGS[@]}" --preset "$PYTORCH_PRESET" \
            --num-labels "$CLASSES" --data "$GPU_DIR/pfam" --attn sdpa 2>&1 | tee "$OUT/pytorch.log"
        rc=${PIPESTATUS[0]}
        grep '^{' "$OUT/pytorch.log" >> "$OUT/pytorch.jsonl"
        record speed "train pytorch" "$(status_of "$rc")" "$(grep -m1 -o '"sequences_per_s": [0-9.]*' "$OUT/pytorch.log" || echo no result)"
    else
        echo "SKIP: $PY has no torch/transformers (set PYTHON to a Python that has them)"
        record speed "train pytorch" SKIP "no torch in $PY"
    fi

    stage "2. speed: qf-engine train (saves a model), then predict throughput"
    limit 60 "${QF[@]}" train --data "$GPU_DIR/pfam" --eval-split train --preset "$PRESET_TRAIN" --stratify top:50 \
        --max-steps "$TRAIN_STEPS" --eval-limit 20 --max-tokens "$MAX_TOKENS" --max-len "$MAX_LEN" --device cuda \
        --precision bf16 --quiet --output "$OUT/train_run" 2>&1 | tail -n 5 | tee "$OUT/train.log"
    rc=${PIPESTATUS[0]}
    record speed "train CLI" "$(status_of "$rc")" "$(grep -m1 '^done in' "$OUT/train.log" || echo no result)"
    if [ -d "$OUT/train_run/model" ]; then
        head -n $((2 * PREDICT_SEQS)) "$GPU_DIR/pfam/domains.fasta" > "$OUT/predict.fasta"
        limit 45 "${QF[@]}" predict --model "$OUT/train_run/model" --input "$OUT/predict.fasta" --output "$OUT/predict.tsv" \
            --max-tokens "$MAX_TOKENS" --max-len "$MAX_LEN" --device cuda --precision bf16 --quiet 2>&1 | tee "$OUT/predict.log"
        rc=${PIPESTATUS[0]}
        record speed "infer qf-engine bf16" "$(status_of "$rc")" "$(grep -m1 'sequences/s' "$OUT/predict.log" || echo no result)"
    else
        record speed "infer qf-engine bf16" SKIP "no model from the train stage"
    fi
}

# Criterion benchmarks of every kernel with their roofline fractions (short samples).
stage_kernel_benches() {
    stage "2. speed: kernel benchmarks (criterion, roofline fractions)"
    local b rc
    for b in attention cuda_ops; do
        if [ "$DRY" = 1 ]; then
            QF_BENCH_EMULATION=1 limit 60 "$GPU_DIR/bench_$b" --test 2>&1 | tail -n 30 | tee "$OUT/bench_$b.log"
            rc=${PIPESTATUS[0]}
        else
            limit 60 "$GPU_DIR/bench_$b" --bench --warm-up-time 0.2 --measurement-time 0.5 --noplot 2>&1 \
                | tee "$OUT/bench_$b.log" | grep -A200 '^roofline'
            rc=${PIPESTATUS[0]}
        fi
        record speed "kernel benchmarks: $b" "$(status_of "$rc")" "$(grep -m1 '^roofline' "$OUT/bench_$b.log" || echo no result)"
    done
    stage "2. speed: PyTorch scaled_dot_product_attention at the same shapes"
    if "$PY" -c 'import torch' 2>/dev/null; then
        local tiny=()
        [ "$DRY" = 1 ] && tiny=(--device cpu --tiny)
        limit 60 "$PY" tools/pytorch_attention_bench.py "${tiny[@]}" 2>&1 | tee "$OUT/pytorch_attention.jsonl"
        record speed "pytorch SDPA" "$(status_of "${PIPESTATUS[0]}")" "$(grep -c '^{' "$OUT/pytorch_attention.jsonl") cases"
    else
        record speed "pytorch SDPA" SKIP "no torch in $PY"
    fi
}

stage_memory() {
    local what rc
    while IFS='|' read -r what args; do
        stage "3. memory: $PRESET_MEMORY, $what"
        # shellcheck disable=SC2086
        limit 60 "${QF[@]}" bench --memory --preset "$PRESET_MEMORY" --max-len "$MEMORY_LEN" --budgets "$MEMORY_BUDGETS" \
            --device cuda --precision bf16 --recompute layer --json "$OUT/memory.jsonl" $args 2>&1 | tee "$OUT/memory.log"
        rc=${PIPESTATUS[0]}
        record memory "$what" "$(status_of "$rc")" "$(grep -m1 -iE 'largest|fits' "$OUT/memory.log" || echo see memory.jsonl)"
    done <<EOF
full FT 8-bit AdamW, ${MEMORY_FULL_LIMIT}|--classes $CLASSES --optimizer adamw8bit --memory-limit $MEMORY_FULL_LIMIT
LoRA q,v r=8, ${MEMORY_LORA_LIMIT}|--classes 1000 --optimizer adamw --lora --lora-targets query,value --lora-rank 8 --memory-limit $MEMORY_LORA_LIMIT
EOF
}

stage_sanitizer() {
    stage "4. compute-sanitizer memcheck and racecheck"
    if [ "$DRY" = 1 ]; then
        skip_hw sanitizer memcheck "compute-sanitizer --tool memcheck $GPU_DIR/cuda_ops"
        skip_hw sanitizer racecheck "compute-sanitizer --tool racecheck $GPU_DIR/cuda_ops"
        return
    fi
    if ! command -v compute-sanitizer >/dev/null; then
        record sanitizer all SKIP "compute-sanitizer not found"
        return
    fi
    limit 60 compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
        "$GPU_DIR/cuda_ops" --test-threads 1 --skip harness_on_the_cpu 2>&1 | tee "$OUT/memcheck.log"
    record sanitizer memcheck "$(status_of "${PIPESTATUS[0]}")" "$(grep -m1 'ERROR SUMMARY' "$OUT/memcheck.log" || true)"
    limit 30 compute-sanitizer --tool racecheck --error-exitcode 9 --print-limit 20 \
        "$GPU_DIR/cuda_ops" --test-threads 1 layer_norm cross_entropy bias_gelu masked_binary flash_attention tensor_core 2>&1 | tee "$OUT/racecheck.log"
    record sanitizer racecheck "$(status_of "${PIPESTATUS[0]}")" "$(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.log" | tail -n 1 || true)"
}

stage_profiles() {
    stage "5. profiles: Nsight Systems and Nsight Compute"
    local bench_args=(bench --preset esm2_t12_35M --classes 5000 --data "$GPU_DIR/pfam" --device cuda --precision bf16 --steps 3 --warmup 1)
    if [ "$DRY" = 1 ]; then
        skip_hw profiles nsys "nsys profile --stats=true qf-engine ${bench_args[*]}"
        skip_hw profiles ncu "ncu --set basic -k regex:layer_norm -c 3 qf-engine ${bench_args[*]}"
        return
    fi
    if command -v nsys >/dev/null; then
        limit 40 env QF_NVTX=$NVTX_FOUND nsys profile -o "$OUT/bench" --force-overwrite true --stats=true \
            "$GPU_DIR/qf-engine" "${bench_args[@]}" > "$OUT/nsys.txt" 2>&1
        record profiles nsys "$(status_of $?)" "kernel summary in nsys.txt"
        rm -f "$OUT"/bench.nsys-rep "$OUT"/bench.sqlite
    else
        record profiles nsys SKIP "nsys not found"
    fi
    if command -v ncu >/dev/null; then
        limit 30 ncu --set basic -k regex:layer_norm -c 3 "$GPU_DIR/qf-engine" "${bench_args[@]}" > "$OUT/ncu.txt" 2>&1
        record profiles ncu "$(status_of $?)" "layer_norm in ncu.txt"
    else
        record profiles ncu SKIP "ncu not found"
    fi
}

summary() {
    stage "summary"
    {
        echo "qf-engine GPU check ($MODE_NAME) — $(date -u +%Y-%m-%dT%H:%MZ) — $MACHINE — $(elapsed) s"
        echo
        printf '%-12s %-36s %-14s %s\n' stage item status detail
        while IFS=$'\t' read -r s i st d; do printf '%-12s %-36s %-14s %s\n' "$s" "$i" "$st" "$d"; done < "$OUT/results.tsv"
        echo
        python3 - "$OUT/bench.jsonl" "$OUT/pytorch.jsonl" <<'PY'
import json, sys
rows = []
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("framework") == "pytorch":
            rows.append((f"pytorch {r['precision']} b{r['batch_size']}", r["sequences_per_s"], r["tokens_per_s"], r.get("peak_mem_bytes")))
        else:
            rows.append((f"qf-engine {r['dtype']}", r["sequences_per_s"], r["tokens_per_s"], r.get("peak_memory_bytes")))
print(f"{'training':<24} {'seq/s':>9} {'tokens/s':>11} {'peak GiB':>9}")
for name, s, t, m in rows:
    print(f"{name:<24} {s:>9.1f} {t:>11.0f} {m / 2**30 if m else float('nan'):>9.2f}")
PY
    } | tee "$OUT/summary.txt"
}

check() {
    BUDGET=${QF_GPU_BUDGET_S:-480}
    mkdir -p "$OUT"
    : > "$OUT/results.tsv"
    : > "$OUT/bench.jsonl"
    : > "$OUT/pytorch.jsonl"
    : > "$OUT/memory.jsonl"
    unpack_executables || { echo "cannot unpack $GPU_DIR/$PACKED"; exit 1; }
    [ -x "$GPU_DIR/qf-engine" ] || { echo "no $GPU_DIR/qf-engine: run 'bash tools/gpu_check.sh build' here first and carry .gpu"; exit 1; }
    export QF_FIXTURES_DIR="$PWD/tests/fixtures"
    stage "machine"
    if [ "$DRY" = 1 ]; then
        skip_hw machine nvidia-smi "nvidia-smi"
        MACHINE="CPU emulation of CUDA on $(nproc) cores"
    else
        nvidia-smi
        MACHINE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)
        record machine gpu ok "$MACHINE"
        find_libs
    fi
    stage_correctness
    set_qf
    stage_speed
    stage_kernel_benches
    stage_memory
    stage_sanitizer
    stage_profiles
    summary
    # The dry run fails when any stage failed (a SKIP is fine): that is what CI checks.
    if [ "$DRY" = 1 ] && cut -f3 "$OUT/results.tsv" | grep -qE 'FAIL|TIMEOUT'; then
        echo "dry run: some stages failed (see above)"
        exit 1
    fi
}

case "${1:-}" in
    build) build ;;
    run)
        DRY=0 MODE_NAME="GPU run"
        OUT=${OUT:-/tmp/qf-gpu-out}
        # The GPU or nothing: a missing driver must show as SKIP, never as an emulated pass.
        export QF_CUDA_EMULATION=0
        LIMIT_SCALE=1
        PRESET_TRAIN=esm2_t12_35M CLASSES=5000 MAX_TOKENS=16384 MAX_LEN=1024 STEPS=10 WARMUP=3 TRAIN_STEPS=30
        BENCH_PRECISIONS=(bf16 fp16) PREDICT_SEQS=2000
        PYTORCH_PRESET=esm2_t12_35M PYTORCH_ARGS=(--device cuda --precision bf16 --batch-size 64 --steps 20 --warmup 3)
        PRESET_MEMORY=esm2_t33_650M MEMORY_LEN=1024 MEMORY_BUDGETS=1024,2048 MEMORY_FULL_LIMIT=12GB MEMORY_LORA_LIMIT=6GB
        check
        ;;
    --dry-run)
        build || exit 1
        START=$(date +%s)
        DRY=1 MODE_NAME="dry run"
        OUT=${OUT:-target/gpu-dry-run}
        QF_GPU_BUDGET_S=${QF_GPU_BUDGET_S:-1500}
        LIMIT_SCALE=4
        PRESET_TRAIN=esm2_tiny CLASSES=20 MAX_TOKENS=256 MAX_LEN=128 STEPS=1 WARMUP=0 TRAIN_STEPS=2
        BENCH_PRECISIONS=(bf16 fp16) PREDICT_SEQS=4
        PYTORCH_PRESET=esm2_t6_8M PYTORCH_ARGS=(--device cpu --precision fp32 --batch-size 2 --steps 1 --warmup 0 --max-rows 50 --threads 2)
        PRESET_MEMORY=esm2_tiny MEMORY_LEN=64 MEMORY_BUDGETS=64,128 MEMORY_FULL_LIMIT=1GB MEMORY_LORA_LIMIT=1GB
        check
        ;;
    *)
        echo "usage: bash tools/gpu_check.sh build | --dry-run | run   (see the header of this file)"
        exit 2
        ;;
esac
