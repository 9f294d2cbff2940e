#!/usr/bin/python3
"""Write a small random kumiko weights file (HDF5, format "kumiko-weights" v1) for testing.

Usage: /usr/bin/python3 scripts/reference/make_test_weights.py --arch gpt2|llama OUT.h5 [options]

Same layout kumiko writes: root attrs format/format_version, /config (effective INI text),
/model/<name> float32 logical tensors, /batch/inputs and /batch/targets int32 [B, T].
Defaults: L=2, C=64, H=4 (Hkv=2 for llama), F=128 (gpt2) / 192 (llama), V=97, T=16, B=2.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model as tm  # noqa: E402

INI_TEMPLATE = """\
[model]
arch = {arch}
n_layers = {layers}
n_heads = {heads}
n_kv_heads = {kv_heads}
d_model = {d_model}
d_ff = {d_ff}
vocab_size = {vocab}
max_seq_len = {max_seq_len}
tie_embeddings = {tie}
norm_eps = {norm_eps}
rope_theta = {rope_theta}

[train]
lr = {lr}
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
weight_decay = 0.1
grad_clip = {grad_clip}
global_batch = {batch}
micro_batch = {batch}
steps = 10
warmup_steps = 0

[data]
seq_len = {seq}
"""


def build_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("out")
  ap.add_argument("--arch", choices=["gpt2", "llama"], required=True)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--kv-heads", type=int, default=None, help="default 2 for llama, 0 for gpt2")
  ap.add_argument("--d-model", type=int, default=64)
  ap.add_argument("--d-ff", type=int, default=None, help="default 128 (gpt2) / 192 (llama)")
  ap.add_argument("--vocab", type=int, default=97)
  ap.add_argument("--seq", type=int, default=16)
  ap.add_argument("--max-seq-len", type=int, default=None, help="default 2*seq")
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--tie", choices=["true", "false"], default=None,
                  help="default true for gpt2, false for llama")
  ap.add_argument("--norm-eps", type=float, default=1e-5)
  ap.add_argument("--rope-theta", type=float, default=10000.0)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--grad-clip", type=float, default=1.0)
  ap.add_argument("--std", type=float, default=0.02, help="std of the random weights")
  ap.add_argument("--seed", type=int, default=1234)
  a = ap.parse_args(argv)
  if a.kv_heads is None:
    a.kv_heads = 2 if a.arch == "llama" else 0
  if a.d_ff is None:
    a.d_ff = 128 if a.arch == "gpt2" else 192
  if a.max_seq_len is None:
    a.max_seq_len = 2 * a.seq
  if a.tie is None:
    a.tie = "true" if a.arch == "gpt2" else "false"
  return a


def make_file(a):
  import h5py
  text = INI_TEMPLATE.format(arch=a.arch, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads,
                             d_model=a.d_model, d_ff=a.d_ff, vocab=a.vocab,
                             max_seq_len=a.max_seq_len, tie=a.tie, norm_eps=a.norm_eps,
                             rope_theta=a.rope_theta, lr=a.lr, grad_clip=a.grad_clip,
                             batch=a.batch, seq=a.seq)
  cfg = tm.model_config_from_ini(tm.parse_ini(text))
  rng = np.random.default_rng(a.seed)
  with h5py.File(a.out, "w") as f:
    f.attrs["format"] = tm.FORMAT_NAME
    f.attrs["format_version"] = np.int32(tm.FORMAT_VERSION)
    f.create_dataset("config", data=text, dtype=h5py.string_dtype("utf-8"))
    g = f.create_group("model")
    for name, shape in tm.expected_shapes(cfg).items():
      if ".norm" in name or name.startswith("final_norm"):
        # Norm weights near 1, biases near 0, but not exactly (so mistakes show up).
        base = 1.0 if name.endswith("weight") else 0.0
        v = base + 0.1 * rng.standard_normal(shape)
      elif name.endswith(".bias"):
        v = a.std * rng.standard_normal(shape)
      else:
        v = a.std * rng.standard_normal(shape)
      g.create_dataset(name, data=v.astype(np.float32))
    # Batch: targets are inputs shifted by one over a random token stream, as in training.
    stream = rng.integers(0, a.vocab, size=(a.batch, a.seq + 1))
    f.create_dataset("batch/inputs", data=stream[:, :-1].astype(np.int32))
    f.create_dataset("batch/targets", data=stream[:, 1:].astype(np.int32))
  return cfg


def main(argv=None):
  a = build_args(argv)
  cfg = make_file(a)
  n = sum(int(np.prod(s)) for s in tm.expected_shapes(cfg).values())
  print(f"wrote {a.out}: arch={cfg.arch} L={cfg.n_layers} C={cfg.d_model} H={cfg.n_heads} "
        f"Hkv={cfg.n_kv_heads} F={cfg.d_ff} V={cfg.vocab_size} B={a.batch} T={a.seq} "
        f"tied={cfg.tie_embeddings} params={n}")


if __name__ == "__main__":
  main()
