#!/usr/bin/env python3
"""PyTorch's causal attention, forward + backward, timed the way attention_bench.cpp times
kumiko's (scripts/bench/attention_vs_torch.sh runs both). F.scaled_dot_product_attention
(the fused flash kernel PyTorch runs on CPUs) on q [B, Hq, T, D] and k, v [B, Hkv, T, D]
(enable_gqa when Hkv < Hq), then o.backward; --compile wraps both in torch.compile.
Prints fb_ms=<best forward + backward of the timed repetitions, ms>."""
import argparse
import time

import torch
import torch.nn.functional as F


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--shape", type=int, nargs=5, metavar=("B", "T", "HQ", "HKV", "D"), required=True)
  p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
  p.add_argument("--compile", action="store_true")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--reps", type=int, default=20)
  a = p.parse_args()
  B, T, Hq, Hkv, D = a.shape
  if min(a.shape) < 1 or a.reps < 1 or a.threads < 1:
    p.error("--shape values, --reps and --threads must be at least 1")
  if Hq % Hkv:
    p.error(f"--shape: HQ ({Hq}) must be a multiple of HKV ({Hkv})")
  torch.set_num_threads(a.threads)
  torch.manual_seed(1)
  dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
  q = torch.randn(B, Hq, T, D, dtype=dt, requires_grad=True)
  k = torch.randn(B, Hkv, T, D, dtype=dt, requires_grad=True)
  v = torch.randn(B, Hkv, T, D, dtype=dt, requires_grad=True)
  go = torch.randn(B, Hq, T, D, dtype=dt)
  gqa = {"enable_gqa": True} if Hkv != Hq else {}

  def step():
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
    o.backward(go)

  fn = torch.compile(step) if a.compile else step
  warmup = 5 if a.compile else 2  # compilation happens in the first calls
  best = float("inf")
  for r in range(a.reps + warmup):
    q.grad = k.grad = v.grad = None
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    if r >= warmup:
      best = min(best, t1 - t0)
  print(f"fb_ms={best * 1e3:.3f}")


if __name__ == "__main__":
  main()
