#!/usr/bin/env bash
# CPU training throughput: kumiko (fp32, bf16) against PyTorch's configurations on the
# same model shapes and thread count, in one run (docs/performance.md).
#
# Usage: scripts/bench/cpu_vs_torch.sh [--runs N] [--threads N] [--shapes tiny,124m,llama]
#                                      [--markdown FILE] [--no-compile] [--configs LIST] [--setup]
#   --configs    comma list of the configurations below to run (default all), e.g.
#                torch:fp32-compiled,kumiko:bf16; the others show as -
#   --setup      make the PyTorch 2.x virtualenv ($TORCH_VENV, from PyPI) and exit
#   env: PYTHON (default $TORCH_VENV/bin/python, TORCH_VENV default /opt/torch-venv),
#        KUMIKO_BIN (default build/bin/kumiko), STEPS_TINY (16, also llama), STEPS_124M (10)
#
# Shapes: tiny   gpt2  L=4  H=4       C=256 F=1024 T=256 B=8 V=8192  tied
#         124m   gpt2  L=12 H=12      C=768 F=3072 T=64  B=4 V=50304 tied (GPT-2-124M-shaped)
#         llama  llama L=4  H=8 KV=4  C=256 F=704  T=256 B=8 V=8192  untied (RMSNorm, RoPE,
#                SwiGLU, grouped-query attention: tiny's size in Llama's form)
# Configurations, alternating within each run:
#   kumiko:fp32, kumiko:bf16 (backend.bf16_gemm = auto), torch:fp32 (eager),
#   torch:fp32-compiled, torch:bf16 (autocast), torch:compiled (bf16 autocast +
#   torch.compile), torch:bf16-fused and torch:compiled-fused (the same two with
#   torch's fused AdamW, `fused=True`, torch >= 2.4; torch's CPU default is a loop
#   over the parameters). A failed compiled or fused run shows as - with a warning
#   rather than stopping the table.
# Each figure is the median tokens/s over a run's steps after warm-up (compiled runs
# leave out 3 more steps: compilation), then the median over runs. The next-to-last
# column is kumiko's best configuration over torch's best (of those medians); the last,
# the same ratio taken within each run, lowest-highest: the VM's run-to-run spread. Same model for both: AdamW, grad clip
# 1.0, the shape's embeddings and d_ff, random tokens, OMP_NUM_THREADS = threads.
# On a CPU without bf16 instructions torch's autocast is very slow (oneDNN's reference
# bf16 code): its bf16 figures then come from 3 steps of one run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/bench/common.sh
source "$ROOT/scripts/bench/common.sh"
TORCH_VENV="${TORCH_VENV:-/opt/torch-venv}"
PYTHON="${PYTHON:-$TORCH_VENV/bin/python}"
KUMIKO_BIN="${KUMIKO_BIN:-$ROOT/build/bin/kumiko}"
STEPS_TINY="${STEPS_TINY:-16}"
STEPS_124M="${STEPS_124M:-10}"
RUNS=3
THREADS=2
SHAPES_WANTED="tiny,124m,llama"
MARKDOWN=""
COMPILE=1
CONFIGS_WANTED=""

die() { echo "cpu_vs_torch: error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) RUNS="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --shapes) SHAPES_WANTED="$2"; shift ;;
    --markdown) MARKDOWN="$2"; shift ;;
    --no-compile) COMPILE=0 ;;
    --setup)
      python3 -m venv "$TORCH_VENV" && "$TORCH_VENV/bin/pip" install -q torch numpy
      "$TORCH_VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "in", "'"$TORCH_VENV"'")'
      exit 0 ;;
    --configs) CONFIGS_WANTED="$2"; shift ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs expects a positive integer, got '$RUNS'"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "--threads expects a positive integer, got '$THREADS'"
for v in STEPS_TINY STEPS_124M; do  # steps 1-2 are warm-up on both sides
  [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -ge 3 ]] || die "$v expects an integer >= 3 (steps per run, 2 of them warm-up), got '${!v}'"
done

# --- prerequisites -----------------------------------------------------------------------------
[[ -x "$PYTHON" ]] || die "$PYTHON not found: run '$0 --setup' (PyTorch 2.x from PyPI into $TORCH_VENV) or set PYTHON"
TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)" ||
  die "$PYTHON cannot import torch: run '$0 --setup' or set PYTHON to a python with torch 2.x"
