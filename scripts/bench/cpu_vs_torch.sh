#!/usr/bin/env bash
# CPU training throughput: kumiko vs PyTorch on the same model shapes, same thread count.
#
# Usage: scripts/bench/cpu_vs_torch.sh [--torch-only] [--runs N] [--threads N]
#   env: KUMIKO_BIN (default build/bin/kumiko), KUMIKO_CONFIG (default configs/tiny.ini),
#        STEPS_TINY (default 10), STEPS_124M (default 6), PYTHON (default /usr/bin/python3)
#
# Shapes: tiny  gpt2 L=4  H=4  C=256 T=256 B=8 V=8192
#         124m  gpt2 L=12 H=12 C=768 T=64  B=4 V=50304   (GPT-2-124M-shaped)
# For each shape, torch and kumiko runs alternate (RUNS each). Each run's figure is the median
# tokens/s over steps > 2; the table shows the median over runs and kumiko/torch.
# Fairness: both sides use OpenBLAS (openmp build; torch gets it through libblas.so.3), with
# OMP_NUM_THREADS=THREADS and OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (this script only).
# Both train fp32 with AdamW, grad clip 1.0, tied embeddings, d_ff = 4C, random tokens.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"
KUMIKO_BIN="${KUMIKO_BIN:-$ROOT/build/bin/kumiko}"
KUMIKO_CONFIG="${KUMIKO_CONFIG:-configs/tiny.ini}"
STEPS_TINY="${STEPS_TINY:-10}"
STEPS_124M="${STEPS_124M:-6}"
RUNS=3
THREADS=2
TORCH_ONLY=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --torch-only) TORCH_ONLY=1 ;;
    --runs) RUNS="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "error: $*" >&2; exit 2; }

# --- prerequisites -----------------------------------------------------------------------------
[[ -x "$PYTHON" ]] || die "$PYTHON not found; the torch side needs Debian's python3 with python3-torch"
"$PYTHON" -c 'import torch' 2>/dev/null ||
  die "$PYTHON cannot import torch; install python3-torch (apt-get install python3-torch)." \
      "Note: the pyenv 'python3' first on PATH has no torch; this script uses $PYTHON."
dpkg-query -W -f='${Status}' libopenblas0-openmp 2>/dev/null | grep -q "install ok installed" ||
  die "libopenblas0-openmp is not installed; install it (apt-get install libopenblas0-openmp)" \
      "so that torch's BLAS is the same OpenBLAS (openmp) as kumiko's"
BLAS_LIB="$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)"
[[ "$BLAS_LIB" == *openblas-openmp* ]] ||
  die "libblas.so.3 resolves to '$BLAS_LIB', not openblas-openmp; run" \
      "update-alternatives --config libblas.so.3-x86_64-linux-gnu"
if [[ $TORCH_ONLY -eq 0 ]]; then
  [[ -x "$KUMIKO_BIN" ]] ||
    die "kumiko binary '$KUMIKO_BIN' is missing; build it first (cmake --build build --target" \
        "kumiko), set KUMIKO_BIN, or pass --torch-only"
  [[ -f "$ROOT/$KUMIKO_CONFIG" || -f "$KUMIKO_CONFIG" ]] ||
    die "kumiko config '$KUMIKO_CONFIG' not found (relative to $ROOT); set KUMIKO_CONFIG"
fi

LOAD="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)"
CORES="$(nproc 2>/dev/null || echo 1)"
if awk -v l="$LOAD" -v c="$CORES" 'BEGIN { exit !(l > 0.5 * c) }'; then
  echo "warning: machine is busy (load $LOAD on $CORES cores); with OpenMP spin-waiting the" \
       "numbers can be several times too low and noisy: rerun when the machine is idle" >&2
fi

unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS GOTO_NUM_THREADS MKL_NUM_THREADS
export OMP_NUM_THREADS="$THREADS"

TMP="$(mktemp -d -t kumiko-bench.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

