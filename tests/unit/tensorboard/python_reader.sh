#!/usr/bin/env bash
# TensorBoard's own Python reader loads a file written by EventWriter and finds every
# scalar (read_events.py). Usage: python_reader.sh <tensorboard_write_events> <work dir>.
# KUMIKO_PYTHON selects the interpreter (default python3), e.g. a virtualenv that has
# the tensorboard package; without the package the test is skipped.
set -euo pipefail
WRITE_EVENTS="$1"; WORK="$2"
PYTHON="${KUMIKO_PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! "$PYTHON" -c "import tensorboard" 2>/dev/null; then
  echo "SKIP: the tensorboard Python package is not installed (for $PYTHON; set KUMIKO_PYTHON)"
  exit 77
fi
echo "tensorboard $("$PYTHON" -c 'import tensorboard; print(tensorboard.__version__)')"
rm -rf "$WORK"
file="$("$WRITE_EVENTS" "$WORK")"
echo "wrote $file"
"$PYTHON" "$HERE/read_events.py" "$file"
