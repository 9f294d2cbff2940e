#!/usr/bin/env bash
# The bf16 tests once more with OpenBLAS's cblas_sbgemm among the bf16 GEMMs
# (docs/testing.md, "OpenBLAS sbgemm"). Debian's OpenBLAS has no sbgemm, so the suite
# alone never runs backend.bf16_gemm = openblas; this builds Debian's OpenBLAS source
# with it (scripts/bench/openblas_bf16.sh, COOPERLAKE kernels, about 2 minutes) into
# build/openblas-bf16, once, and reruns with it on LD_LIBRARY_PATH the tests that take
# every bf16 GEMM the process has: MatmulBf16.* (each GEMM against the exact product),
# test_cpu_bf16 (a training step against the PyTorch bf16-autocast goldens) and
# test_bf16_layouts (every parallel layout against one process).
#
# Usage: scripts/testing/sbgemm.sh   (after scripts/test.sh has built build/)
# A CPU without AVX512-BF16 has no native sbgemm kernels, and a machine that cannot
# download Debian's source (or a user who is not root) cannot build the library: each
# reported as not run, exit 0.
# Exit 1 if a test failed or if the rebuilt library's sbgemm was not the one used.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! grep -m1 '^flags' /proc/cpuinfo | grep -qw avx512_bf16; then
  echo "sbgemm: not run (this CPU has no AVX512-BF16, so OpenBLAS has no native sbgemm for it)"
  exit 0
fi
[ -x build/bin/kernels_cpu_test ] || { echo "sbgemm: error: build/ has no test binaries: run scripts/test.sh first" >&2; exit 2; }
lib="$PWD/build/openblas-bf16"
has_sbgemm() { grep -q ' T cblas_sbgemm$' <(nm -D "$lib/libopenblas.so.0" 2>/dev/null); }
if ! has_sbgemm; then
  if [ "$(id -u)" != 0 ]; then
    echo "sbgemm: not run (building OpenBLAS from Debian's source needs root: apt-get source, packages)"
    exit 0
  fi
  rc=0
  scripts/bench/openblas_bf16.sh --prefix "$lib" || rc=$?
  if [ "$rc" = 3 ]; then  # no Debian mirror to fetch the source from: an environment gap, not a failure
    echo "sbgemm: not run (Debian's OpenBLAS source could not be downloaded; see above)"
    exit 0
  fi
  [ "$rc" = 0 ] || { echo "sbgemm: FAILED: building OpenBLAS with sbgemm failed (exit $rc)" >&2; exit 1; }
fi
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
log=build/sbgemm-tests.log
status=0
(cd build && ctest --output-on-failure --timeout 900 -V -R 'MatmulBf16|test_cpu_bf16|test_bf16_layouts') >"$log" 2>&1 ||
  status=1
grep -E '^[0-9]+% tests passed|^\s+[0-9]+ - ' "$log" || true
# The rerun only counts if sbgemm really ran: each test names the GEMMs it took.
gemms=$(grep -m1 -o 'bf16 GEMMs in this build and process:.*' "$log" || true)
echo "sbgemm: ${gemms:-no GEMM list in $log}"
wants=('bf16 GEMMs in this build and process:.* openblas')
# test_bf16_layouts exists only in an MPI build; where it does, each model must have run sbgemm.
if grep -q 'Total Tests: [1-9]' <(cd build && ctest -N -R test_bf16_layouts); then
  wants+=('gpt2 openblas one process' 'llama openblas one process')
fi
for want in "${wants[@]}"; do
  if ! grep -qE "$want" "$log"; then
    echo "sbgemm: FAILED: '$want' not in $log: the rebuilt OpenBLAS's sbgemm did not run" >&2
    status=1
  fi
done
[ "$status" = 0 ] && echo "sbgemm: passed (log: $log)" || echo "sbgemm: FAILED (log: $log)" >&2
exit "$status"
