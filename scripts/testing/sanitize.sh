#!/usr/bin/env bash
# The test suite under AddressSanitizer and UndefinedBehaviorSanitizer
# (docs/testing.md, "Sanitizers"): builds kumiko's C/C++ code with
# -DKUMIKO_SANITIZE=address,undefined into build-sanitize/ (no CUDA: nvcc objects are
# not instrumented, and their tests need a GPU) and runs the suite but the GPU,
# multi-host, plan, >2 GiB checkpoint and convergence tests: the unit and gradient
# tests, the other integration tests (checkpoint, signal, preemption) and every MPI
# test, each rank instrumented; each test's time limit is 4x its Release one.
# Out-of-bounds accesses in a vector kernel's tail, use after free, leaks, signed
# overflow, misaligned or invalid loads and shifts each abort the test that hit them
# with a stack trace.
#
# Usage: scripts/testing/sanitize.sh [ctest arguments, e.g. -R kernels_cpu]
#   env KUMIKO_JOBS: parallel build jobs; KUMIKO_SANITIZE: the sanitizer list
#   (default address,undefined)
# About 25 minutes to build on 2 cores from nothing (ccache makes a rebuild quick) and
# 11 minutes of tests. Not part of .ci/run: CI must finish well inside 90 minutes on 2
# cores, and took 38-41 minutes without it (2026-12-07).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install_deps.sh --tests
JOBS="${KUMIKO_JOBS:-$(nproc)}"
cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKUMIKO_CUDA=OFF \
  -DKUMIKO_SANITIZE="${KUMIKO_SANITIZE:-address,undefined}"
cmake --build build-sanitize -j "$JOBS"
# Leaks are checked (third-party ones at exit are suppressed by name in
# scripts/testing/lsan.supp); a UB report prints its stack and fails the test.
export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$PWD/scripts/testing/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
cd build-sanitize
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# ctest's -L/-LE take regular expressions: ^io$, or "io" would drop every integration test.
ctest --output-on-failure -LE "gpu|multinode|plan|^io$|slow" "$@"
