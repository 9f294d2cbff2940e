#!/usr/bin/env bash
# A user cap on oneDNN's instruction sets (its dispatcher control, ONEDNN_MAX_CPU_ISA)
# below AVX-512 leaves oneDNN no bf16 matmul: `kumiko bench gemm` and a run that asks
# for backend.bf16_gemm = onednn say so, naming the variable and its value (the run in
# one line and a non-zero exit), and backend.bf16_gemm = auto falls back to another GEMM.
set -euo pipefail
KUMIKO="$1"; SRC="$2"; WORK="$3"
rm -rf "$WORK"; mkdir -p "$WORK"
"$KUMIKO" bench gemm --threads 1 --size 64 --repeats 1 > "$WORK/free.out" 2>&1
grep -q "^bf16 gemm onednn .*GFLOP/s" "$WORK/free.out" ||
  { echo "SKIP: no oneDNN bf16 matmul here without a cap ($(grep 'onednn' "$WORK/free.out"))"; exit 77; }
ONEDNN_MAX_CPU_ISA=AVX2 "$KUMIKO" bench gemm --threads 1 --size 64 --repeats 1 > "$WORK/capped.out" 2>&1
want="bf16 gemm onednn    not available: oneDNN has no bf16 matmul here (it needs AVX-512 or newer): ONEDNN_MAX_CPU_ISA=AVX2 caps its instruction sets"
grep -qF "$want" "$WORK/capped.out" || { echo "FAIL: bench gemm under the cap:"; cat "$WORK/capped.out"; exit 1; }
# (openblas where the loaded OpenBLAS has sbgemm, as in scripts/testing/sbgemm.sh)
grep -qE "backend.bf16_gemm = auto uses (emulated|openblas)" "$WORK/capped.out" ||
  { echo "FAIL: auto did not fall back from oneDNN under the cap:"; cat "$WORK/capped.out"; exit 1; }
run=(train --config "$SRC/configs/tiny.ini" --data.synthetic=true --train.steps=1 --train.warmup_steps=1
     --backend.dtype=bf16 --backend.bf16_gemm=onednn --train.eval_every=0 --checkpoint.every_steps=0
     --log.run_dir="$WORK/run")
if ONEDNN_MAX_CPU_ISA=AVX2 "$KUMIKO" "${run[@]}" > "$WORK/train.out" 2>&1; then
  echo "FAIL: bf16_gemm = onednn ran under ONEDNN_MAX_CPU_ISA=AVX2"; exit 1
fi
[ "$(wc -l < "$WORK/train.out")" -eq 1 ] || { echo "FAIL: not one line:"; cat "$WORK/train.out"; exit 1; }
grep -qF "backend.bf16_gemm: 'onednn' cannot be used: oneDNN has no bf16 matmul here (it needs AVX-512 or newer): ONEDNN_MAX_CPU_ISA=AVX2 caps" \
  "$WORK/train.out" || { echo "FAIL: the error does not name the cap:"; cat "$WORK/train.out"; exit 1; }
echo "capped: $(grep -F 'bf16 gemm onednn' "$WORK/capped.out")"
echo "train: $(cat "$WORK/train.out")"
