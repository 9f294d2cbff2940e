#!/usr/bin/env bash
# The GPU check of the CUDA backend, in one call on a machine with one H100 or H200,
# CUDA 13, PyTorch and Python (and none of the Debian libraries). It runs what
# scripts/device/build_for_device.sh gathered in .device/ (carry it):
#   1. the gpu-labelled tests: every kernel against the CPU reference, the one model
#      over the CUDA backend against the CPU backend, 50 tiny-config steps fp32/bf16
#      against the CPU losses, and test_gpu_layouts' one-GPU-vs-CPU cases (built without
#      MPI, so its two-rank layouts skip);
#   2. kumiko bench kernels: each kernel next to cuBLASLt / cuDNN / the copy bandwidth;
#   3. gpt2-124m training throughput (B=16, T=1024, bf16) with kumiko's kernels and with
#      the vendor paths (cuBLASLt + cuDNN), and PyTorch (eager and torch.compile) on the
#      same shape: tokens/s and MFU;
# then prints one summary table. The tables and logs.tar.gz go to $OUT (or
# ./gpu-check-out).
# GPU_CHECK_STEPS="tests" (or any of tests bench train torch cpu) runs only those steps;
# "cpu" (the host CPU's bf16, step 4) runs only when named.
# Budget: 124-156 s on an H200 (2026-12-04; 72 s without torch.compile); every step has its own
# timeout (TERM, then KILL 5 s later) and all of them end by GPU_CHECK_BUDGET seconds (default 540) after
# the start, so a hang still leaves the tables of the steps before it. summary.txt and
# logs.tar.gz in $OUT are rewritten after every step (a run cut off keeps them).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
# Every log goes to $LOGS, packed into $OUT/logs.tar.gz at the end (the device tool
# brings back only a few files from $OUT).
LOGS=/tmp/kumiko-gpu-check-logs
rm -rf "$LOGS" && mkdir -p "$LOGS"
rm -f "$OUT/summary.txt" "$OUT/kernels.md"
END=$((SECONDS + ${GPU_CHECK_BUDGET:-540} - 10))  # 10 s kept for the summary and the archive
# Seconds a step may run: its own cap, less when the overall budget is short.
step_time() {
  local left=$((END - SECONDS))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
summary=()
note() {  # one summary line, kept in $OUT at once
  summary+=("$1")
  printf '%s\n' "$1" >>"$OUT/summary.txt"
}
pack_logs() { tar -C "$LOGS" -czf "$OUT/logs.tar.gz" . 2>/dev/null || true; }
fail() { echo "$1" >&2; note "$1"; pack_logs; exit 2; }
[ -f .device/kumiko-device.tar.xz ] || fail "gpu_check: .device/kumiko-device.tar.xz missing: run scripts/device/build_for_device.sh on the build machine and carry .device"
# Unpack the binaries and their Debian libraries (Python's tarfile: no xz tool needed).
DEV=/tmp/kumiko-device
rm -rf "$DEV" && mkdir -p "$DEV"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/kumiko-device.tar.xz "$DEV" ||
  fail "gpu_check: cannot unpack .device/kumiko-device.tar.xz"
echo "binaries built from commit $(cat .device/commit 2>/dev/null || echo unknown); tree at $(git rev-parse HEAD 2>/dev/null || echo unknown)"

# Python (PyTorch) runs with this machine's own library path: the Debian libstdc++,
# libssl, libffi ... in $DEV/lib are for kumiko's binaries only.
if [ -n "${LD_LIBRARY_PATH:-}" ]; then PYENV=(env LD_LIBRARY_PATH="$LD_LIBRARY_PATH"); else PYENV=(env -u LD_LIBRARY_PATH); fi
# CUDA's libraries come from this machine: the toolkit and/or the pip wheels
# (nvidia-cublas, nvidia-cudnn-cu13, nvidia-nccl-cu13, nvidia-cuda-runtime; CUDA 13
# wheels keep theirs in nvidia/cu13/lib): every folder holding lib*.so*, not stubs.
LIBS="$DEV/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d "$d" ] && LIBS="$LIBS:$d"; done
while IFS= read -r d; do
  [ -n "$d" ] && LIBS="$LIBS:$d"
done < <(python3 -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null |
  while IFS= read -r nv; do [ -d "$nv" ] && find "$nv" -name 'lib*.so*' -not -path '*/stubs/*' -printf '%h\n'; done |
  sort -u)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
export KUMIKO_SOURCE_DIR="$ROOT"
ldd "$DEV"/bin/* >"$LOGS/ldd.log" 2>&1
# Debian 12's libstdc++ and libgcc_s need glibc 2.36 and 2.35 (arc4random,
# _dl_find_object): on an older glibc (Ubuntu 22.04: 2.35) use this machine's own.
if grep -q "GLIBC_[0-9.]*' not found" "$LOGS/ldd.log"; then
  mkdir -p "$DEV/lib-unused"
  mv "$DEV/lib/libstdc++.so.6" "$DEV/lib/libgcc_s.so.1" "$DEV/lib-unused/" 2>/dev/null
  echo "gpu_check: this glibc is older than Debian 12's: using the system libstdc++ and libgcc_s"
  ldd "$DEV"/bin/* >"$LOGS/ldd.log" 2>&1
fi
if grep -q "not found" "$LOGS/ldd.log"; then
  fail "gpu_check: unresolved shared libraries: $(grep "not found" "$LOGS/ldd.log" | sort -u | tr -s ' \t\n' ' ')"
fi

GPU=$(timeout -k 5 30 nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
timeout -k 5 30 nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv |
  tee "$OUT/gpu.txt"
# Dense bf16 tensor-core peak for MFU (NVIDIA datasheets, SXM parts): H100 and H200 989 TFLOP/s.
case "$GPU" in
  *H100*PCIe*) PEAK=756000 ;;
  *H100*NVL*|*H200*NVL*) PEAK=835000 ;;
  *H100*|*H200*) PEAK=989000 ;;
  *A100*) PEAK=312000 ;;
  *) PEAK=0 ;;
esac

# Each test suite in its own process: a kernel that faults (an illegal address poisons
# the CUDA context) then loses only its own suite. A failed suite is rerun under
# compute-sanitizer's memcheck when the toolkit has it, for the exact faulting access.
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
run_tests() {  # binary budget_seconds
  local bin="$DEV/bin/$1" deadline=$((SECONDS + $(step_time "$2"))) suites suite log rc
  local passed=0 failed=0 skipped=0 crashed=""
  # Suite lines: "Suite." or "Prefix/Suite/0.  # TypeParam = ..." (test lines are indented).
  suites=$(timeout -k 5 30 "$bin" --gtest_list_tests 2>"$LOGS/$1-list.log" | awk '/^[^ ]/ && $1 ~ /\.$/ {print $1}')
  rc=$?
  if [ -z "$suites" ]; then
    note "tests $1: no test suites listed (rc=$rc, see $1-list.log)"
    tail -5 "$LOGS/$1-list.log"
    return
  fi
  for suite in $suites; do
    local left=$((deadline - SECONDS))
    if [ "$left" -le 5 ]; then crashed="$crashed ${suite%.}(no time left)"; continue; fi
    log="$LOGS/$1-${suite//\//_}log"
    timeout -k 5 "$left" "$bin" --gtest_filter="${suite}*" --gtest_brief=1 >"$log" 2>&1
    rc=$?
    local p k f
    p=$(sed -n 's/^\[  PASSED  \] \([0-9][0-9]*\) test.*/\1/p' "$log" | tail -1)
    k=$(sed -n 's/^\[  SKIPPED \] \([0-9][0-9]*\) test.*/\1/p' "$log" | tail -1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9][0-9]*\) test.*/\1/p' "$log" | tail -1)
    passed=$((passed + ${p:-0}))
    skipped=$((skipped + ${k:-0}))
    failed=$((failed + ${f:-0}))
    if [ "$rc" -ne 0 ]; then
      [ -z "$f" ] && crashed="$crashed ${suite%.}(rc=$rc)"
      grep -E '^\[  FAILED  \]|Failure|error|Error' "$log" | head -12
      # (not after a timeout, 124/137: under memcheck the hang would only be slower)
      if [ -n "$SANITIZER" ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && [ $((deadline - SECONDS)) -gt 30 ]; then
        timeout -k 5 30 "$SANITIZER" --tool memcheck --print-limit 5 "$bin" --gtest_filter="${suite}*" \
          >"${log%.log}.memcheck.log" 2>&1
        grep -E '^=========' "${log%.log}.memcheck.log" | head -8
      fi
    fi
  done
  note "tests $1: passed=$passed failed=$failed skipped=$skipped${crashed:+ crashed/unrun:$crashed}"
  pack_logs
}
# GPU_CHECK_STEPS picks steps (default all: "tests bench train torch").
STEPS=" ${GPU_CHECK_STEPS:-tests bench train torch} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
if want tests; then
echo "== gpu tests"
run_tests kernels_cuda_test 130
run_tests gpu_model_test 140  # RecomputeIsBitwise: 24 ten-step runs more
# The layouts on the CUDA backend (tests/distributed/gpu_layouts): build_for_device.sh
# builds without MPI (the GPU machine has no Debian Open MPI to link against), so one
# process runs the CUDA-vs-CPU checks and the two-rank layouts skip.
run_tests test_gpu_layouts 90
command -v mpirun >/dev/null && echo "(this machine's mpirun: $(mpirun --version 2>&1 | head -1))"
fi

