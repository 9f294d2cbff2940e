#!/usr/bin/env bash
# SIGTERM to ONE rank of a 2-rank data-parallel job: every rank agrees at the next
# step boundary, one checkpoint is written at a common step, the job exits with
# code 75 (preempted), and a restart with resume=auto continues from that step.
set -euo pipefail
KUMIKO="$1"; MPIRUN="$2"; SRC="$3"; WORK="$4"
rm -rf "$WORK"; mkdir -p "$WORK"; cd "$SRC"
common=(--config configs/tiny.ini --data.synthetic=true --model.n_layers=2 --model.d_model=64
        --model.d_ff=256 --model.vocab_size=512 --train.micro_batch=4 --parallel.dp=2
        --parallel.zero=1 --backend.threads=1 --train.eval_every=0 --log.every_steps=1 --train.warmup_steps=2
        --log.run_dir="$WORK/run" --checkpoint.every_steps=0)
"$MPIRUN" --oversubscribe -np 2 "$KUMIKO" train "${common[@]}" --train.steps=100000 > "$WORK/log1.txt" 2>&1 &
launcher=$!
# Wait for a few steps, then signal rank 1 only.
for _ in $(seq 1 600); do
  grep -q '"step":5,' "$WORK/run/metrics.jsonl" 2>/dev/null && break
  sleep 0.1
done
rank1=$(pgrep -f "kumiko train .*--train.steps=100000" | sort -n | tail -n 1)
kill -TERM "$rank1"
set +e
wait "$launcher"; code=$?
set -e
cat "$WORK/log1.txt" | tail -n 5
[ "$code" -eq 75 ] || { echo "FAIL: exit code $code, expected 75"; exit 1; }
latest=$(cat "$WORK/run/checkpoints/latest")
step=$((10#$(echo "$latest" | sed 's/step_\([0-9]*\)\.h5/\1/')))
echo "preempted at step $step ($latest)"
[ "$(ls "$WORK/run/checkpoints" | grep -c '^step_.*\.h5$')" -eq 1 ] || { echo "FAIL: expected one checkpoint"; exit 1; }
"$KUMIKO" ckpt verify "$WORK/run/checkpoints/$latest"
# Restart: continues from that step to step+3.
"$MPIRUN" --oversubscribe -np 2 "$KUMIKO" train "${common[@]}" --train.steps=$((step + 3)) \
  --checkpoint.resume=auto > "$WORK/log2.txt" 2>&1
grep -q "resumed from .*$latest at step $step" "$WORK/log2.txt" || { echo "FAIL: no resume line"; cat "$WORK/log2.txt"; exit 1; }
[ "$(cat "$WORK/run/checkpoints/latest")" = "$(printf 'step_%08d.h5' $((step + 3)))" ]
echo "restart continued from step $step to $((step + 3))"
