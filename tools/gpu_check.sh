#!/usr/bin/env bash
# tools/gpu_check.sh — check qf-engine's CUDA path on a lent GPU machine with binaries
# built here (that machine has no Rust toolchain and no network).
#
#   1. HERE (any machine with cargo; nvcc found as build.rs finds it):
#
#        bash tools/gpu_check.sh build
#
#      builds the release `qf-engine` binary and the GPU test executables (cuda_ops,
#      cuda_model) with kernels required, strips them and copies them into the
#      git-ignored `.gpu/`, together with a Pfam excerpt (the first $QF_GPU_PFAM_ROWS
#      rows of one training shard of ../shared/data/pfam, as .gpu/pfam/train/) so the
#      benchmarks see real Pfam lengths. About 40 MB; a call may carry 64 MiB.
#
#   2. THE ONE `device` CALL (the tool copies the working tree to the GPU machine's
#      repository root; tests find tests/fixtures relative to it):
#
#        run(kind: "nvidia-h100-x1", carry: [".gpu"], timeout_s: 600,
#            command: "bash tools/gpu_check.sh run 2>&1 | tee $OUT/gpu.log")
#
#      which prints nvidia-smi; finds libcublas (and libnvToolsExt) and sets
#      LD_LIBRARY_PATH; runs the GPU tests (cuda_ops, cuda_model, --nocapture: every
#      measured error is printed); `qf-engine bench` of ESM-2 35M with a 5,000-class head
#      on the Pfam excerpt in fp32, bf16 and fp16; the PyTorch baseline
#      (tools/pytorch_baseline.py: same preset, classes and rows, sdpa, bf16); a CLI
#      training run in fp16 (prints the memory plan); compute-sanitizer memcheck over the
#      kernel tests and racecheck over the shared-memory kernels; an NVTX smoke run; and
#      ends with a summary table. Each stage has its own time limit, cut so that all of
#      them end within 560 s (QF_GPU_BUDGET_S) of the start, inside the 10-minute command
#      limit. Logs and JSON land in $OUT (7 files): gpu.log, cuda_ops.log,
#      cuda_model.log, sanitizer.log, bench.jsonl, pytorch.jsonl, summary.txt.
#
#   3. A SECOND `device` CALL for the memory targets (same carry):
#
#        run(kind: "nvidia-h100-x1", carry: [".gpu"], timeout_s: 600,
#            command: "bash tools/gpu_check.sh memory 2>&1 | tee $OUT/gpu-memory.log")
#
#      runs the 8-bit AdamW GPU tests (CPU-vs-CUDA update, kernel bandwidth against a
#      device-to-device copy), then `qf-engine bench --memory` of ESM-2 650M on sequences
#      of 1,024 tokens: full fine-tuning with 8-bit AdamW and recomputation against a
#      12 GB limit, and LoRA (query,value, r=8, 1,000 classes) against 6 GB; each prints
#      the pool peak measured at one and at two sequences beside the planner's figure.
#      Results in $OUT/memory.jsonl and $OUT/optim_8bit_cuda.log.
#
# Environment (build): QF_SHARED_DIR (default ../shared), QF_GPU_PFAM_ROWS (20000).
# Environment (run): OUT (default /tmp/qf-gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."

GPU_DIR=.gpu
TESTS=(cuda_ops cuda_model optim_8bit_cuda)

build() {
    set -e
    export QF_REQUIRE_CUDA_KERNELS=1
    # build.rs finds nvcc via NVCC, CUDA_HOME/CUDA_PATH, PATH, then .cuda/ (tools/install_cuda_toolchain.sh).
    rm -rf "$GPU_DIR"
    mkdir -p "$GPU_DIR"
    echo "== building qf-engine (release, kernels required)"
    cargo build --release --bin qf-engine
    echo "== building the GPU test executables"
    local json
    json=$(cargo test --release --no-run --message-format=json $(printf -- '--test %s ' "${TESTS[@]}"))
    for t in "${TESTS[@]}"; do
        local exe
        exe=$(printf '%s\n' "$json" | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])