# --- one run of each side; each prints a tokens/s figure on stdout -----------------------------
run_torch() {  # name L H C T B V steps
  local out
  out="$("$PYTHON" "$ROOT/scripts/bench/torch_train.py" --arch gpt2 --layers "$2" --heads "$3" \
    --d-model "$4" --seq "$5" --batch "$6" --vocab "$7" --steps "$8" --threads "$THREADS" \
    2>"$TMP/torch-$1.log")" || { cat "$TMP/torch-$1.log" >&2; die "torch run failed ($1)"; }
  sed -n 's/^tokens_per_s=//p' <<<"$out" | tail -n 1
}

run_kumiko() {  # name L H C T B V steps run_index
  local dir="$TMP/kumiko-$1-$9"
  mkdir -p "$dir"
  (cd "$ROOT" && "$KUMIKO_BIN" train --config "$KUMIKO_CONFIG" --data.synthetic=true \
    --model.arch=gpt2 --model.tie_embeddings=true \
    --model.n_layers="$2" --model.n_heads="$3" --model.d_model="$4" --model.d_ff="$(($4 * 4))" \
    --model.vocab_size="$7" --model.max_seq_len="$5" --data.seq_len="$5" \
    --train.global_batch="$6" --train.micro_batch="$6" --train.steps="$8" --train.warmup_steps=1 \
    --backend.threads="$THREADS" --train.eval_every=0 --log.run_dir="$dir") \
    >"$dir/stdout.log" 2>&1 ||
    { tail -n 20 "$dir/stdout.log" >&2; die "kumiko run failed ($1); log above"; }
  [[ -s "$dir/metrics.jsonl" ]] || die "kumiko wrote no $dir/metrics.jsonl ($1)"
  "$PYTHON" - "$dir/metrics.jsonl" <<'EOF'
import json, statistics, sys
rates = []
for line in open(sys.argv[1]):
  line = line.strip()
  if not line:
    continue
  r = json.loads(line)
  if "tokens_per_s" in r and "step" in r and r["step"] > 2:
    rates.append(float(r["tokens_per_s"]))
if not rates:
  sys.exit(f"error: {sys.argv[1]} has no records with step > 2 and tokens_per_s")
print(f"{statistics.median(rates):.1f}")
EOF
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
  if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# --- main loop -----------------------------------------------------------------------------------
#        name  L  H  C   T   B V     steps
SHAPES=("tiny  4  4  256 256 8 8192  $STEPS_TINY"
        "124m  12 12 768 64  4 50304 $STEPS_124M")
declare -A TORCH_MED KUMIKO_MED
echo "threads=$THREADS runs=$RUNS torch=$("$PYTHON" -c 'import torch; print(torch.__version__)')" \
     "blas=$BLAS_LIB kumiko=$([[ $TORCH_ONLY -eq 1 ]] && echo skipped || echo "$KUMIKO_BIN")"
for shape in "${SHAPES[@]}"; do
  read -r name L H C T B V N <<<"$shape"
  t_rates=(); k_rates=()
  for ((r = 1; r <= RUNS; r++)); do
    t="$(run_torch "$name" "$L" "$H" "$C" "$T" "$B" "$V" "$N")"
    t_rates+=("$t")
    echo "  $name run $r: torch $t tok/s" >&2
    if [[ $TORCH_ONLY -eq 0 ]]; then
      k="$(run_kumiko "$name" "$L" "$H" "$C" "$T" "$B" "$V" "$N" "$r")"
      k_rates+=("$k")
      echo "  $name run $r: kumiko $k tok/s" >&2
    fi
  done
  TORCH_MED[$name]="$(median "${t_rates[@]}")"
  KUMIKO_MED[$name]="$([[ $TORCH_ONLY -eq 0 ]] && median "${k_rates[@]}" || echo -)"
done

printf '\n%-6s %-36s %14s %14s %14s\n' shape "(L,H,C,T,B,V)" "torch tok/s" "kumiko tok/s" \
  "kumiko/torch"
for shape in "${SHAPES[@]}"; do
  read -r name L H C T B V N <<<"$shape"
  tm="${TORCH_MED[$name]}"; km="${KUMIKO_MED[$name]}"
  ratio="-"
  [[ "$km" != "-" ]] && ratio="$(awk -v k="$km" -v t="$tm" 'BEGIN { printf "%.2f", k / t }')"
  printf '%-6s %-36s %14s %14s %14s\n' "$name" "($L,$H,$C,$T,$B,$V)" "$tm" "$km" "$ratio"
done