[[ "$TORCH_VERSION" == 1.* ]] && COMPILE=0 && echo "note: torch $TORCH_VERSION has no torch.compile" >&2
[[ -x "$KUMIKO_BIN" ]] || die "kumiko binary '$KUMIKO_BIN' is missing: build it (scripts/test.sh or" \
  "cmake --build build --target kumiko) or set KUMIKO_BIN"

warn_if_busy
NATIVE_BF16=0
has_native_bf16 && NATIVE_BF16=1
CPU_NAME="$(cpu_name)"

unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS GOTO_NUM_THREADS MKL_NUM_THREADS
export OMP_NUM_THREADS="$THREADS"
TMP="$(mktemp -d -t kumiko-bench.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

# --- one run of one configuration; prints a tokens/s figure -------------------------------------
run_torch() {  # name arch L H KV C F T B V tied steps mode(fp32|fp32-compiled|bf16|bf16-fused|compiled|compiled-fused)
  local name="$1" arch="$2" L="$3" H="$4" KV="$5" C="$6" F="$7" T="$8" B="$9" V="${10}" tied="${11}"
  shift 11
  local args=(--arch "$arch" --layers "$L" --heads "$H" --kv-heads "$KV" --d-model "$C" --d-ff "$F"
              --seq "$T" --batch "$B" --vocab "$V" --threads "$THREADS")
  [[ "$tied" == tied ]] || args+=(--untie)
  local steps="$1" warmup=2
  case "$2" in
    bf16) args+=(--amp bf16) ;;
    bf16-fused) args+=(--amp bf16 --fused-adamw) ;;
    compiled) args+=(--amp bf16 --compile); warmup=5; steps=$((steps + 3)) ;;
    compiled-fused) args+=(--amp bf16 --compile --fused-adamw); warmup=5; steps=$((steps + 3)) ;;
    fp32-compiled) args+=(--compile); warmup=5; steps=$((steps + 3)) ;;
  esac
  if [[ "$2" == bf16* || "$2" == compiled* ]] && [[ $NATIVE_BF16 -eq 0 ]]; then steps=$((warmup + 1)); fi
  local log="$TMP/torch-$name-$2.log" out
  out="$("$PYTHON" "$ROOT/scripts/bench/torch_train.py" "${args[@]}" --steps "$steps" --warmup "$warmup" \
    2>"$log")" || {
    tail -n 20 "$log" >&2
    # torch.compile needs a working C++ toolchain for inductor, the fused AdamW torch
    # >= 2.4: a failure there costs one column, not the table.
    [[ "$2" == *compiled* || "$2" == *fused ]] &&
      { echo "warning: torch $2 run failed ($name); log above" >&2; echo "-"; return; }
    die "torch $2 run failed ($name); log above"
  }
  sed -n 's/^tokens_per_s=//p' <<<"$out" | tail -n 1
}

run_kumiko() {  # name arch L H KV C F T B V tied steps dtype
  local name="$1" arch="$2" L="$3" H="$4" KV="$5" C="$6" F="$7" T="$8" B="$9" V="${10}" tied="${11}"
  local steps="${12}" dtype="${13}"
  local dir="$TMP/kumiko-$name-$dtype" base=configs/tiny.ini
  [[ "$arch" == llama ]] && base=configs/tiny-llama.ini
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$ROOT" && "$KUMIKO_BIN" train --config "$base" --data.synthetic=true \
    --model.arch="$arch" --model.tie_embeddings="$([[ "$tied" == tied ]] && echo true || echo false)" \
    --model.n_layers="$L" --model.n_heads="$H" --model.n_kv_heads="$KV" --model.d_model="$C" --model.d_ff="$F" \
    --model.vocab_size="$V" --model.max_seq_len="$T" --data.seq_len="$T" \
    --train.global_batch="$B" --train.micro_batch="$B" --train.steps="$steps" --train.warmup_steps=1 \
    --backend.threads="$THREADS" --backend.dtype="$dtype" --train.eval_every=0 --checkpoint.every_steps=0 \
    --log.run_dir="$dir") >"$dir/stdout.log" 2>&1 ||
    { tail -n 20 "$dir/stdout.log" >&2; die "kumiko $dtype run failed ($name); log above"; }
  [[ "$dtype" == bf16 ]] && sed -n 's/.*\(dtype bf16 ([^)]*)\).*/\1/p' "$dir/stdout.log" | head -n 1 >"$TMP/kumiko-bf16-line"
  "$PYTHON" - "$dir/metrics.jsonl" <<'EOF'
import json, statistics, sys
rates = [float(r["tokens_per_s"]) for r in map(json.loads, filter(str.strip, open(sys.argv[1])))
         if "tokens_per_s" in r and r.get("step", 0) > 2]
if not rates:
  sys.exit(f"error: {sys.argv[1]} has no records with step > 2 and tokens_per_s")
print(f"{statistics.median(rates):.1f}")
EOF
}

