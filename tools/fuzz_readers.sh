#!/usr/bin/env bash
# fuzz_readers.sh — the long run of tests/fuzz_readers.rs: every reader (Pfam CSV, FASTA,
# Stockholm, PDB, mmCIF, safetensors, config.json) against mutated real files, with the
# PDB/mmCIF files of ../shared/data/pdb added to the seeds.
#
# Usage: bash tools/fuzz_readers.sh [INPUTS] [SEED]      (default 5,000,000 inputs, seed 1;
#        the large shared structures make it slow: about 1,000 inputs/s)
# A panic, a hang (> 10 s on one input) or an error that does not name its file fails the
# run; the input is saved under target/fuzz-failures/ (`<reader>-<n>.bin` and `.txt`).
set -euo pipefail
cd "$(dirname "$0")/.."
QF_FUZZ_INPUTS=${1:-5000000} QF_FUZZ_SEED=${2:-1} QF_FUZZ_SHARED=1 \
    cargo test --release --test fuzz_readers -- --nocapture
