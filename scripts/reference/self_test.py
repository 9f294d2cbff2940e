#!/usr/bin/python3
"""Self-test of the torch reference against alternative formulations.

Usage: /usr/bin/python3 scripts/reference/self_test.py      (exit code 0 = all checks passed)

Checks: own LayerNorm / GELU vs torch's; HF rotate_half RoPE vs complex-number RoPE; whole-model
logits vs a second implementation (per-head loops, nn.MultiheadAttention for gpt2, complex RoPE
and explicit kv-head lookup for llama, log-softmax loss); causality; loss ~ ln V at small init;
finite-difference gradients; AdamW + clipping vs a hand-written numpy AdamW; file-format errors;
make_golden end to end on files written by make_test_weights.
"""
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_golden  # noqa: E402
import make_test_weights  # noqa: E402
import torch_model as tm  # noqa: E402

torch.set_default_dtype(torch.float64)
FAILURES = []


def check(name, ok, detail=""):
  print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f"  ({detail})" if detail else ""))
  if not ok:
    FAILURES.append(name)


def close(name, a, b, tol):
  err = (a - b).abs().max().item()
  check(name, err <= tol, f"max abs err {err:.3e}, tol {tol:.0e}")


# ------------------------------------------------------------------------------------------------
# Alternative formulation of the whole model


def complex_rope(x, theta):
  """x [B, H, T, D]; pairs (x[i], x[i + D/2]) rotated as complex numbers."""
  B, H, T, D = x.shape
  h = D // 2
  inv = 1.0 / (theta ** (torch.arange(h, dtype=torch.float64) * 2.0 / D))
  ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # [T, D/2]
  z = torch.complex(x[..., :h], x[..., h:]) * torch.polar(torch.ones_like(ang), ang)
  return torch.cat([z.real, z.imag], dim=-1)


def alt_attention_llama(cfg, p, pre, h):
  B, T, C = h.shape
  D, hq, hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
  W = p[pre + "qkv.weight"]
  wq, wk, wv = W[:hq * D], W[hq * D:(hq + hkv) * D], W[(hq + hkv) * D:]
  q = complex_rope((h @ wq.t()).reshape(B, T, hq, D).permute(0, 2, 1, 3), cfg.rope_theta)
  k = complex_rope((h @ wk.t()).reshape(B, T, hkv, D).permute(0, 2, 1, 3), cfg.rope_theta)
  v = (h @ wv.t()).reshape(B, T, hkv, D).permute(0, 2, 1, 3)
  add_mask = torch.full((T, T), -1e300).triu(1)  # additive mask instead of masked_fill
  heads = []
  for hh in range(hq):
    g = hh * hkv // hq  # kv group of this query head
    s = q[:, hh] @ k[:, g].transpose(-1, -2) * D ** -0.5 + add_mask  # [B, T, T]
    heads.append(torch.softmax(s, dim=-1) @ v[:, g])
  y = torch.stack(heads, dim=2).reshape(B, T, hq * D)
  return y @ p[pre + "proj.weight"].t()


def alt_attention_gpt2(cfg, p, pre, h):
  C, T = cfg.d_model, h.shape[1]
  mha = torch.nn.MultiheadAttention(C, cfg.n_heads, batch_first=True, dtype=torch.float64)
  with torch.no_grad():
    mha.in_proj_weight.copy_(p[pre + "qkv.weight"])
    mha.in_proj_bias.copy_(p[pre + "qkv.bias"])
    mha.out_proj.weight.copy_(p[pre + "proj.weight"])
    mha.out_proj.bias.copy_(p[pre + "proj.bias"])
  mask = torch.ones(T, T, dtype=torch.bool).triu(1)
  return mha(h, h, h, attn_mask=mask, need_weights=False)[0]


