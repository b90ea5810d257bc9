#!/bin/sh
# Backup parameter matrix on /tmp/vmbench/vm1.raw; each run waits for a quiet machine first.
# usage: sh bench/dev/matrix.sh > bench/dev/matrix.txt
cd "$(dirname "$0")/../.."
run() { sh bench/dev/quiet.sh 300 >/dev/null 2>&1 || echo "(machine busy)"; node bench/dev/backup.mjs /tmp/vmbench/vm1.raw "$@" 2>&1 | tr '\n' ' ' | sed 's/{"workers[^}]*}//'; echo; }
echo "# workers (segment 4 MiB)"; for w in 0 1 2 3 4; do run $w 4; done
echo "# segment MiB (2 workers)"; for s in 1 2 4 8 16; do run 2 $s; done
echo "# batches in flight (2 workers, 4 MiB)"; for b in 3 4 6 8; do run 2 4 $b; done
echo "# compression level"; for l in 1 3; do run 2 4 "" fs $l; done
echo "# pack MiB"; for p in 4 8 16 32; do run 2 4 "" fs 1 $p; done
