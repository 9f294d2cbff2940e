#!/usr/bin/env bash
# The CPU attention kernel alone, forward + backward, against PyTorch's fused causal
# attention (F.scaled_dot_product_attention, eager and under torch.compile) on the
# attention shapes of cpu_vs_torch.sh's models, in one run (docs/performance.md).
#
# Usage: scripts/bench/attention_vs_torch.sh [--runs N] [--threads N] [--reps N]
#                                            [--markdown FILE] [--no-compile]
#   env: PYTHON (default $TORCH_VENV/bin/python, TORCH_VENV default /opt/torch-venv;
#        cpu_vs_torch.sh --setup makes it), BUILD (default build: the kernels' static
#        libraries, from scripts/build.sh), CXX (default g++)
#
# Shapes (B T Hq Hkv D): tiny 8 256 4 4 64, 124m 4 64 12 12 64, llama 8 256 8 4 32
# (the three models of cpu_vs_torch.sh) and 124m-t1024 1 1024 12 12 64 (GPT-2 124M's
# attention at its own context length, where attention's share of a step is larger).
# kumiko: scripts/bench/attention_bench.cpp, built here against $BUILD/lib, on fp32 and
# bf16 storage (q, k, v interleaved per token as the model keeps them). PyTorch:
# scripts/bench/torch_attention.py, fp32 and bf16 tensors [B, H, T, D]. Each figure is
# the best forward + backward of --reps repetitions (after warm-up) in ms, then the
# median over runs; configurations alternate within a run. The last column is torch's
# best time over kumiko's best: how many times faster kumiko's kernel is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/bench/common.sh
source "$ROOT/scripts/bench/common.sh"
TORCH_VENV="${TORCH_VENV:-/opt/torch-venv}"
PYTHON="${PYTHON:-$TORCH_VENV/bin/python}"
BUILD="${BUILD:-$ROOT/build}"
CXX="${CXX:-g++}"
RUNS=3 THREADS=2 REPS=20 MARKDOWN="" COMPILE=1

die() { echo "attention_vs_torch: error: $*" >&2; exit 2; }

value() { [[ $# -ge 2 && "$2" != --* ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) value "$@"; RUNS="$2"; shift ;;
    --threads) value "$@"; THREADS="$2"; shift ;;
    --reps) value "$@"; REPS="$2"; shift ;;
    --markdown) value "$@"; MARKDOWN="$2"; shift ;;
    --no-compile) COMPILE=0 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
for v in RUNS THREADS REPS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v,,} expects a positive integer, got '${!v}'"
done

if [[ -n "$MARKDOWN" ]]; then  # fail now, not after the runs
  [[ -d "$(dirname -- "$MARKDOWN")" && -w "$(dirname -- "$MARKDOWN")" ]] ||
    die "--markdown $MARKDOWN: its folder does not exist or is not writable"
fi
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: run 'scripts/bench/cpu_vs_torch.sh --setup' or set PYTHON"
TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)" ||
  die "$PYTHON cannot import torch: run 'scripts/bench/cpu_vs_torch.sh --setup' or set PYTHON"
# enable_gqa (the Llama shape's grouped heads) came with torch 2.5.
"$PYTHON" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 5))' ||
  die "torch $TORCH_VERSION is too old: F.scaled_dot_product_attention with enable_gqa needs torch 2.5 or later"
for lib in libkumiko_kernels_cpu.a libkumiko_core.a; do
  [[ -f "$BUILD/lib/$lib" ]] || die "$BUILD/lib/$lib is missing: run scripts/build.sh first (or set BUILD)"
done

warn_if_busy
CPU_NAME="$(cpu_name)"
has_native_bf16 ||
  echo "warning: this CPU has no bf16 instructions: torch's bf16 runs (and kumiko's, widened to fp32) are slow" >&2
export OMP_NUM_THREADS="$THREADS"
TMP="$(mktemp -d -t kumiko-attn.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

# The kernels library is built for this CPU (-march=native in scripts/build.sh), so the
# bench is too; OpenBLAS for the fp32 tiles.
"$CXX" -O3 -march=native -fopenmp -std=c++20 -I "$ROOT/include" -I "$ROOT" \
  "$ROOT/scripts/bench/attention_bench.cpp" "$BUILD/lib/libkumiko_kernels_cpu.a" \
  "$BUILD/lib/libkumiko_core.a" -lopenblas -lspdlog -lfmt -o "$TMP/attention_bench" ||
  die "could not build scripts/bench/attention_bench.cpp against $BUILD/lib (rebuild with scripts/build.sh)"