echo "== kumiko bench kernels"
t=$(step_time 90)
if ! want bench; then
  :
elif [ "$t" -ge 15 ]; then
  timeout -k 5 "$t" "$DEV/bin/kumiko" bench kernels --markdown "$OUT/kernels.md" 2>&1 | tee "$LOGS/bench.log"
  rc=${PIPESTATUS[0]}
  note "bench kernels: rc=$rc$([ -f "$OUT/kernels.md" ] || echo ', no table (see bench.log)')"
else
  note "bench kernels: not run (no time left)"
fi
pack_logs

echo "== gpt2-124m training throughput (B=16, T=1024, bf16, random tokens)"
train_rate() {  # label matmul attention
  local dir=/tmp/kumiko-gpu-check-$1 t
  rm -rf "$dir"
  t=$(step_time 70)
  if [ "$t" -lt 20 ]; then note "train gpt2-124m bf16 $1: not run (no time left)"; return; fi
  timeout -k 5 "$t" "$DEV/bin/kumiko" train --config configs/gpt2-124m.ini --data.synthetic=true \
    --data.seq_len=1024 --train.global_batch=16 --train.micro_batch=16 --train.steps=15 --train.warmup_steps=2 \
    --train.eval_every=0 --checkpoint.every_steps=0 --checkpoint.dir="$dir/ckpt" --log.run_dir="$dir" \
    --log.every_steps=5 --parallel.zero=0 --backend.device=cuda --backend.dtype=bf16 --backend.matmul="$2" \
    --backend.attention="$3" --backend.peak_gflops=$PEAK >"$LOGS/train-$1.log" 2>&1
  local rc=$?
  # Median tokens/s and MFU over steps 4..15 (the first steps warm up).
  local stats
  cp "$dir/metrics.jsonl" "$LOGS/metrics-$1.jsonl" 2>/dev/null
  stats=$("${PYENV[@]}" python3 - "$dir/metrics.jsonl" <<'PY'
import json, os, statistics, sys
if not os.path.exists(sys.argv[1]):
    sys.exit(0)
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
rows = [r for r in rows if r["step"] >= 4]
if rows:
    mfus = [r["mfu"] for r in rows if r["mfu"] is not None]  # null without a peak
    print("%.0f tok/s, MFU %s, step %.3f s" % (statistics.median(r["tokens_per_s"] for r in rows),
          "%.1f%%" % (100 * statistics.median(mfus)) if mfus else "n/a", statistics.median(r["step_s"] for r in rows)))
PY
)
  note "train gpt2-124m bf16 $1: rc=$rc ${stats:-no metrics (see train-$1.log)}"
  tail -3 "$LOGS/train-$1.log"
  rm -rf "$dir"  # its checkpoint and weights files (about 2.5 GB)
  pack_logs
}
if want train; then
  train_rate kumiko kumiko kumiko
  train_rate vendor cublas cudnn
