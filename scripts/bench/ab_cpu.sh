#!/usr/bin/env bash
# A/B of two kumiko binaries on the CPU training shapes of scripts/bench/cpu_vs_torch.sh
# (tiny: L4 H4 C256 T256 B8 V8192, 40 steps; 124M: L12 H12 C768 T64 B4 V50304, 20
# steps), runs alternating, 2 threads. Per run: tokens/s of the best step, the 25th
# percentile and the median over steps > 2 (best and p25 resist a shared machine's noise).
#
# Usage: scripts/bench/ab_cpu.sh OLD_KUMIKO NEW_KUMIKO [RUNS]
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,8p' "$0"; exit 2; }
OLD="$1" NEW="$2" RUNS="${3:-3}"
for b in "$OLD" "$NEW"; do [[ -x "$b" ]] || { echo "error: $b is not an executable kumiko" >&2; exit 2; }; done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
run() {  # binary tag L H C T B V steps
  local d="$TMP/$2"
  rm -rf "$d" && mkdir -p "$d"
  (cd "$ROOT" && "$1" train --config configs/tiny.ini --data.synthetic=true --model.arch=gpt2 \
    --model.tie_embeddings=true --model.n_layers="$3" --model.n_heads="$4" --model.d_model="$5" \
    --model.d_ff="$(($5 * 4))" --model.vocab_size="$8" --model.max_seq_len="$6" --data.seq_len="$6" \
    --train.global_batch="$7" --train.micro_batch="$7" --train.steps="$9" --train.warmup_steps=1 \
    --backend.threads=2 --train.eval_every=0 --checkpoint.every_steps=0 --log.run_dir="$d") >"$d/out.log" 2>&1 ||
    { tail -n 20 "$d/out.log" >&2; exit 2; }
  python3 - "$d/metrics.jsonl" "$7" "$6" <<'PY'
import json, statistics, sys
B, T = int(sys.argv[2]), int(sys.argv[3])
s = sorted(o["step_s"] for o in map(json.loads, open(sys.argv[1])) if "step_s" in o and o["step"] > 2)
print(f"best {B*T/s[0]:.0f} tok/s, p25 {B*T/s[len(s)//4]:.0f}, median {B*T/statistics.median(s):.0f}")
PY
}
for shape in "tiny 4 4 256 256 8 8192 40" "124m 12 12 768 64 4 50304 20"; do
  set -- $shape
  for r in $(seq "$RUNS"); do
    echo "$1 old run$r: $(run "$OLD" "old-$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$9")"
    echo "$1 new run$r: $(run "$NEW" "new-$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$9")"
  done
done