def alt_forward(cfg, p, ids):
  T = ids.shape[1]
  x = F.embedding(ids, p["embed.tokens.weight"])
  gpt2 = cfg.arch == "gpt2"
  if gpt2:
    x = x + F.embedding(torch.arange(T), p["embed.positions.weight"])[None]

  def norm(x, pre):
    if gpt2:
      return F.layer_norm(x, (cfg.d_model,), p[pre + "weight"], p[pre + "bias"], cfg.norm_eps)
    return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) / cfg.d_model + cfg.norm_eps) * p[
        pre + "weight"]

  for i in range(cfg.n_layers):
    b = f"blocks.{i}."
    att = alt_attention_gpt2 if gpt2 else alt_attention_llama
    x = x + att(cfg, p, b + "attn.", norm(x, b + "norm1."))
    h = norm(x, b + "norm2.")
    if gpt2:
      u = F.gelu(h @ p[b + "mlp.fc.weight"].t() + p[b + "mlp.fc.bias"], approximate="tanh")
      x = x + u @ p[b + "mlp.proj.weight"].t() + p[b + "mlp.proj.bias"]
    else:
      g = h @ p[b + "mlp.gate.weight"].t()
      x = x + (g * torch.sigmoid(g) * (h @ p[b + "mlp.up.weight"].t())) @ p[
          b + "mlp.down.weight"].t()
  x = norm(x, "final_norm.")
  head = p["embed.tokens.weight"] if cfg.tie_embeddings else p["head.weight"]
  return torch.einsum("btc,vc->btv", x, head)


def alt_loss(logits, targets):
  lp = torch.log_softmax(logits, dim=-1)
  return -lp.gather(-1, targets[..., None]).mean()


# ------------------------------------------------------------------------------------------------


def test_building_blocks():
  g = torch.Generator().manual_seed(1)
  x = torch.randn(3, 5, 64, generator=g) * 2 + 0.5
  w, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
  close("layer_norm vs F.layer_norm", tm.layer_norm(x, w, b, 1e-5),
        F.layer_norm(x, (64,), w, b, 1e-5), 1e-12)
  close("gelu_tanh vs F.gelu(approximate=tanh)", tm.gelu_tanh(x), F.gelu(x, approximate="tanh"),
        1e-12)
  ref_rms = x * (x.pow(2).mean(-1, keepdim=True) + 1e-6) ** -0.5 * w
  close("rms_norm vs pow formula", tm.rms_norm(x, w, 1e-6), ref_rms, 1e-12)
  q = torch.randn(2, 4, 16, 32, generator=g)
  cos, sin = tm.rope_cos_sin(16, 32, 10000.0, torch.float64)
  close("RoPE rotate_half vs complex", tm.apply_rope(q, cos, sin), complex_rope(q, 10000.0),
        1e-12)
  close("RoPE keeps norms", tm.apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1), 1e-12)
  # GQA: indexing vs repeat_interleave of kv heads.
  k, v = torch.randn(2, 2, 16, 32, generator=g), torch.randn(2, 2, 16, 32, generator=g)
  a = tm.causal_attention(q, k, v, 2)
  b2 = tm.causal_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), 1)
  close("GQA indexing vs repeat_interleave", a, b2, 1e-12)
  # A wrong kv mapping (h % Hkv) must differ: the check can fail.
  b3 = tm.causal_attention(q, k.repeat(1, 2, 1, 1), v.repeat(1, 2, 1, 1), 1)
  check("GQA wrong mapping differs", (a - b3).abs().max().item() > 1e-3)


def small_cfg(arch, tie, **kw):
  args = dict(arch=arch, n_layers=2, n_heads=4, n_kv_heads=2 if arch == "llama" else 4,
              d_model=64, d_ff=128 if arch == "gpt2" else 192, vocab_size=97, max_seq_len=32,
              tie_embeddings=tie, norm_eps=1e-5, rope_theta=10000.0)
  args.update(kw)
  return tm.ModelConfig(**args)


def perturbed_params(cfg, seed):
  p = tm.random_params(cfg, seed=seed, std=0.08, dtype=torch.float64, requires_grad=False)
  g = torch.Generator().manual_seed(seed + 1)
  for n, t in p.items():
    if ".norm" in n or n.startswith("final_norm"):
      t += 0.2 * torch.randn(t.shape, generator=g)  # norms and biases not trivial
    elif n.endswith(".bias"):
      t += 0.05 * torch.randn(t.shape, generator=g)
  return p