fi

# The peer users would otherwise pick: PyTorch with bf16 autocast, SDPA (flash)
# attention, fused AdamW, the same model (scripts/reference/torch_model.py), eager and
# with torch.compile (its first steps compile: 6 warmup steps are left out).
torch_rate() {  # label cap_seconds warmup [torch_train.py options]
  local label=$1 cap=$2 warmup=$3 rate t mfu
  shift 3
  t=$(step_time "$cap")
  if [ "$t" -lt 20 ]; then note "train gpt2-124m bf16 pytorch $label: not run (no time left)"; return; fi
  echo "== PyTorch gpt2-124m $label (same shape)"
  rate=$(timeout -k 5 "$t" "${PYENV[@]}" python3 scripts/bench/torch_train.py --arch gpt2 --layers 12 --heads 12 \
    --d-model 768 --seq 1024 --batch 16 --vocab 50304 --steps $((warmup + 10)) --warmup "$warmup" --device cuda \
    --amp bf16 "$@" 2>"$LOGS/torch-$label.log" | sed -n 's/^tokens_per_s=//p')
  if [ -z "$rate" ]; then
    note "train gpt2-124m bf16 pytorch $label: failed (see torch-$label.log)"
    tail -5 "$LOGS/torch-$label.log"
    return
  fi
  # MFU with kumiko's FLOP count (6 N_matmul + 12 L H D T per token, docs/training.md).
  mfu=$("${PYENV[@]}" python3 -c "L,C,V,T=12,768,50304,1024; f=6*(L*12*C*C+V*C)+12*L*C*T; print('%.1f%%' % (100*$rate*f/($PEAK*1e9)) if $PEAK else 'n/a')")
  note "train gpt2-124m bf16 pytorch $label $(sed -n 's/^torch \([^ ]*\) .*threads=.*/\1/p' "$LOGS/torch-$label.log" | head -1): ${rate%.*} tok/s, MFU ${mfu}"
  pack_logs
}
if want torch; then
  torch_rate eager 70 3
  torch_rate compiled 180 6 --compile
