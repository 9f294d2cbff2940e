# shellcheck shell=bash
# What the benchmark drivers share (sourced by cpu_vs_torch.sh and attention_vs_torch.sh).

# The median of the numbers given, "-" entries (a configuration that did not run) left
# out; "-" when none is left.
median() { printf '%s\n' "$@" | grep -v '^-$' | sort -g | awk '{a[NR]=$1} END {
  if (NR == 0) print "-"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# A warning on stderr when the load average is above half the cores: with OpenMP
# spin-waiting, timings taken then are several times off and noisy.
warn_if_busy() {
  local load cores
  load="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)"
  cores="$(nproc 2>/dev/null || echo 1)"
  if awk -v l="$load" -v c="$cores" 'BEGIN { exit !(l > 0.5 * c) }'; then
    echo "warning: machine is busy (load $load on $cores cores): with OpenMP spin-waiting the" \
         "numbers can be several times off and noisy; rerun when the machine is idle" >&2
  fi
}

# The CPU's model name, and whether it has bf16 instructions (AVX512-BF16 or AMX-BF16).
cpu_name() { sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1; }
has_native_bf16() { grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; }