' "$t" | tail -n 1)
        [ -n "$exe" ] || { echo "no executable for test $t" >&2; exit 1; }
        strip -o "$GPU_DIR/$t" "$exe"
    done
    strip -o "$GPU_DIR/qf-engine" target/release/qf-engine
    local shared="${QF_SHARED_DIR:-../shared}"
    local shard
    shard=$(ls "$shared"/data/pfam/train/data-* 2>/dev/null | head -n 1 || true)
    if [ -n "$shard" ]; then
        mkdir -p "$GPU_DIR/pfam/train"
        head -n $((${QF_GPU_PFAM_ROWS:-20000} + 1)) "$shard" > "$GPU_DIR/pfam/train/data-00000-of-00001"
        echo "== Pfam excerpt: $(($(wc -l < "$GPU_DIR/pfam/train/data-00000-of-00001") - 1)) rows of $shard"
    else
        echo "== no Pfam shard under $shared/data/pfam/train: the benchmarks will use the built-in demo set"
    fi
    echo "== $GPU_DIR:"
    du -ah "$GPU_DIR" | sort -k2
    local total
    total=$(du -sm "$GPU_DIR" | cut -f1)
    [ "$total" -lt 60 ] || { echo "$GPU_DIR is ${total} MB: over the 64 MiB a call may carry" >&2; exit 1; }
    echo "== ready: run(kind: \"nvidia-h100-x1\", carry: [\".gpu\"], timeout_s: 600, command: \"bash tools/gpu_check.sh run 2>&1 | tee \$OUT/gpu.log\")"
}

# ---------------------------------------------------------------------------------------
# run (on the GPU machine)
# ---------------------------------------------------------------------------------------

START=$(date +%s)
# Every stage ends before this many seconds after the start (the command limit is 600).
BUDGET=${QF_GPU_BUDGET_S:-560}
elapsed() { echo $(($(date +%s) - START)); }
stage() { echo; echo "=== [$(elapsed) s] $*"; }

