#!/usr/bin/python3
"""Compute golden values (float64) for a kumiko weights file with the independent torch model.

Usage: /usr/bin/python3 scripts/reference/make_golden.py IN.h5 OUT.json [--steps 10]

IN.h5 must hold /batch/inputs and /batch/targets. OUT.json fields:
  arch, dtype, batch_shape, steps, train (hyper-parameters used),
  loss                 initial mean cross-entropy on the batch
  grad_norms           {name: L2 norm of d loss / d tensor at step 0, before clipping}
  losses               [loss before each AdamW step]; losses[0] == loss
  grad_total_norms     [global grad L2 norm before clipping, at each step]
  final_loss           loss after the last step
  final_param_norms    {name: L2 norm after the last step}
  final_param_samples  {name: first 8 values (row-major) after the last step}
"""
import argparse
import contextlib
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model as tm  # noqa: E402


def sample_names(cfg):
  last = cfg.n_layers - 1
  names = ["embed.tokens.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight",
           f"blocks.{last}.attn.proj.weight",
           f"blocks.{last}.mlp.{'fc' if cfg.arch == 'gpt2' else 'gate'}.weight",
           "final_norm.weight"]
  if cfg.arch == "gpt2":
    names += ["embed.positions.weight", "blocks.0.attn.qkv.bias"]
  if not cfg.tie_embeddings:
    names.append("head.weight")
  return names


def warn_schedule(cp):
  """The golden run uses a constant lr: say so if the INI asks for warmup/decay."""
  if not cp.has_section("train"):
    return
  for key, val in cp.items("train"):
    v = tm._strip_value(val)
    if "warmup" in key and v not in ("0", "0.0"):
      print(f"warning: [train] {key} = {v} ignored; golden run uses constant lr", file=sys.stderr)
    if key in ("decay", "lr_schedule", "schedule") and v != "constant":
      print(f"warning: [train] {key} = {v} ignored; golden run uses constant lr", file=sys.stderr)


def run_golden(path, steps=10, autocast_bf16=False):
  text, raw, inputs, targets = tm.read_weights(path)
  cp = tm.parse_ini(text)
  cfg = tm.model_config_from_ini(cp)
  tc = tm.train_config_from_ini(cp)
  warn_schedule(cp)
  tm.check_params(cfg, raw, path)
  if inputs is None:
    raise ValueError(f"{path}: missing /batch/inputs and /batch/targets (needed for golden values)")
  if inputs.shape != targets.shape or inputs.ndim != 2:
    raise ValueError(f"{path}: /batch/inputs {list(inputs.shape)} and /batch/targets "
                     f"{list(targets.shape)} must both be [B, T]")
  for nm, arr in (("inputs", inputs), ("targets", targets)):
    if arr.min() < 0 or arr.max() >= cfg.vocab_size:
      raise ValueError(f"{path}: /batch/{nm} token ids must lie in [0, {cfg.vocab_size}), "
                       f"found [{arr.min()}, {arr.max()}]")

  torch.manual_seed(0)
  raw = {n: raw[n] for n in tm.expected_shapes(cfg)}  # model order, not HDF5's alphabetical
  # float64, or (--autocast-bf16) fp32 master weights and AdamW state with the forward
  # under torch.autocast("cpu", bfloat16): PyTorch's bf16 mixed precision, the peer
  # of kumiko's backend.dtype = bf16.
  p = tm.to_torch(raw, dtype=torch.float32 if autocast_bf16 else torch.float64)
  amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast_bf16 else contextlib.nullcontext
  x = torch.tensor(inputs)
  y = torch.tensor(targets)
  opt = tm.make_adamw(tc, p)
  params = list(p.values())

  losses, total_norms, grad_norms = [], [], None
  for step in range(steps):
    opt.zero_grad(set_to_none=True)
    with amp():
      loss = tm.loss_fn(cfg, p, x, y)
    loss.backward()
    losses.append(loss.item())
    if step == 0:
      grad_norms = {n: t.grad.norm().item() for n, t in p.items()}
    total = torch.norm(torch.stack([t.grad.norm() for t in params])).item()
    total_norms.append(total)
    if tc.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(params, max_norm=tc.grad_clip)
    opt.step()
  with torch.no_grad():
    with amp():
      final_loss = tm.loss_fn(cfg, p, x, y).item()
    final_norms = {n: t.norm().item() for n, t in p.items()}
    samples = {n: p[n].reshape(-1)[:8].tolist() for n in sample_names(cfg)}

  return {
      "arch": cfg.arch,
      "dtype": "bf16-autocast" if autocast_bf16 else "float64",
      "torch": torch.__version__,
      "source": os.path.basename(path),
      "batch_shape": list(inputs.shape),
      "steps": steps,
      "train": {"lr": tc.lr, "beta1": tc.beta1, "beta2": tc.beta2, "eps": tc.eps,
                "weight_decay": tc.weight_decay, "grad_clip": tc.grad_clip},
      "loss": losses[0] if losses else final_loss,
      "grad_norms": grad_norms or {},
      "losses": losses,
      "grad_total_norms": total_norms,
      "final_loss": final_loss,
      "final_param_norms": final_norms,
      "final_param_samples": samples,
  }, cfg


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("input")
  ap.add_argument("output")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--autocast-bf16", action="store_true",
                  help="fp32 weights, forward under torch.autocast('cpu', bfloat16) (torch >= 1.10)")
  a = ap.parse_args(argv)
  try:
    g, cfg = run_golden(a.input, a.steps, a.autocast_bf16)
  except (ValueError, KeyError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  with open(a.output, "w") as f:
    json.dump(g, f, indent=1)
    f.write("\n")
  print(f"{a.input}: arch={cfg.arch} L={cfg.n_layers} C={cfg.d_model} H={cfg.n_heads} "
        f"Hkv={cfg.n_kv_heads} F={cfg.d_ff} V={cfg.vocab_size} tied={cfg.tie_embeddings} "
        f"batch={g['batch_shape']}")
  print(f"  loss={g['loss']:.10f}  (ln V = {math.log(cfg.vocab_size):.6f})")
  print(f"  losses[-1]={g['losses'][-1]:.10f}  final_loss={g['final_loss']:.10f}")
  print(f"  grad total norm at step 0 = {g['grad_total_norms'][0]:.6e}")
  print(f"  wrote {a.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
