#!/usr/bin/env python3
"""Checkpoint save and load at the gpt2-124m shape, by rank count and writer.

Usage: scripts/bench/ckpt.py [--ranks 1,2,4,8] [--modes gather,gather-async,parallel,parallel-async]
                             [--dir /tmp/kumiko-bench-ckpt] [--markdown FILE] [--kumiko build/bin/kumiko]

For each rank count (layouts: 1 process; tp2; tp2 x pp2; tp2 x pp2 x dp2 with ZeRO-1)
and each writer mode it trains configs/gpt2-124m.ini on the CPU backend (synthetic
tokens, T = 64, one sequence per data-parallel rank) for 3 steps with a checkpoint at
step 2 (1.49 GB: fp32 values and AdamW's two moments), then resumes from it:
  gather          rank 0 gathers every tensor and writes the file (checkpoint.writer = gather)
  gather-async    the same, written by a background thread on rank 0
  parallel        every rank writes its own shards through parallel HDF5 (writer = parallel)
  parallel-async  the same from a snapshot in the background (checkpoint.async = true)
and reports, from metrics.jsonl and the log: the file size, the write time (start of the
write to `latest` moved), the write throughput, the training time blocked by the save
(ckpt_blocked_s: snapshot, or gathers + write + commit), its ratio to the synchronous
parallel save of the same rank count, and the resume's verify and load times.
Runs under mpirun --oversubscribe (more ranks than cores on a small machine: the
numbers then include that contention). Needs about 4 GB of memory and 3 GB of disk.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
LAYOUTS = {1: (1, 1, 1, 0), 2: (1, 2, 1, 0), 4: (1, 2, 2, 0), 8: (2, 2, 2, 1)}  # dp, tp, pp, zero
MODES = {"gather": ("gather", "false"), "gather-async": ("gather", "true"),
         "parallel": ("parallel", "false"), "parallel-async": ("parallel", "true")}


def layout_name(ranks):
  dp, tp, pp, zero = LAYOUTS[ranks]
  parts = [f"{k}{v}" for k, v in (("dp", dp), ("tp", tp), ("pp", pp)) if v > 1]
  return (" x ".join(parts) or "1 process") + (" zero1" if zero else "")


def run(cmd, log_path, timeout):
  env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
             OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
  t0 = time.time()
  with open(log_path, "w") as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
  if rc != 0:
    sys.exit(f"ckpt.py: {' '.join(cmd[:6])}... failed with {rc}; see {log_path}")
  return time.time() - t0


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--ranks", default="1,2,4,8")
  ap.add_argument("--modes", default="gather,gather-async,parallel,parallel-async")
  ap.add_argument("--dir", default="/tmp/kumiko-bench-ckpt")
  ap.add_argument("--markdown", default="")
  ap.add_argument("--kumiko", default=os.path.join(ROOT, "build", "bin", "kumiko"))
  ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
  a = ap.parse_args()
  ranks = [int(r) for r in a.ranks.split(",")]
  modes = a.modes.split(",")
  for r in ranks:
    if r not in LAYOUTS:
      ap.error(f"--ranks: {r} is not one of {sorted(LAYOUTS)}")
  for m in modes:
    if m not in MODES:
      ap.error(f"--modes: {m} is not one of {', '.join(MODES)}")
  if not os.access(a.kumiko, os.X_OK):
    ap.error(f"--kumiko: {a.kumiko} is not an executable (build first)")
  mpirun = shutil.which("mpirun")
  if not mpirun:
    sys.exit("ckpt.py: mpirun not found (apt-get install openmpi-bin)")

  rows = []
  for r in ranks:
    dp, tp, pp, zero = LAYOUTS[r]
    for mode in modes:
      writer, asynchronous = MODES[mode]
      run_dir = os.path.join(a.dir, f"np{r}-{mode}")
      shutil.rmtree(run_dir, ignore_errors=True)
      os.makedirs(run_dir)
      base = [mpirun, "--oversubscribe", "-np", str(r), a.kumiko, "train",
              "--config", os.path.join(ROOT, "configs", "gpt2-124m.ini"), "--backend.device=cpu",
              "--backend.dtype=fp32", "--backend.threads=1", "--data.synthetic=true", "--data.seq_len=64",
              f"--train.global_batch={dp}", "--train.micro_batch=1", "--train.warmup_steps=1",
              "--train.eval_every=0", "--checkpoint.every_steps=2", "--checkpoint.keep_last=1",
              f"--checkpoint.writer={writer}", f"--checkpoint.async={asynchronous}",
              f"--parallel.dp={dp}", f"--parallel.tp={tp}", f"--parallel.pp={pp}", f"--parallel.zero={zero}",
              f"--log.run_dir={run_dir}", "--log.tensorboard=false", "--log.level=info"]
      print(f"== {r} rank(s), {layout_name(r)}, {mode}", flush=True)
      run(base + ["--train.steps=3"], os.path.join(run_dir, "train.log"), a.timeout)
      metrics = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
      at2 = {k: v for m in metrics if m.get("step") == 2 for k, v in m.items()}
      # Resume (keep_last = 1 kept only the final checkpoint, step 3: the load reads it).
      run(base + ["--train.steps=4", "--checkpoint.resume=auto"], os.path.join(run_dir, "resume.log"), a.timeout)
      log = open(os.path.join(run_dir, "resume.log")).read()
      verify = re.search(r"verified \S+ in ([0-9.]+)s", log)
      load = re.search(r"loaded in ([0-9.]+)s", log)
      row = {"ranks": r, "layout": layout_name(r), "mode": mode, "mb": at2.get("ckpt_mb"),
             "write_s": at2.get("ckpt_write_s"), "blocked_s": at2.get("ckpt_blocked_s"),
             "verify_s": float(verify.group(1)) if verify else None, "load_s": float(load.group(1)) if load else None}
      rows.append(row)
      print(json.dumps(row), flush=True)
      shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
      for f in ("weights_final.h5",):
        if os.path.exists(os.path.join(run_dir, f)):
          os.remove(os.path.join(run_dir, f))

  sync = {row["ranks"]: row["write_s"] for row in rows if row["mode"] == "parallel"}
  fmt = lambda v, p=2: "n/a" if v is None else f"{v:.{p}f}"
  lines = ["| ranks | layout | writer | file MB | write s | write MB/s | blocked s | blocked / parallel sync save | verify s | load s |",
           "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for row in rows:
    mbps = row["mb"] / row["write_s"] if row["mb"] and row["write_s"] else None
    ratio = row["blocked_s"] / sync[row["ranks"]] if row["blocked_s"] is not None and sync.get(row["ranks"]) else None
    lines.append(f"| {row['ranks']} | {row['layout']} | {row['mode']} | {fmt(row['mb'], 0)} | {fmt(row['write_s'])} | "
                 f"{fmt(mbps, 0)} | {fmt(row['blocked_s'])} | {fmt(ratio)} | {fmt(row['verify_s'])} | {fmt(row['load_s'])} |")
  table = "\n".join(lines)
  print(table)
  if a.markdown:
    with open(a.markdown, "w") as f:
      f.write(table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