fi

# 4. (only when GPU_CHECK_STEPS names "cpu") this machine's host CPU, for the CPU
# backend's bf16 (issue 17 needs a CPU with AVX512-BF16 / AMX, which the build machine
# may lack): the bf16 GEMM and CPU-bf16 tests, kumiko bench gemm at 2 and all threads,
# and scripts/bench/cpu_vs_torch.sh at 2 threads (one run) into cpu_vs_torch.md
# (six of its eight configurations, within the budget; CPU_VS_TORCH_ARGS adds to its
#  arguments, the last --configs or --shapes winning: e.g. "--shapes tiny,124m,llama"
#  adds the llama row, which the device time left out by default; with --no-compile give
#  --configs too, as the default names compiled configurations).
if want cpu; then
  echo "== host CPU"
  { lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Socket|NUMA node\(s\))'
    echo "bf16 flags: $(grep -owE 'avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  } | tee "$OUT/cpu.txt"
  run_tests kernels_cpu_test 60
  run_tests test_cpu_bf16 120
  for t in 2 0; do
    timeout -k 5 "$(step_time 60)" "$DEV/bin/kumiko" bench gemm --threads "$t" --size 2048 2>&1
  done | tee "$LOGS/bench-gemm.log" >>"$OUT/cpu.txt"
  while IFS= read -r l; do note "cpu $l"; done < <(grep -E '^(sgemm|bf16 gemm|backend.bf16_gemm)' "$LOGS/bench-gemm.log")
  printf '#!/bin/sh\nexec env LD_LIBRARY_PATH="%s" "%s" "$@"\n' "$LD_LIBRARY_PATH" "$DEV/bin/kumiko" >/tmp/kumiko-host
  chmod +x /tmp/kumiko-host
  # The benchmark's older, shorter step counts: one run of both shapes within the budget.
  timeout -k 5 "$(step_time 330)" "${PYENV[@]}" KUMIKO_BIN=/tmp/kumiko-host PYTHON="$(command -v python3)" \
    STEPS_TINY=10 STEPS_124M=6 scripts/bench/cpu_vs_torch.sh --runs 1 --threads 2 --shapes tiny,124m \
    --configs kumiko:fp32,kumiko:bf16,torch:fp32,torch:bf16,torch:compiled,torch:compiled-fused ${CPU_VS_TORCH_ARGS:-} --markdown "$OUT/cpu_vs_torch.md" >"$OUT/cpu_vs_torch.log" 2>&1
  rc=$?
  note "cpu_vs_torch: rc=$rc ($(grep -c 'tok/s' "$OUT/cpu_vs_torch.log") runs; table in cpu_vs_torch.md)"
  pack_logs
fi

echo
echo "== summary ($GPU, $(date -u +%Y-%m-%d))"
[ -f "$OUT/kernels.md" ] && cat "$OUT/kernels.md"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
pack_logs
