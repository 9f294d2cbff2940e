#!/usr/bin/env bash
# kumiko plot on two generated runs (one resumed, with repeated steps; a skipped step;
# null mfu): the SVG must parse as XML; a .png output, a missing folder and a malformed
# line must each end with one error line and exit code 2.
set -euo pipefail
KUMIKO="$1"; WORK="$2"
command -v python3 >/dev/null || { echo "SKIP: python3 is needed to parse the SVG"; exit 77; }
rm -rf "$WORK"; mkdir -p "$WORK/a" "$WORK/b"
python3 - "$WORK" <<'PY'
import json, math, random, sys
work = sys.argv[1]
rng = random.Random(7)
def steps(first, last, offset):
    for t in range(first, last + 1):
        yield {"step": t, "loss": 4 + 4 * math.exp(-t / 40) + offset + rng.gauss(0, 0.05),
               "lr": 3e-3 * min(1, t / 10), "grad_norm": 0.7 + abs(rng.gauss(0, 0.1)),
               "tokens_per_s": 11000 + rng.gauss(0, 300), "mfu": None, "step_s": 0.08,
               "comm_s": 0.0, "bubble": 0.0}
with open(f"{work}/a/metrics.jsonl", "w") as f:
    lines = list(steps(1, 80, 0)) + [{"step": 40, "val_loss": 4.9, "val_ppl": 134.3}]
    lines += list(steps(61, 120, 0.1)) + [{"step": 120, "val_loss": 4.6, "val_ppl": 99.5}]  # resumed at 60
    lines[20] = {"step": 21, "skipped": 1, "skipped_total": 1}  # replaces step 21
    f.writelines(json.dumps(l) + "\n" for l in lines)
with open(f"{work}/b/metrics.jsonl", "w") as f:
    f.writelines(json.dumps(l) + "\n" for l in list(steps(1, 100, 0.4)) + [{"step": 50, "val_loss": 5.6}, {"step": 100, "val_loss": 5.2}])
PY

"$KUMIKO" plot "$WORK/a" "$WORK/b" --out "$WORK/curves.svg" --labels 'a<b&c,second' --title "two runs"
python3 -c "import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])" "$WORK/curves.svg"
python3 - "$WORK/curves.svg" <<'PY'
import sys, xml.dom.minidom
doc = xml.dom.minidom.parse(sys.argv[1])
assert doc.documentElement.tagName == "svg"
polylines = doc.getElementsByTagName("polyline")
assert len(polylines) == 2 * 4 + 2, len(polylines)
texts = [t.firstChild.data for t in doc.getElementsByTagName("text") if t.firstChild]
assert "a<b&c" in texts and "second" in texts and "two runs" in texts, texts
print(f"curves.svg: parsed, {len(polylines)} polylines, {len(texts)} texts")
PY
ls "$WORK"/*.tmp.* 2>/dev/null && { echo "FAIL: temporary file left"; exit 1; }

expect_error() {  # expect_error "substring" kumiko args...: exit 2 and one stderr line holding it
  local want="$1"; shift
  local rc=0
  "$KUMIKO" "$@" 2>"$WORK/err" >/dev/null || rc=$?
  [ "$rc" -eq 2 ] || { echo "FAIL: exit $rc (expected 2) for: $*"; cat "$WORK/err"; exit 1; }
  [ "$(wc -l < "$WORK/err")" -eq 1 ] || { echo "FAIL: not one line for: $*"; cat "$WORK/err"; exit 1; }
  grep -qF -- "$want" "$WORK/err" || { echo "FAIL: '$want' not in: $(cat "$WORK/err")"; exit 1; }
  echo "ok: $(cat "$WORK/err")"
}
expect_error "writes only SVG" plot "$WORK/a" --out "$WORK/curves.png"
[ ! -e "$WORK/curves.png" ] || { echo "FAIL: curves.png written"; exit 1; }
expect_error "$WORK/missing: no such run folder" plot "$WORK/missing" --out "$WORK/x.svg"
expect_error "--labels: expected 2 names" plot "$WORK/a" "$WORK/b" --labels one --out "$WORK/x.svg"
mkdir -p "$WORK/c"; printf '{"step":1,"loss":4,"lr":1e-3}\nnot json\n{"step":3,"loss":4,"lr":1e-3}\n' > "$WORK/c/metrics.jsonl"
expect_error "$WORK/c/metrics.jsonl:2: not a JSON line" plot "$WORK/c" --out "$WORK/x.svg"
echo "plot_cli: OK"
