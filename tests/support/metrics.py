#!/usr/bin/env python3
"""metrics.jsonl helpers for the shell tests.

  metrics.py last-step FILE
      prints the last step that logged a loss
  metrics.py compare REF GOT [--tol 1e-5] [--after N]
      the steps with a loss (only those > N with --after) must be the same in both
      files, and every loss of GOT within TOL relative of REF's; prints the largest
      difference, exits 1 otherwise. A step logged twice (a resumed run) keeps its
      last value.
"""
import argparse
import json
import sys


def losses(path):
    out = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                out[r["step"]] = r["loss"]
    return out


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    last = sub.add_parser("last-step")
    last.add_argument("file")
    cmp = sub.add_parser("compare")
    cmp.add_argument("ref")
    cmp.add_argument("got")
    cmp.add_argument("--tol", type=float, default=1e-5)
    cmp.add_argument("--after", type=int, default=0)
    a = p.parse_args()
    if a.cmd == "last-step":
        steps = losses(a.file)
        if not steps:
            sys.exit(f"{a.file}: no step with a loss")
        print(max(steps))
        return
    ref = {s: v for s, v in losses(a.ref).items() if s > a.after}
    got = {s: v for s, v in losses(a.got).items() if s > a.after}
    if not ref or ref.keys() != got.keys():
        sys.exit(f"steps differ: {sorted(ref)[:5]}... ({len(ref)}) vs {sorted(got)[:5]}... ({len(got)})")
    worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
    print(f"steps {min(ref)}..{max(ref)}: largest relative loss difference {worst:.2e} (bound {a.tol:g})")
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
