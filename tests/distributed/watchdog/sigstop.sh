#!/usr/bin/env bash
# SIGSTOP to rank 1 of a 2-rank data-parallel job with parallel.comm_timeout_s=3:
# rank 0 waits in a collective, its watchdog logs the operation and ends the job.
# Expected: exit code 77 within 15 s of the stop, and the watchdog's one log line.
set -uo pipefail
KUMIKO="$1"; MPIRUN="$2"; SRC="$3"; WORK="$4"
rm -rf "$WORK"; mkdir -p "$WORK"; cd "$SRC"
export OMP_NUM_THREADS=1
"$MPIRUN" --oversubscribe -np 2 "$KUMIKO" train --config configs/tiny.ini --data.synthetic=true \
  --model.n_layers=2 --model.d_model=64 --model.d_ff=256 --model.vocab_size=512 --train.micro_batch=4 \
  --parallel.dp=2 --backend.threads=1 --train.eval_every=0 --log.every_steps=1 --checkpoint.every_steps=0 \
  --log.run_dir="$WORK/run" --train.steps=100000 --parallel.comm_timeout_s=3 > "$WORK/log.txt" 2>&1 &
launcher=$!
cleanup() { kill -9 "$launcher" 2>/dev/null; [ -n "${rank1:-}" ] && kill -9 "$rank1" 2>/dev/null; true; }
trap cleanup EXIT
for _ in $(seq 1 600); do
  grep -q '"step":3,' "$WORK/run/metrics.jsonl" 2>/dev/null && break
  sleep 0.1
done
rank1=""
for pid in $(pgrep -f "kumiko train .*--log.run_dir=$WORK/run"); do
  grep -qzx 'OMPI_COMM_WORLD_RANK=1' "/proc/$pid/environ" 2>/dev/null && rank1=$pid  # not tr | grep -q (SIGPIPE)
done
[ -n "$rank1" ] || { echo "FAIL: rank 1 not found"; cat "$WORK/log.txt"; exit 1; }
kill -STOP "$rank1"
t0=$(date +%s%N)
# A guard in case the watchdog fails; its output goes nowhere so that its sleep does
# not hold ctest's pipe open after the test ends.
( sleep 60; kill -9 "$launcher" 2>/dev/null ) >/dev/null 2>&1 & guard=$!
wait "$launcher"; code=$?
pkill -P "$guard" 2>/dev/null; kill "$guard" 2>/dev/null
secs=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "rank 1 (pid $rank1) stopped; job ended with code $code after ${secs} ms"
grep 'has not completed' "$WORK/log.txt"
fail=0
[ "$code" -eq 77 ] || { echo "FAIL: exit code $code, expected 77"; fail=1; }
[ "$secs" -le 15000 ] || { echo "FAIL: took ${secs} ms, expected <= 15000"; fail=1; }
grep -Eq "rank 0: step [0-9]+: (all_reduce|reduce_scatter|all_gather|broadcast|barrier) on group '[a-z]+' \(world ranks 0,1\) has not completed after [0-9.]+ s .*ending the job \(exit 77\)" \
  "$WORK/log.txt" || { echo "FAIL: no watchdog line naming the operation"; tail -n 20 "$WORK/log.txt"; fail=1; }
exit $fail
