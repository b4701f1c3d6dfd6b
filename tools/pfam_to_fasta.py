#!/usr/bin/env python3
"""The first N rows of a Pfam split directory (CSV shards `data-NNNNN-of-MMMMM`, in shard
order) as FASTA (`>sequence_name` then the sequence on one line), for `qf-engine embed`
measurements:

    python3 tools/pfam_to_fasta.py ../shared/data/pfam/train 100000 > pfam_train_100k.fasta
"""
import csv
import glob
import os
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    split, n = sys.argv[1], int(sys.argv[2])
    written = 0
    for shard in sorted(glob.glob(os.path.join(split, "data-*"))):
        with open(shard, newline="") as f:
            for row in csv.DictReader(f):
                if written == n:
                    return
                sys.stdout.write(f">{row['sequence_name']}\n{row['sequence']}\n")
                written += 1
    if written < n:
        sys.exit(f"{split} has only {written} rows")


if __name__ == "__main__":
    main()
