#!/usr/bin/env bash
# kumiko plan's predictions against kumiko's own measurement on this CPU
# (validate_plan.py): memory within 10 %, step time within 25 %, 16 layouts (two in bf16).
# Usage: validate_plan.sh KUMIKO_BINARY WORK_DIR
set -euo pipefail
exec python3 "$(dirname "$0")/validate_plan.py" "$1" "$2" --markdown "$2.md"
