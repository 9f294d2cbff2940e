#!/usr/bin/env bash
# The test command: installs dependencies, builds (Release, CUDA included when
# nvcc is present) and runs the whole ctest suite.
# Usage: scripts/test.sh [ctest arguments, e.g. -L unit or -R loader]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh --tests
# The CUDA sources compile wherever nvcc exists, GPU or not (their tests skip without one).
cuda=()
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then cuda=(-DKUMIKO_CUDA=ON); fi
scripts/build.sh "${cuda[@]}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd build
ctest --output-on-failure --timeout 900 "$@"