# `limit SECONDS CMD...`: run CMD with a time limit of SECONDS, cut to what is left of
# the budget; a stage that would get under 10 s is skipped (status 125).
limit() {
    local secs=$1
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

# Put the folders of libcublas and libnvToolsExt on LD_LIBRARY_PATH (the loader's cache
# first, then one pass over the file system). Sets NVTX_FOUND=1 when NVTX is there.
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

declare -A RESULT

# Run one test executable with --nocapture; record its exit status and result line.
run_tests() {
    local t=$1 secs=$2
    shift 2
    stage "GPU tests: $t (limit ${secs} s)"
    limit "$secs" "$GPU_DIR/$t" --nocapture "$@" 2>&1 | tee "$OUT/$t.log"
    local rc=${PIPESTATUS[0]}
    local summary
    summary=$(grep -E '^test result:' "$OUT/$t.log" | tail -n 1 | sed 's/^test result: //; s/; finished.*//')
    RESULT[$t]="rc=$rc ${summary:-no result line}"
    if grep -q '^SKIP: no CUDA device' "$OUT/$t.log"; then
        RESULT[$t]="${RESULT[$t]} — SKIPPED: $(grep -m1 '^SKIP' "$OUT/$t.log")"
    fi
}

bench() {
    local prec=$1 secs=$2
    stage "qf-engine bench esm2_t12_35M, 5000 classes, $prec (limit ${secs} s)"
    limit "$secs" "$GPU_DIR/qf-engine" bench --preset esm2_t12_35M --classes 5000 "${DATA_ARGS[@]}" \
        --device cuda --precision "$prec" --max-tokens 16384 --steps 10 --warmup 3 --json "$OUT/bench.jsonl"
    RESULT[bench_$prec]="rc=$?"
}

# The output folder and the carried binaries (both GPU-machine modes).
prepare() {
    OUT=${OUT:-/tmp/qf-gpu-out}
    mkdir -p "$OUT"
    [ -x "$GPU_DIR/qf-engine" ] || { echo "no $GPU_DIR/qf-engine: run 'bash tools/gpu_check.sh build' here first and carry .gpu"; exit 1; }
    export QF_FIXTURES_DIR="$PWD/tests/fixtures"
    # The GPU or nothing: never fall back to the CPU emulation of CUDA that the tests use
    # where no driver exists (a missing driver must show as SKIP, not as a pass).
    export QF_CUDA_EMULATION=0
}

run() {
    prepare
    : > "$OUT/bench.jsonl"
    : > "$OUT/pytorch.jsonl"

    stage "machine"
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    uname -m
    nproc

    stage "CUDA libraries"
    find_libs
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

    # 1. correctness first
    run_tests cuda_ops 120
    run_tests cuda_model 180

    # 2. throughput: qf-engine in three precisions, then PyTorch on the same rows
    DATA_ARGS=()
    [ -d "$GPU_DIR/pfam/train" ] && DATA_ARGS=(--data "$GPU_DIR/pfam")
    bench fp32 60
    bench bf16 50
    bench fp16 50
    stage "PyTorch baseline (transformers EsmForSequenceClassification, sdpa, bf16)"
    if [ -d "$GPU_DIR/pfam/train" ]; then
        PYTHONUNBUFFERED=1 limit 120 python3 tools/pytorch_baseline.py --device cuda --preset esm2_t12_35M \
            --num-labels 5000 --data "$GPU_DIR/pfam" --precision bf16 --attn sdpa --batch-size 64 \
            --steps 20 --warmup 3 | tee -a "$OUT/pytorch.jsonl"
        RESULT[pytorch]="rc=${PIPESTATUS[0]}"
    else
        echo "no Pfam excerpt in $GPU_DIR (build with ../shared present): no PyTorch baseline"
    fi

    # 3. the CLI end to end: memory plan at start, loss-scale counts in metrics.jsonl
    stage "qf-engine train --device cuda --precision fp16 (demo, 4 families, 40 steps)"
    limit 45 "$GPU_DIR/qf-engine" train --device cuda --precision fp16 --stratify top:4 --max-steps 40 \
        --eval-limit 50 --output /tmp/qf-demo-gpu
    RESULT[train_cli]="rc=$?"
    tail -n 2 /tmp/qf-demo-gpu/metrics.jsonl 2>/dev/null

    # 4. sanitizers over the kernel tests (slow: one thread)
    stage "compute-sanitizer memcheck (cuda_ops) and racecheck (shared-memory kernels)"
    if command -v compute-sanitizer >/dev/null; then
        {
            limit 90 compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
                "$GPU_DIR/cuda_ops" --test-threads 1 --skip harness_on_the_cpu
            echo "memcheck exit status: $?"
            limit 40 compute-sanitizer --tool racecheck --error-exitcode 9 --print-limit 20 \
                "$GPU_DIR/cuda_ops" --test-threads 1 layer_norm cross_entropy bias_gelu masked_binary flash_attention tensor_core
            echo "racecheck exit status: $?"
        } 2>&1 | tee "$OUT/sanitizer.log"
        RESULT[memcheck]="$(grep -m1 -o 'memcheck exit status: [0-9]*' "$OUT/sanitizer.log") $(grep -m1 'ERROR SUMMARY' "$OUT/sanitizer.log" || true)"
        RESULT[racecheck]="$(grep -m1 -o 'racecheck exit status: [0-9]*' "$OUT/sanitizer.log") $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/sanitizer.log" | tail -n 1 || true)"
    else
        echo "compute-sanitizer not found" | tee "$OUT/sanitizer.log"
    fi

    if [ "$NVTX_FOUND" = 1 ]; then
        stage "NVTX smoke test (QF_NVTX=1)"
        limit 30 env QF_NVTX=1 "$GPU_DIR/qf-engine" bench --preset esm2_t6_8M --classes 100 --steps 2 --warmup 1 --device cuda
        RESULT[nvtx]="rc=$?"
    fi

    stage "summary"
    {
        echo "qf-engine GPU check — $(date -u +%Y-%m-%dT%H:%MZ) — $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1) — $(elapsed) s"
        echo
        printf '%-12s %s\n' "stage" "result"
        for k in cuda_ops cuda_model bench_fp32 bench_bf16 bench_fp16 pytorch train_cli memcheck racecheck nvtx; do
            [ -n "${RESULT[$k]:-}" ] && printf '%-12s %s\n' "$k" "${RESULT[$k]}"
        done
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
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("framework") == "pytorch":
            rows.append((f"pytorch {r['precision']} sdpa b{r['batch_size']}", r["sequences_per_s"], r["tokens_per_s"],
                         r.get("peak_mem_bytes"), r.get("mean_tokens_per_seq"), r.get("steps")))
        else:
            rows.append((f"qf-engine {r['dtype']}", r["sequences_per_s"], r["tokens_per_s"],
                         r.get("peak_memory_bytes"), r.get("mean_tokens_per_sequence"), r.get("steps")))
print(f"{'ESM-2 35M, 5000 classes':<28} {'seq/s':>9} {'tokens/s':>11} {'peak GiB':>9} {'tok/seq':>8} {'steps':>6}")
for name, s, t, m, l, n in rows:
    mem = f"{m / 2**30:.2f}" if m else "n/a"
    print(f"{name:<28} {s:>9.1f} {t:>11.0f} {mem:>9} {l or 0:>8.1f} {n or 0:>6}")
if not rows:
    print("(no benchmark results)")
PY
    } | tee "$OUT/summary.txt"
}

