#!/bin/sh
# The 16 GiB test image of docs/performance-notes.md: eight copies of /tmp/vmbench/vm1.raw at
# 2 GiB offsets (holes kept), then 30% of its non-zero 4 KiB blocks overwritten with random
# data (corpus.py mutate, seed 7). Needs ~13 GB of free disk. usage: sh bench/dev/make-16g.sh [OUT]
set -eu
OUT=${1:-/tmp/vmbig/vm16.raw}
mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" <<'PY'
import sys
src, out = '/tmp/vmbench/vm1.raw', sys.argv[1]
G, B = 2 * 1024**3, 4 * 1024 * 1024
zero = bytes(B)
with open(out, 'wb') as o:
    o.truncate(8 * G)
    with open(src, 'rb') as f:
        for i in range(8):
            f.seek(0)
            pos = 0
            while True:
                b = f.read(B)
                if not b:
                    break
                if b != zero[:len(b)]:
                    o.seek(i * G + pos)
                    o.write(b)
                pos += len(b)
PY
python3 /work/shared/corpus/corpus.py mutate "$OUT" 7 0.3 clustered
python3 /work/shared/corpus/corpus.py stats "$OUT"
