#!/usr/bin/python3
"""Train a kumiko-shaped model with PyTorch on CPU (or a GPU) and report throughput.

Usage: /usr/bin/python3 scripts/bench/torch_train.py --arch gpt2 --layers 4 --heads 4 \
         --d-model 256 --seq 256 --batch 8 --vocab 8192 --steps 10 --threads 2

fp32, AdamW (lr 3e-4, betas 0.9/0.95, wd 0.1 on linear weights), grad clip 1.0, random tokens
drawn fresh each step. One step = forward + backward + clip + optimizer step. Prints one line
per step on stderr and, last on stdout, `tokens_per_s=<median over the steps after warmup>`.
--amp bf16: bf16 autocast (fp32 master weights and AdamW state; on the CPU through
oneDNN's bf16 kernels), the peer of kumiko's backend.dtype = bf16. --device cuda always
takes torch's fused AdamW. --fused-adamw: torch's fused AdamW kernel on the CPU too
(fused=True, torch >= 2.4; the CPU default is a loop of tensor ops per parameter: with
the fused kernel GPT-2 124M's bf16 + compile step ran ~30-40 % faster on a 2-core Zen 4,
docs/performance.md). --compile: torch.compile the forward and loss.
The model is scripts/reference/torch_model.py with torch's fused LayerNorm/GELU/RMSNorm (fast=True);
attention uses F.scaled_dot_product_attention when this torch has it, else explicit matmuls.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import torch_model as tm  # noqa: E402


def install_sdpa():
  """Route tm.causal_attention through F.scaled_dot_product_attention (torch >= 2.0)."""
  sdpa = getattr(F, "scaled_dot_product_attention", None)
  if sdpa is None:
    return "manual"

  def attention(q, k, v, n_rep):
    if n_rep > 1:
      k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    return sdpa(q, k, v, is_causal=True)

  tm.causal_attention = attention
  return "sdpa"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
  ap.add_argument("--layers", type=int, required=True)
  ap.add_argument("--heads", type=int, required=True)
  ap.add_argument("--kv-heads", type=int, default=0, help="0 = heads")
  ap.add_argument("--d-model", type=int, required=True)
  ap.add_argument("--d-ff", type=int, default=0, help="0 = 4 * d_model")
  ap.add_argument("--seq", type=int, required=True)
  ap.add_argument("--batch", type=int, required=True)
  ap.add_argument("--vocab", type=int, required=True)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--untie", action="store_true", help="separate head.weight (default: tied)")
  ap.add_argument("--lr", type=float, default=3e-4)
  ap.add_argument("--grad-clip", type=float, default=1.0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--device", default="cpu", help="cpu or cuda")
  ap.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast dtype")
  ap.add_argument("--compile", action="store_true",
                  help="torch.compile the forward and loss (torch >= 2.0; the first steps compile:\n"
                       "give --warmup enough steps to leave them out)")
  ap.add_argument("--fused-adamw", action="store_true",
                  help="torch's fused AdamW (fused=True) on the CPU too (torch >= 2.4; on a GPU always)")
  a = ap.parse_args(argv)
  if a.steps <= a.warmup:
    ap.error(f"--steps ({a.steps}) must exceed --warmup ({a.warmup})")

  torch.set_num_threads(a.threads)
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:
    pass
  attn_kind = install_sdpa()
  cfg = tm.ModelConfig(arch=a.arch, n_layers=a.layers, n_heads=a.heads,
                       n_kv_heads=a.kv_heads or a.heads, d_model=a.d_model,
                       d_ff=a.d_ff or 4 * a.d_model, vocab_size=a.vocab, max_seq_len=a.seq,
                       tie_embeddings=not a.untie, norm_eps=1e-5, rope_theta=10000.0)
  p = tm.random_params(cfg, seed=a.seed, std=0.02, dtype=torch.float32)
  cuda = a.device == "cuda"
  if cuda:
    p = {n: t.detach().to("cuda").requires_grad_(True) for n, t in p.items()}
  n_params = sum(t.numel() for t in p.values())
  tc = tm.TrainConfig(lr=a.lr, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
                      grad_clip=a.grad_clip)
  opt = tm.make_adamw(tc, p)
  if cuda or a.fused_adamw:  # the same groups with the fused kernel
    try:
      opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups],
                              lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps, fused=True)
    except (RuntimeError, TypeError) as e:
      hint = "" if cuda else " (torch >= 2.4 has it on the CPU)"
      sys.exit(f"torch_train.py: error: {'--fused-adamw: ' if a.fused_adamw else ''}torch {torch.__version__} "
               f"has no fused AdamW on {a.device}{hint}: {e}")
  params = list(p.values())
  gen = torch.Generator().manual_seed(a.seed + 1)
  tokens = a.batch * a.seq
  print(f"torch {torch.__version__}{' compiled' if a.compile else ''}{' bf16 autocast' if a.amp == 'bf16' else ''}"
        f"{' fused AdamW' if cuda or a.fused_adamw else ''} threads={torch.get_num_threads()} attention={attn_kind} "
        f"arch={a.arch} L={a.layers} H={a.heads} C={a.d_model} F={cfg.d_ff} T={a.seq} "
        f"B={a.batch} V={a.vocab} params={n_params / 1e6:.2f}M", file=sys.stderr)

  def loss_of(x, y):
    return tm.loss_fn(cfg, p, x, y, fast=True)
  if a.compile:
    loss_of = torch.compile(loss_of)

  rates = []
  for step in range(1, a.steps + 1):
    stream = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=gen)
    x, y = stream[:, :-1], stream[:, 1:]
    if cuda:
      x, y = x.to("cuda"), y.to("cuda")
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    amp = a.amp == "bf16"
    with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
      loss = loss_of(x, y)
    loss.backward()
    if a.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(params, max_norm=a.grad_clip)
    opt.step()
    if cuda:
      torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    rates.append(tokens / dt)
    print(f"step {step} loss {loss.item():.4f} time {dt * 1e3:.1f} ms "
          f"tokens_per_s {tokens / dt:.1f}", file=sys.stderr, flush=True)
  print(f"tokens_per_s={statistics.median(rates[a.warmup:]):.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
