#!/usr/bin/env bash
# Error paths of a job under mpirun: they must end the whole job quickly with a
# non-zero code, never hang in a collective.
#  1. a layout whose product is not the number of ranks: exit code 2 and the
#     one-line message naming parallel.dp x parallel.tp x parallel.pp;
#  2. every rank failing in setup (a data folder that does not exist): non-zero.
set -uo pipefail
KUMIKO="$1"; MPIRUN="$2"; SRC="$3"; WORK="$4"
rm -rf "$WORK"; mkdir -p "$WORK"; cd "$SRC"
fail=0

# run NAME ARGS...: runs the job under `timeout 60`; sets code and secs, log in $WORK/NAME.txt
run() {
  local name="$1"; shift
  local t0=$SECONDS
  timeout 60 "$MPIRUN" --oversubscribe -np 2 "$KUMIKO" train --config configs/tiny.ini \
    --backend.threads=1 --log.run_dir="$WORK/$name" "$@" > "$WORK/$name.txt" 2>&1
  code=$?
  secs=$((SECONDS - t0))
  echo "$name: exit code $code after ${secs}s"
  tail -n 3 "$WORK/$name.txt"
}

run bad_layout --data.synthetic=true --parallel.dp=3 --train.global_batch=24
[ "$code" -eq 2 ] || { echo "FAIL bad_layout: exit code $code, expected 2"; fail=1; }
[ "$secs" -le 30 ] || { echo "FAIL bad_layout: took ${secs}s, expected <= 30"; fail=1; }
grep -q '^kumiko: error.*parallel\.dp x parallel\.tp x parallel\.pp = 3 x 1 x 1 = 3 ranks, but the job has 2' \
  "$WORK/bad_layout.txt" || { echo "FAIL bad_layout: no one-line layout message"; cat "$WORK/bad_layout.txt"; fail=1; }

run missing_data --data.synthetic=false --parallel.dp=2 --train.global_batch=16 --data.dir=/nonexistent
[ "$code" -ne 0 ] || { echo "FAIL missing_data: exit code 0"; fail=1; }
[ "$code" -ne 124 ] || { echo "FAIL missing_data: hung (killed by timeout)"; fail=1; }
[ "$secs" -le 30 ] || { echo "FAIL missing_data: took ${secs}s, expected <= 30"; fail=1; }
grep -q "/nonexistent" "$WORK/missing_data.txt" || { echo "FAIL missing_data: message does not name the folder"; fail=1; }

[ "$fail" -eq 0 ] && echo "error paths: OK"
exit "$fail"
