#!/usr/bin/env bash
# The CPU test matrix (docs/testing.md): the ctest suite once per OpenBLAS kernel
# family and thread count, so that no tolerance depends on one CPU's rounding.
# OpenBLAS picks its sgemm/dgemm kernels by CPU (OPENBLAS_CORETYPE forces a family the
# CPU can run); OMP_NUM_THREADS sets the threads of kumiko's kernels and of OpenBLAS
# (the MPI tests pin 1 thread per rank themselves).
#
# Usage: scripts/test_cpu_matrix.sh [ctest arguments, e.g. -LE multinode]
#   env KUMIKO_MATRIX_CORES   default "native Haswell SkylakeX Zen Sandybridge"
#                             ("native": OpenBLAS's own choice for this CPU)
#       KUMIKO_MATRIX_THREADS default "1 2"
#       KUMIKO_MATRIX_MARCH   default "native": the ISA kumiko's own kernels are compiled
#                             for; another value (e.g. x86-64-v3: AVX2 + FMA, what an
#                             AMD EPYC up to Zen 3 runs) builds a CPU-only copy in
#                             build-march-<value> with -march=<value>
# Builds first (as scripts/test.sh). Prints one line per cell and a markdown table;
# logs go to build/cpu-matrix/. Exit 1 if any cell failed; a family this CPU cannot
# run (OpenBLAS says "Core not found") is reported as not run, never as passed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh --tests
cuda=()
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then cuda=(-DKUMIKO_CUDA=ON); fi
scripts/build.sh "${cuda[@]}" >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

read -r -a cores <<<"${KUMIKO_MATRIX_CORES:-native Haswell SkylakeX Zen Sandybridge}"
read -r -a threads <<<"${KUMIKO_MATRIX_THREADS:-1 2}"
read -r -a marches <<<"${KUMIKO_MATRIX_MARCH:-native}"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
flags=" $(sed -n 's/^flags[[:space:]]*: //p' /proc/cpuinfo | head -1) "
# The instructions each OpenBLAS kernel family uses (x86 flag names in /proc/cpuinfo).
declare -A needs=([native]="" [Sandybridge]="avx" [Haswell]="avx2 fma" [Zen]="avx2 fma"
                  [SkylakeX]="avx512f avx512bw avx512vl" [Cooperlake]="avx512f avx512_bf16"
                  [SapphireRapids]="avx512f avx512_bf16 amx_bf16")
cpu_can_run() {
  local f
  for f in ${needs[$1]-}; do
    [[ "$flags" == *" $f "* ]] || return 1
  done
}
rows=()
failed=0
for march in "${marches[@]}"; do
  build=build
  if [ "$march" != native ]; then
    build="build-march-$march"
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKUMIKO_CUDA=OFF -DKUMIKO_NATIVE=OFF \
      -DCMAKE_CXX_FLAGS="-march=$march" >/dev/null
    cmake --build "$build" -j "${KUMIKO_JOBS:-$(nproc)}" >/dev/null
  fi
  logs="$build/cpu-matrix"
  mkdir -p "$logs"
  for core in "${cores[@]}"; do
    coretype=()
    [ "$core" = native ] || coretype=(OPENBLAS_CORETYPE="$core")
    # A family whose instructions this CPU lacks is not run (OpenBLAS does not always
    # refuse it: a forced family could die of SIGILL).
    if ! cpu_can_run "$core"; then
      echo "cpu-matrix: -march=$march $core: not run (this CPU lacks its instructions: ${needs[$core]})"
      rows+=("| $march | $core | - | not run: the CPU lacks ${needs[$core]} | |")
      continue
    fi
    # What OpenBLAS really loads for this setting (an unknown name falls back).
    chosen=$(env "${coretype[@]}" OPENBLAS_VERBOSE=2 "$build/bin/kumiko" version 2>&1 | sed -n 's/^Core: //p' | head -1)
    if [ "$core" != native ] && [ "$chosen" != "$core" ]; then
      echo "cpu-matrix: -march=$march $core: not run (this CPU cannot run it; OpenBLAS chose ${chosen:-?})"
      rows+=("| $march | $core | - | not run: the CPU lacks its instructions | |")
      continue
    fi
    for t in "${threads[@]}"; do
      log="$logs/${core}-t${t}.log"
      start=$(date +%s)
      if (cd "$build" && env "${coretype[@]}" OMP_NUM_THREADS="$t" ctest --output-on-failure --timeout 900 "$@") >"$log" 2>&1; then
        result=passed
      else
        result=FAILED
        failed=1
      fi
      secs=$(($(date +%s) - start))
      summary=$(grep -E '^[0-9]+% tests passed' "$log" || echo "no summary (see $log)")
      skipped=$(grep -c '(Skipped)' "$log" || true)
      echo "cpu-matrix: -march=$march $core ($chosen) threads=$t: $result, $summary, $skipped skipped, ${secs}s"
      rows+=("| $march | $core ($chosen) | $t | $result: $summary, $skipped skipped | ${secs} s |")
      if [ "$result" = FAILED ]; then grep -E '^\s+[0-9]+ - ' "$log" | sed 's/^/    /' || true; fi
    done
  done
done
echo
echo "CPU: $cpu; OpenBLAS $(dpkg-query -W -f='${Version}' libopenblas0-openmp 2>/dev/null || echo '?'); ctest $*"
echo
echo "| -march | OpenBLAS core | threads | result | time |"
echo "| --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
exit "$failed"