# The memory targets: 8-bit AdamW on the GPU, then ESM-2 650M at 1,024 tokens.
memory_bench() {
    local what=$1 secs=$2
    shift 2
    stage "qf-engine bench --memory: ESM-2 650M, $what (limit ${secs} s)"
    limit "$secs" "$GPU_DIR/qf-engine" bench --memory --preset esm2_t33_650M --max-len 1024 --budgets 1024,2048 \
        --device cuda --precision bf16 --recompute layer --json "$OUT/memory.jsonl" "$@"
    RESULT[$what]="rc=$?"
}

memory() {
    prepare
    : > "$OUT/memory.jsonl"
    stage "machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    stage "CUDA libraries"
    find_libs
    run_tests optim_8bit_cuda 120
    memory_bench "full FT, 8-bit AdamW, 5,000 classes, 12 GB" 200 --classes 5000 --optimizer adamw8bit \
        --memory-limit 12GB
    memory_bench "LoRA q,v r=8, 1,000 classes, 6 GB" 160 --classes 1000 --optimizer adamw --lora \
        --lora-targets query,value --lora-rank 8 --memory-limit 6GB
    stage "summary"
    {
        echo "qf-engine GPU memory check — $(date -u +%Y-%m-%dT%H:%MZ) — $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1) — $(elapsed) s"
        for k in "${!RESULT[@]}"; do printf '%-48s %s\n' "$k" "${RESULT[$k]}"; done
        python3 - "$OUT/memory.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    what = f"650M {r['optimizer']} lora={r.get('lora')} limit {r['limit_bytes'] / 2**30:.0f} GiB"
    for p in r["measured"]:
        print(f"{what}: {p['tokens']} tokens measured {p['measured_bytes'] / 2**30:.2f} GiB "
              f"(planned {p['planned_bytes'] / 2**30:.2f} GiB, pool growth; add the CUDA context)")
PY
    } | tee "$OUT/memory-summary.txt"
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    memory) memory ;;
    *)
        echo "usage: bash tools/gpu_check.sh build   (here: binaries into .gpu/)"
        echo "       bash tools/gpu_check.sh run     (on the GPU machine: correctness and speed)"
        echo "       bash tools/gpu_check.sh memory  (on the GPU machine: the 650M memory targets)"
        exit 2
        ;;
esac