CONFIGS=(kumiko:fp32 kumiko:bf16 torch:fp32 torch:bf16)
[[ $COMPILE -eq 1 ]] && CONFIGS+=(torch:fp32-compiled torch:bf16-compiled)

run_one() {  # config B T Hq Hkv D -> best f+b ms
  local cfg="$1" side="${1%%:*}" mode="${1#*:}" out
  shift
  if [[ $side == kumiko ]]; then
    out="$("$TMP/attention_bench" "$@" "$REPS" "$mode")" || die "attention_bench $* $mode failed"
  else
    local args=(--shape "$@" --threads "$THREADS" --reps "$REPS" --dtype "${mode%-compiled}")
    [[ $mode == *-compiled ]] && args+=(--compile)
    out="$("$PYTHON" "$ROOT/scripts/bench/torch_attention.py" "${args[@]}" 2>"$TMP/torch.log")" ||
      { tail -n 20 "$TMP/torch.log" >&2; die "torch $mode failed on shape $*"; }
  fi
  sed -n 's/^fb_ms=//p' <<<"$out" | tail -n 1
}

SHAPES=("tiny 8 256 4 4 64" "124m 4 64 12 12 64" "llama 8 256 8 4 32" "124m-t1024 1 1024 12 12 64")
declare -A MED
echo "cpu: $CPU_NAME, threads=$THREADS runs=$RUNS reps=$REPS torch=$TORCH_VERSION" >&2
for s in "${SHAPES[@]}"; do
  read -r name B T Hq Hkv D <<<"$s"
  declare -A times=()
  for ((r = 1; r <= RUNS; r++)); do
    for cfg in "${CONFIGS[@]}"; do
      v="$(run_one "$cfg" "$B" "$T" "$Hq" "$Hkv" "$D")"
      [[ -n "$v" ]] || die "$cfg on $name printed no fb_ms line"
      times[$cfg]="${times[$cfg]:-} $v"
      echo "  $name run $r: $cfg $v ms" >&2
    done
  done
  for cfg in "${CONFIGS[@]}"; do
    # shellcheck disable=SC2086
    MED[$name:$cfg]="$(median ${times[$cfg]})"
  done
  unset times
done

best() {  # name side -> "ms config" of the side's fastest configuration
  local b="" label="" v
  for cfg in "${CONFIGS[@]}"; do
    [[ "${cfg%%:*}" == "$2" ]] || continue
    v="${MED[$1:$cfg]}"
    if [[ -z "$b" ]] || awk -v v="$v" -v b="$b" 'BEGIN { exit !(v < b) }'; then b="$v" label="${cfg#*:}"; fi
  done
  echo "$b $label"
}

{
  echo "| shape (B T Hq/Hkv D) | kumiko fp32 | kumiko bf16 | torch fp32 | torch bf16 | torch fp32 + compile | torch bf16 + compile | torch best / kumiko best |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  for s in "${SHAPES[@]}"; do
    read -r name B T Hq Hkv D <<<"$s"
    read -r kb kl <<<"$(best "$name" kumiko)"
    read -r tb tl <<<"$(best "$name" torch)"
    printf '| %s (%s %s %s/%s %s) | %s | %s | %s | %s | %s | %s | **%s** (kumiko %s, torch %s) |\n' \
      "$name" "$B" "$T" "$Hq" "$Hkv" "$D" "${MED[$name:kumiko:fp32]}" "${MED[$name:kumiko:bf16]}" \
      "${MED[$name:torch:fp32]}" "${MED[$name:torch:bf16]}" "${MED[$name:torch:fp32-compiled]:--}" \
      "${MED[$name:torch:bf16-compiled]:--}" "$(awk -v k="$kb" -v t="$tb" 'BEGIN { printf "%.2fx", t / k }')" "$kl" "$tl"
  done
  echo
  echo "ms for one forward + backward (best of $REPS, median of $RUNS runs), $THREADS thread(s); $CPU_NAME; torch $TORCH_VERSION"
} | tee "$TMP/table.md"
[[ -n "$MARKDOWN" ]] && cp "$TMP/table.md" "$MARKDOWN" && echo "table written to $MARKDOWN" >&2
exit 0
