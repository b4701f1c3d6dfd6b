#!/usr/bin/env python3
"""Build the built-in demo set of `qf-engine train` (no arguments) from ../shared/data/pfam.

20 Pfam families are chosen by a fixed rule: among families with >= 150 training rows and a
median domain length of 60-260 residues, ranked by size (ties by name), every 12th starting
at rank 2. For each family, 100 training rows (from train/) and 25 held-out rows (from dev/)
of at most 400 residues are taken in file order. Output: gzipped labelled FASTA
(`>sequence_name family_id`) in src/data/demo/. Deterministic; run from the repository root.
"""
import csv, glob, gzip, statistics, collections, sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/pfam"
N_FAMILIES, N_TRAIN, N_TEST, MAX_LEN = 20, 100, 25, 400

def read(split):
    rows = collections.defaultdict(list)
    for f in sorted(glob.glob(f"{SRC}/{split}/data-*")):
        for r in csv.DictReader(open(f)):
            rows[r["family_id"]].append(r)
    return rows

train, dev = read("train"), read("dev")
eligible = [f for f, v in train.items()
            if len(v) >= 150 and 60 <= statistics.median(len(r["sequence"]) for r in v) <= 260
            and len([r for r in dev.get(f, []) if len(r["sequence"]) <= MAX_LEN]) >= N_TEST]
eligible.sort(key=lambda f: (-len(train[f]), f))
chosen = eligible[2::12][:N_FAMILIES]
assert len(chosen) == N_FAMILIES, len(chosen)

def write(path, split_rows, n):
    with gzip.GzipFile(path, "wb", mtime=0) as out:
        for fam in chosen:
            rows = [r for r in split_rows[fam] if len(r["sequence"]) <= MAX_LEN][:n]
            assert len(rows) == n, (fam, len(rows))
            for r in rows:
                out.write(f">{r['sequence_name']} {fam}\n{r['sequence']}\n".encode())

write("src/data/demo/demo_train.fasta.gz", train, N_TRAIN)
write("src/data/demo/demo_test.fasta.gz", dev, N_TEST)
print("families:", ", ".join(chosen))
