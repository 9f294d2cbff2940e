#!/usr/bin/env bash
# Configures and builds kumiko (Release) into build/. CUDA sources are compiled with
# -DKUMIKO_CUDA=ON, or by default where nvcc is found and a GPU is visible
# (/usr/local/cuda/bin is added to PATH when present).
# Usage: scripts/build.sh [extra cmake -D options...]
#   env KUMIKO_TARGET: build only this target (e.g. kumiko); KUMIKO_JOBS: parallel jobs
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
JOBS="${KUMIKO_JOBS:-$(nproc)}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j "$JOBS" ${KUMIKO_TARGET:+--target "$KUMIKO_TARGET"}
