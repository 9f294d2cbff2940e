#!/usr/bin/python3
"""Write the Hugging Face reference folders tests/golden/hf/{gpt2,llama} with `transformers`.

Usage (the venv of tests/golden/README.md, "Hugging Face goldens"):
    /tmp/hfvenv/bin/python scripts/reference/make_hf_golden.py [--out tests/golden/hf]

For each of two tiny random models (GPT2LMHeadModel, LlamaForCausalLM; fp32, dropout 0,
eval mode) it writes, with save_pretrained(safe_serialization=True), config.json,
generation_config.json and model.safetensors, and beside them golden.json:

  arch                 "gpt2" | "llama"
  transformers_version, torch_version
  seed                 the seed of the weights and of input_ids
  input_ids            [[...], [...]]  B=2 rows of T=8 ids in [0, 96)
  shape                [B, T, V] = [2, 8, 96]
  logits               flat row-major [B, T, V] list, the fp32 forward written as float64 numbers
  loss                 HF's loss with labels = input_ids (mean next-token cross-entropy, shifted)
  tensors              {name: shape} of model.safetensors, as read back from the file
  notes                how the weights were initialized and what the file holds

Weights are re-initialized with a larger scale than transformers' default, so that logits
are far from uniform and a wrong layout shows: every 2-D weight N(0, 0.3), every bias
N(0, 0.1), norm weights 1 + N(0, 0.1). Deterministic: one thread, explicit generators, no
timestamps (running it twice gives identical files).
"""
import argparse
import json
import math
import os
import sys

import torch
import transformers
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B, T, V = 2, 8, 96
STD_WEIGHT, STD_BIAS, STD_NORM = 0.3, 0.1, 0.1


def make_gpt2():
  cfg = GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                   activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
  return GPT2LMHeadModel(cfg)


def make_llama():
  cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                    attention_bias=False, hidden_act="silu")
  return LlamaForCausalLM(cfg)


MODELS = {"gpt2": (make_gpt2, 1234), "llama": (make_llama, 5678)}


def is_norm(module):
  return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def reinit(model, seed):
  """Larger-than-default init, drawn in named_parameters order from one generator."""
  g = torch.Generator().manual_seed(seed)
  norm_params = set()
  for _, m in model.named_modules():
    if is_norm(m):
      norm_params.add(id(m.weight))
  with torch.no_grad():
    for _, p in model.named_parameters():  # tied parameters appear once
      noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
      if id(p) in norm_params:
        p.copy_(1.0 + STD_NORM * noise)
      elif p.dim() >= 2:
        p.copy_(STD_WEIGHT * noise)
      else:
        p.copy_(STD_BIAS * noise)


def safetensors_listing(path):
  out = {}
  with safe_open(path, framework="pt") as f:
    for name in sorted(f.keys()):
      out[name] = list(f.get_slice(name).get_shape())
  return out


def dump_json(obj):
  """One top-level key a line; logits one [b, t] row of V values a line; tensors one a line."""
  lines = []
  for key, val in obj.items():
    if key == "logits":
      rows = [json.dumps(val[i:i + V]) for i in range(0, len(val), V)]
      text = "[\n  " + ",\n  ".join(r[1:-1] for r in rows) + "\n ]"
    elif key == "tensors":
      text = "{\n  " + ",\n  ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in val.items()) + "\n }"
    else:
      text = json.dumps(val)
    lines.append(f" {json.dumps(key)}: {text}")
  return "{\n" + ",\n".join(lines) + "\n}\n"


NOTES = {
    "gpt2": (
        "GPT2LMHeadModel, tied embeddings: model.safetensors has no lm_head.weight (the head is "
        "transformer.wte.weight) and no attn.bias / attn.masked_bias buffers. Names carry the "
        "'transformer.' prefix. Conv1D weights (c_attn, c_proj, c_fc) are stored [in, out]; "
        "c_attn's columns are q | k | v. gelu_new = tanh GELU. config.json omits "
        "tie_word_embeddings (default true) and has n_inner null (4 * n_embd) and bos/eos 50256 "
        "(outside the vocabulary, transformers' GPT-2 default)."),
    "llama": (
        "LlamaForCausalLM, untied head (lm_head.weight stored), GQA 4 query heads / 2 kv heads, "
        "head_dim 8, SiLU MLP, RMSNorm eps 1e-5, RoPE theta 1e4 with rotate_half (pairs i, i+D/2); "
        "no rotary_emb.inv_freq buffer in the file. nn.Linear weights are stored [out, in]."),
}


def build(arch, out_root):
  make, seed = MODELS[arch]
  torch.manual_seed(seed)
  model = make()
  reinit(model, seed)
  model.eval()
  g = torch.Generator().manual_seed(seed + 1)
  ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.long)
  with torch.no_grad():
    out = model(input_ids=ids, labels=ids)
  logits = out.logits.to(torch.float32)
  assert list(logits.shape) == [B, T, V], logits.shape

  out_dir = os.path.join(out_root, arch)
  os.makedirs(out_dir, exist_ok=True)
  for name in ("config.json", "generation_config.json", "model.safetensors", "golden.json"):
    path = os.path.join(out_dir, name)
    if os.path.exists(path):
      os.remove(path)
  model.save_pretrained(out_dir, safe_serialization=True)
  tensors = safetensors_listing(os.path.join(out_dir, "model.safetensors"))

  # Reload what was written and check it gives the same logits (the folder is self-consistent).
  reloaded = type(model).from_pretrained(out_dir)
  reloaded.eval()
  with torch.no_grad():
    again = reloaded(input_ids=ids).logits
  if not torch.equal(again, logits):
    sys.exit(f"{arch}: reloaded folder gives different logits "
             f"(max |diff| {float((again - logits).abs().max()):.3e})")

  golden = {
      "arch": arch,
      "transformers_version": transformers.__version__,
      "torch_version": torch.__version__,
      "seed": seed,
      "input_ids": ids.tolist(),
      "shape": [B, T, V],
      "logits": [float(x) for x in logits.reshape(-1).tolist()],
      "loss": float(out.loss),
      "tensors": tensors,
      "notes": (NOTES[arch] + " Init: every 2-D weight N(0, %g), every bias N(0, %g), norm "
                "weights 1 + N(0, %g), drawn from torch.Generator().manual_seed(seed) in "
                "named_parameters() order; input_ids from manual_seed(seed + 1). Logits: fp32 "
                "eval-mode forward; loss: HF's loss with labels = input_ids."
                % (STD_WEIGHT, STD_BIAS, STD_NORM)),
  }
  with open(os.path.join(out_dir, "golden.json"), "w") as f:
    f.write(dump_json(golden))

  std = float(logits.std())
  print(f"== {arch}: {out_dir}")
  for name in sorted(os.listdir(out_dir)):
    print(f"  {name:24s} {os.path.getsize(os.path.join(out_dir, name)):8d} bytes")
  print(f"  loss {golden['loss']:.6f} (ln V = {math.log(V):.4f}), logits std {std:.3f}, "
        f"max |logit| {float(logits.abs().max()):.3f}")
  print("  tensors in model.safetensors:")
  for name, shape in tensors.items():
    print(f"    {name:48s} {shape}")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--out", default=os.path.join(REPO, "tests", "golden", "hf"))
  ap.add_argument("--arch", choices=sorted(MODELS), action="append",
                  help="only this model (repeatable); default both")
  args = ap.parse_args(argv)
  torch.set_num_threads(1)
  print(f"transformers {transformers.__version__}, torch {torch.__version__}")
  for arch in args.arch or sorted(MODELS):
    build(arch, args.out)


if __name__ == "__main__":
  main()