# --- main loop -----------------------------------------------------------------------------------
#        name  arch  L  H  KV C   F    T   B V     embeddings steps
ALL_SHAPES=("tiny  gpt2  4  4  4  256 1024 256 8 8192  tied   $STEPS_TINY"
            "124m  gpt2  12 12 12 768 3072 64  4 50304 tied   $STEPS_124M"
            "llama llama 4  8  4  256 704  256 8 8192  untied $STEPS_TINY")
SHAPES=()
for s in "${ALL_SHAPES[@]}"; do
  [[ ",$SHAPES_WANTED," == *",${s%% *},"* ]] && SHAPES+=("$s")
done
IFS=, read -ra wanted <<<"$SHAPES_WANTED"
for w in "${wanted[@]}"; do
  [[ "$w" == tiny || "$w" == 124m || "$w" == llama ]] ||
    die "--shapes expects a comma list of tiny, 124m and llama, got '$w' in '$SHAPES_WANTED'"
done
[[ ${#SHAPES[@]} -gt 0 ]] || die "--shapes expects a comma list of tiny, 124m and llama, got '$SHAPES_WANTED'"
ALL_CONFIGS=(kumiko:fp32 kumiko:bf16 torch:fp32 torch:bf16 torch:bf16-fused)
[[ $COMPILE -eq 1 ]] && ALL_CONFIGS+=(torch:fp32-compiled torch:compiled torch:compiled-fused)
CONFIGS=()
for cfg in "${ALL_CONFIGS[@]}"; do
  [[ -z "$CONFIGS_WANTED" || ",$CONFIGS_WANTED," == *",$cfg,"* ]] && CONFIGS+=("$cfg")
done
if [[ -n "$CONFIGS_WANTED" ]]; then
  IFS=, read -ra wanted <<<"$CONFIGS_WANTED"
  for w in "${wanted[@]}"; do
    [[ " ${ALL_CONFIGS[*]} " == *" $w "* ]] ||
      die "--configs: '$w' is not one of: ${ALL_CONFIGS[*]}$([[ $COMPILE -eq 0 ]] && echo " (--no-compile)")"
  done
fi
[[ ${#CONFIGS[@]} -gt 0 ]] || die "--configs '$CONFIGS_WANTED' names none of: ${ALL_CONFIGS[*]}"
declare -A MED ROUND  # ROUND[name:run:config]: one run's tokens/s

echo "cpu: $CPU_NAME ($([[ $NATIVE_BF16 -eq 1 ]] && echo "bf16 instructions" || echo "no bf16 instructions"))," \
     "threads=$THREADS runs=$RUNS torch=$TORCH_VERSION kumiko=$KUMIKO_BIN" >&2
for shape in "${SHAPES[@]}"; do
  read -r name arch L H KV C F T B V tied _ <<<"$shape"
  declare -A rates=()
  for ((r = 1; r <= RUNS; r++)); do
    for cfg in "${CONFIGS[@]}"; do
      side="${cfg%%:*}" mode="${cfg#*:}"
      # Without bf16 instructions torch's bf16 runs take minutes a step on 124m: once.
      if [[ $side == torch && ($mode == bf16* || $mode == compiled*) && $NATIVE_BF16 -eq 0 && $r -gt 1 ]]; then
        continue
      fi
      # shellcheck disable=SC2086
      if [[ $side == torch ]]; then v="$(run_torch $shape "$mode")"
      else v="$(run_kumiko $shape "$mode")"; fi
      rates[$cfg]="${rates[$cfg]:-} $v"
      ROUND[$name:$r:$cfg]="$v"
      echo "  $name run $r: $side $mode $v tok/s" >&2
    done
  done
  for cfg in "${CONFIGS[@]}"; do
    # shellcheck disable=SC2086
    MED[$name:$cfg]="$(median ${rates[$cfg]:-})"
  done
  unset rates
done

best() {  # name side -> "value label" of the side's best configuration
  local name="$1" side="$2" b=0 label="-" v
  for cfg in "${CONFIGS[@]}"; do
    [[ "${cfg%%:*}" == "$side" ]] || continue
    v="${MED[$name:$cfg]:--}"
    [[ "$v" != "-" ]] && awk -v v="$v" -v b="$b" 'BEGIN { exit !(v > b) }' && b="$v" label="${cfg#*:}"
  done
  echo "$b $label"
}

# The ratio within each round (kumiko's best / torch's best of that round), min-max:
# how far this VM's run-to-run noise moves the headline ratio.
round_range() {  # name -> "min-max" or "-"
  local name="$1" r cfg v k t ratios=()
  for ((r = 1; r <= RUNS; r++)); do
    k=0 t=0
    for cfg in "${CONFIGS[@]}"; do
      v="${ROUND[$name:$r:$cfg]:--}"
      [[ "$v" == "-" ]] && continue
      if [[ "${cfg%%:*}" == kumiko ]]; then k="$(awk -v v="$v" -v b="$k" 'BEGIN { print (v > b) ? v : b }')"
      else t="$(awk -v v="$v" -v b="$t" 'BEGIN { print (v > b) ? v : b }')"; fi
    done
    awk -v k="$k" -v t="$t" 'BEGIN { exit !(k > 0 && t > 0) }' && ratios+=("$(awk -v k="$k" -v t="$t" 'BEGIN { print k / t }')")
  done
  [[ ${#ratios[@]} -gt 0 ]] || { echo "-"; return; }
  printf '%s\n' "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END { printf "%.2f-%.2fx", a[1], a[NR] }'
}

header="| shape | kumiko fp32 | kumiko bf16 | torch fp32 eager | torch fp32 + compile | torch bf16 autocast | torch bf16 + compile | torch bf16 + fused AdamW | torch bf16 + compile + fused AdamW | kumiko best / torch best | per-round ratio |"
{
  echo "$header"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
  for shape in "${SHAPES[@]}"; do
    read -r name arch L H KV C F T B V tied _ <<<"$shape"
    read -r kb kl <<<"$(best "$name" kumiko)"
    read -r tb tl <<<"$(best "$name" torch)"
    ratio="$(awk -v k="$kb" -v t="$tb" 'BEGIN { if (k > 0 && t > 0) printf "%.2fx", k / t; else print "-" }')"
    kv=""; [[ "$KV" != "$H" ]] && kv="/$KV"
    printf '| %s (%s L%s H%s C%s F%s T%s B%s V%s %s) | %s | %s | %s | %s | %s | %s | %s | %s | **%s** (kumiko %s / torch %s) | %s |\n' \
      "$name" "$arch" "$L" "$H$kv" "$C" "$F" "$T" "$B" "$V" "$tied" "${MED[$name:kumiko:fp32]:--}" "${MED[$name:kumiko:bf16]:--}" \
      "${MED[$name:torch:fp32]:--}" "${MED[$name:torch:fp32-compiled]:--}" "${MED[$name:torch:bf16]:--}" \
      "${MED[$name:torch:compiled]:--}" "${MED[$name:torch:bf16-fused]:--}" "${MED[$name:torch:compiled-fused]:--}" \
      "$ratio" "$kl" "$tl" "$(round_range "$name")"
  done
  echo
  echo "tokens/s, median of $RUNS run(s), $THREADS thread(s); $CPU_NAME; torch $TORCH_VERSION;" \
       "kumiko bf16: $(cat "$TMP/kumiko-bf16-line" 2>/dev/null || echo "?")"
} | tee "$TMP/table.md"
[[ -n "$MARKDOWN" ]] && cp "$TMP/table.md" "$MARKDOWN" && echo "table written to $MARKDOWN" >&2
exit 0
