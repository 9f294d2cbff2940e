#!/usr/bin/env bash
# The demo: installs dependencies, builds, prepares the bundled Shakespeare
# corpus, trains configs/tiny.ini on the CPU and samples from the result.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
KUMIKO_TARGET=kumiko scripts/build.sh
BIN=build/bin/kumiko
if [ ! -f runs/data/shakespeare/train_000000.bin ]; then
  $BIN prepare --input data/tinyshakespeare.txt --vocab-size 4096 --out runs/data/shakespeare
fi
rm -rf runs/tiny
$BIN train --config configs/tiny.ini
echo
echo "=== samples from runs/tiny/weights_final.h5 ==="
$BIN sample --checkpoint runs/tiny/weights_final.h5 --prompt "ROMEO:" --max-new-tokens 120 --seed 1
echo
$BIN sample --checkpoint runs/tiny/weights_final.h5 --prompt "First Citizen:" --max-new-tokens 120 --seed 2
