#!/usr/bin/env bash
# HF folder -> kumiko import-hf -> kumiko export-hf -> transformers' from_pretrained:
# the logits of the golden batch must be the golden's (scripts/reference/check_hf_export.py).
# Usage: export_check.sh KUMIKO SOURCE_DIR WORK_DIR   (env KUMIKO_PYTHON: the python with torch)
set -euo pipefail
KUMIKO=$1 SRC=$2 WORK=$3
PY=${KUMIKO_PYTHON:-python3}
if ! "$PY" -c "import torch, transformers" 2>/dev/null; then
  echo "SKIP: torch and transformers are not installed (set KUMIKO_PYTHON to a python that has them)"
  exit 77
fi
rm -rf "$WORK" && mkdir -p "$WORK"
for arch in gpt2 llama; do
  "$KUMIKO" import-hf --from "$SRC/tests/golden/hf/$arch" --out "$WORK/$arch.h5"
  "$KUMIKO" export-hf --from "$WORK/$arch.h5" --out "$WORK/$arch-hf" --max-shard-mb 0.05  # shards + index too
  "$PY" "$SRC/scripts/reference/check_hf_export.py" "$WORK/$arch-hf" "$SRC/tests/golden/hf/$arch/golden.json"
done
echo "OK: both exported folders load in transformers with the golden logits"