def test_models():
  for arch in ("gpt2", "llama"):
    for tie in (True, False):
      cfg = small_cfg(arch, tie)
      p = perturbed_params(cfg, 7)
      ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
      tgt = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(4))
      with torch.no_grad():
        lo = tm.forward(cfg, p, ids)
        close(f"{arch} tie={tie}: logits vs alternative model", lo, alt_forward(cfg, p, ids),
              1e-10)
        close(f"{arch} tie={tie}: fast path vs exact", tm.forward(cfg, p, ids, fast=True), lo,
              1e-10)
        l1 = tm.loss_fn(cfg, p, ids, tgt)
        close(f"{arch} tie={tie}: loss vs log_softmax loss", l1, alt_loss(lo, tgt), 1e-12)
        p32 = {n: t.float() for n, t in p.items()}
        l32 = tm.loss_fn(cfg, p32, ids, tgt)
        check(f"{arch} tie={tie}: fp32 loss close to fp64",
              abs(l32.item() - l1.item()) < 1e-4 * abs(l1.item()),
              f"{l32.item():.7f} vs {l1.item():.7f}")
        ids2 = ids.clone()
        ids2[:, 10:] = (ids2[:, 10:] + 1) % cfg.vocab_size
        lo2 = tm.forward(cfg, p, ids2)
        ok = (lo2[:, :10] - lo[:, :10]).abs().max().item() < 1e-12
        ok = ok and (lo2[:, 10:] - lo[:, 10:]).abs().max().item() > 1e-6
        check(f"{arch} tie={tie}: causal (future tokens do not change past logits)", ok)
      small = tm.random_params(cfg, seed=5, std=0.002, dtype=torch.float64, requires_grad=False)
      ls = tm.loss_fn(cfg, small, ids, tgt).item()
      check(f"{arch} tie={tie}: loss ~ ln V at small init", abs(ls - math.log(cfg.vocab_size)) < 0.01,
            f"{ls:.5f} vs {math.log(cfg.vocab_size):.5f}")


def test_gradients():
  """Central finite differences on a few elements of every kind of tensor."""
  for arch in ("gpt2", "llama"):
    cfg = small_cfg(arch, arch == "gpt2", n_layers=1, d_model=16, d_ff=24, vocab_size=11,
                    max_seq_len=8)
    p = perturbed_params(cfg, 11)
    for t in p.values():
      t.requires_grad_(True)
    ids = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    tgt = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(2))
    tm.loss_fn(cfg, p, ids, tgt).backward()
    worst = 0.0
    for n, t in p.items():
      flat = t.detach().view(-1)
      for j in (0, flat.numel() // 2, flat.numel() - 1):
        old = flat[j].item()
        with torch.no_grad():
          flat[j] = old + 1e-6
          up = tm.loss_fn(cfg, p, ids, tgt).item()
          flat[j] = old - 1e-6
          dn = tm.loss_fn(cfg, p, ids, tgt).item()
          flat[j] = old
        fd = (up - dn) / 2e-6
        worst = max(worst, abs(fd - t.grad.view(-1)[j].item()))
    check(f"{arch}: autograd vs finite differences", worst < 1e-7, f"max abs err {worst:.2e}")


def numpy_adamw(cfg, tc, params, grads_fn, steps):
  """Reference AdamW: decoupled decay p *= 1 - lr*wd, eps added after bias-corrected sqrt."""
  p = {n: t.detach().numpy().copy() for n, t in params.items()}
  m = {n: np.zeros_like(v) for n, v in p.items()}
  v2 = {n: np.zeros_like(v) for n, v in p.items()}
  for s in range(1, steps + 1):
    g = grads_fn(p)
    total = math.sqrt(sum(float((x * x).sum()) for x in g.values()))
    scale = min(1.0, tc.grad_clip / (total + 1e-6)) if tc.grad_clip > 0 else 1.0
    for n in p:
      gn = g[n] * scale
      wd = tc.weight_decay if tm.is_decayed(n) else 0.0
      p[n] *= 1.0 - tc.lr * wd
      m[n] = tc.beta1 * m[n] + (1 - tc.beta1) * gn
      v2[n] = tc.beta2 * v2[n] + (1 - tc.beta2) * gn * gn
      mhat = m[n] / (1 - tc.beta1 ** s)
      vhat = v2[n] / (1 - tc.beta2 ** s)
      p[n] -= tc.lr * mhat / (np.sqrt(vhat) + tc.eps)
  return p


def test_adamw():
  for arch in ("gpt2", "llama"):
    cfg = small_cfg(arch, arch == "gpt2")
    tc = tm.TrainConfig(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=0.5)
    base = perturbed_params(cfg, 21)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(5))
    tgt = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(6))

    def grads(pnp):
      pt = {n: torch.tensor(v, requires_grad=True) for n, v in pnp.items()}
      tm.loss_fn(cfg, pt, ids, tgt).backward()
      return {n: t.grad.numpy() for n, t in pt.items()}

    ref = numpy_adamw(cfg, tc, base, grads, 3)
    p = {n: t.clone().requires_grad_(True) for n, t in base.items()}
    opt = tm.make_adamw(tc, p)
    for _ in range(3):
      opt.zero_grad()
      tm.loss_fn(cfg, p, ids, tgt).backward()
      torch.nn.utils.clip_grad_norm_(list(p.values()), max_norm=tc.grad_clip)
      opt.step()
    err = max(float(np.abs(p[n].detach().numpy() - ref[n]).max()) for n in p)
    check(f"{arch}: torch AdamW + clip + groups vs numpy AdamW", err < 1e-12, f"max err {err:.2e}")
    decayed = sorted(n for n in p if tm.is_decayed(n))
    want = {"attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight",
            "mlp.gate.weight", "mlp.up.weight", "mlp.down.weight"}
    ok = all(n == "head.weight" or n.split(".", 2)[2] in want for n in decayed)
    ok = ok and not any(tm.is_decayed(n) for n in p if "embed" in n or "norm" in n or "bias" in n)
    check(f"{arch}: weight-decay group = linear weights only", ok, f"{len(decayed)} tensors")


def test_files():
  with tempfile.TemporaryDirectory() as d:
    for arch in ("gpt2", "llama"):
      path = os.path.join(d, f"{arch}.h5")
      a = make_test_weights.build_args(["--arch", arch, path])
      make_test_weights.make_file(a)
      g, cfg = make_golden.run_golden(path, steps=10)
      ok = (len(g["losses"]) == 10 and g["losses"][0] == g["loss"]
            and g["losses"][-1] < g["loss"] and set(g["grad_norms"]) == set(tm.expected_shapes(cfg))
            and all(len(v) == 8 for v in g["final_param_samples"].values()))
      check(f"{arch}: make_golden end to end (losses decrease, all fields)", ok,
            f"{g['loss']:.5f} -> {g['final_loss']:.5f}")
      json.dumps(g)
      # Format errors are one-line ValueErrors naming the tensor.
      import h5py
      with h5py.File(path, "a") as f:
        del f["model/final_norm.weight"]
        f.create_dataset("model/final_norm.weight", data=np.ones(3, np.float32))
      try:
        make_golden.run_golden(path)
        check(f"{arch}: wrong shape rejected", False)
      except ValueError as e:
        check(f"{arch}: wrong shape rejected", "final_norm.weight" in str(e), str(e))
      with h5py.File(path, "a") as f:
        f.attrs["format_version"] = np.int32(2)
      try:
        make_golden.run_golden(path)
        check(f"{arch}: wrong format_version rejected", False)
      except ValueError as e:
        check(f"{arch}: wrong format_version rejected", "format_version" in str(e), str(e))


KUMIKO_DUMP = """# kumiko configuration: effective values (from configs/tiny.ini and the command line)

[model]
arch = "llama"
n_layers = 2
n_heads = 4
n_kv_heads = 0
d_model = 64
d_ff = 0
vocab_size = 97
max_seq_len = 16
tie_embeddings = false
norm_eps = 1e-05
rope_theta = 500000
init_std = 0.02

[data]
dir = ""
seq_len = 16  # inline comment

[train]
lr = 0.0003
decay = "constant"
weight_decay = 0.1
grad_clip = 1
beta1 = 0.9
beta2 = 0.95
eps = 1e-08
"""


def test_ini():
  cp = tm.parse_ini(KUMIKO_DUMP)
  cfg, tc = tm.model_config_from_ini(cp), tm.train_config_from_ini(cp)
  ok = (cfg.arch == "llama" and cfg.n_kv_heads == 4 and cfg.d_ff == 256 and not cfg.tie_embeddings
        and cfg.rope_theta == 500000.0 and tc.lr == 3e-4 and tc.eps == 1e-8 and tc.grad_clip == 1.0)
  check("kumiko to_ini text parses (quotes, comments, 0 defaults)", ok, str(cfg))
  try:
    tm.model_config_from_ini(tm.parse_ini(KUMIKO_DUMP.replace('"llama"', '"bert"')))
    check("unknown arch rejected", False)
  except ValueError as e:
    check("unknown arch rejected", "arch" in str(e), str(e))


def main():
  torch.manual_seed(0)
  test_ini()
  test_building_blocks()
  test_models()
  test_gradients()
  test_adamw()
  test_files()
  print(f"{len(FAILURES)} failure(s)" if FAILURES else "all checks passed")
  return 1 if FAILURES else 0


if __name__ == "__main__":
  sys.exit(main())
