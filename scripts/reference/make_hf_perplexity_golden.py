#!/usr/bin/python3
"""Write tests/golden/hf/llama-shakespeare: a small Llama trained by `transformers` on the
bundled Shakespeare corpus, and the validation loss transformers gives it on exactly the
windows kumiko evaluates.

Usage (the venv of tests/golden/README.md, "Hugging Face goldens"; from anywhere):
    /tmp/hfvenv/bin/python scripts/reference/make_hf_perplexity_golden.py KUMIKO [OUT]

KUMIKO is the kumiko binary (e.g. build/bin/kumiko), OUT the output folder (default
tests/golden/hf/llama-shakespeare). Steps:

1. `KUMIKO prepare --input data/tinyshakespeare.txt --vocab-size 512 --out TMP` (run in the
   repository root; SentencePiece training is deterministic, docs/data-format.md). The train
   and val token shards are read here from the format in docs/data-format.md (256-byte
   header, little-endian uint16/uint32 tokens); the SHA-256 of TMP/tokenizer.model is
   recorded, and checked against the one stamped into every shard header.
2. A seeded LlamaForCausalLM (V=512, C=48, F=96, 2 layers, 4 query / 2 kv heads,
   64 positions, untied head) is trained TRAIN_STEPS steps of AdamW (lr 3e-3, otherwise
   torch's defaults, constant lr, no clipping) on batches of 16 windows of 64 + 1 train
   tokens at random offsets, fp32, one thread.
3. Validation loss on kumiko's evaluation windows for seq_len T = 64, eval_batches = 2,
   global_batch = 8 (docs/data-format.md, "Sampling order"): N = 16 sequences, sequence g
   reads val tokens [w*T, w*T + T + 1) with w = g mod W_val, W_val = (N_val - 1) // T;
   inputs are the first T tokens, targets the last T. val_loss is the mean next-token
   cross-entropy over all N*T targets, computed in float64 from the fp32 logits of the
   eval-mode forward.
4. save_pretrained(OUT, safe_serialization=True) (config.json, generation_config.json,
   model.safetensors, F32) and OUT/golden.json.

Deterministic: one thread, explicit seeds, no timestamps or temporary paths in the output
(running it twice on one machine gives identical files).
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "tests", "golden", "hf", "llama-shakespeare")

# Prepare arguments (paths relative to the repository root); --out is added.
# --threads is pinned: SentencePiece trains a different model with another thread count.
PREPARE_ARGS = ["--input", "data/tinyshakespeare.txt", "--vocab-size", "512", "--threads", "2"]
VOCAB = 512
SEQ_LEN, EVAL_BATCHES, GLOBAL_BATCH = 64, 2, 8
SEED = 4242
TRAIN_STEPS, TRAIN_BATCH, LR = 300, 16, 3e-3

MAGIC = b"KUMIKOTK"
HEADER_SIZE = 256
SPLITS = {"train": 0, "val": 1}


def read_shard(path, split, index, tokenizer_digest):
  """One token shard (docs/data-format.md, "Token shard format (version 1)") as int64."""
  with open(path, "rb") as f:
    header = f.read(HEADER_SIZE)
  if len(header) != HEADER_SIZE:
    sys.exit(f"{path}: shorter than the {HEADER_SIZE}-byte header")
  magic = header[0:8]
  version, width, n, vocab, header_size = struct.unpack_from("<IIQII", header, 8)
  digest = header[32:64]
  file_split, file_index = struct.unpack_from("<II", header, 64)
  problems = []
  if magic != MAGIC:
    problems.append(f"magic {magic!r}")
  if version != 1:
    problems.append(f"version {version}")
  if width not in (2, 4):
    problems.append(f"token width {width}")
  if header_size != HEADER_SIZE:
    problems.append(f"header size {header_size}")
  if vocab != VOCAB:
    problems.append(f"vocabulary {vocab} (expected {VOCAB})")
  if digest != tokenizer_digest:
    problems.append("tokenizer SHA-256 differs from tokenizer.model")
  if file_split != SPLITS[split] or file_index != index:
    problems.append(f"split/index {file_split}/{file_index} (expected {SPLITS[split]}/{index})")
  if any(header[72:HEADER_SIZE]):
    problems.append("reserved header bytes not zero")
  if not problems and os.path.getsize(path) != HEADER_SIZE + n * width:
    problems.append(f"size {os.path.getsize(path)} != {HEADER_SIZE} + {n} * {width}")
  if problems:
    sys.exit(f"{path}: " + "; ".join(problems))
  tokens = np.fromfile(path, dtype="<u2" if width == 2 else "<u4", offset=HEADER_SIZE).astype(np.int64)
  if tokens.size != n:
    sys.exit(f"{path}: {tokens.size} tokens, header says {n}")
  if tokens.size and int(tokens.max()) >= vocab:
    sys.exit(f"{path}: token {int(tokens.max())} >= vocabulary {vocab}")
  return tokens


def read_split(folder, split, tokenizer_digest):
  """The concatenation of SPLIT_000000.bin, SPLIT_000001.bin, ... in index order."""
  parts = []
  while True:
    path = os.path.join(folder, f"{split}_{len(parts):06d}.bin")
    if not os.path.exists(path):
      break
    parts.append(read_shard(path, split, len(parts), tokenizer_digest))
  if not parts:
    sys.exit(f"{folder}: no {split} shards")
  return np.concatenate(parts)


def prepare(kumiko, tmp):
  out = os.path.join(tmp, "data")
  cmd = [kumiko, "prepare", *PREPARE_ARGS, "--out", out]
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  with open(os.path.join(out, "tokenizer.model"), "rb") as f:
    digest = hashlib.sha256(f.read()).digest()
  train = read_split(out, "train", digest)
  val = read_split(out, "val", digest)
  return train, val, digest.hex()


def make_model():
  cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ_LEN,
                    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                    attention_bias=False, hidden_act="silu")
  torch.manual_seed(SEED)
  return LlamaForCausalLM(cfg)


def train(model, tokens):
  """TRAIN_STEPS AdamW steps on TRAIN_BATCH windows of SEQ_LEN + 1 tokens at random offsets."""
  data = torch.from_numpy(tokens)
  g = torch.Generator().manual_seed(SEED + 1)
  opt = torch.optim.AdamW(model.parameters(), lr=LR)
  offsets = torch.arange(SEQ_LEN + 1)
  model.train()
  loss = None
  for step in range(TRAIN_STEPS):
    starts = torch.randint(0, data.numel() - SEQ_LEN, (TRAIN_BATCH,), generator=g)
    batch = data[starts[:, None] + offsets[None, :]]
    logits = model(input_ids=batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if step % 50 == 0 or step == TRAIN_STEPS - 1:
      print(f"  step {step:4d} loss {float(loss):.4f}", flush=True)
  model.eval()
  return float(loss)


def eval_windows(val):
  """kumiko's evaluation batch: N = eval_batches * global_batch sequences, window g mod W."""
  n = EVAL_BATCHES * GLOBAL_BATCH
  w_val = (val.size - 1) // SEQ_LEN
  if w_val == 0:
    sys.exit("the val split is shorter than one window")
  windows = np.stack([val[(g % w_val) * SEQ_LEN:(g % w_val) * SEQ_LEN + SEQ_LEN + 1] for g in range(n)])
  return torch.from_numpy(windows), w_val


def val_loss(model, windows):
  with torch.no_grad():
    logits = model(input_ids=windows[:, :-1]).logits  # fp32 [N, T, V]
  targets = windows[:, 1:].reshape(-1)
  lp = torch.log_softmax(logits.reshape(-1, VOCAB).to(torch.float64), dim=-1)
  loss64 = float(-lp[torch.arange(targets.numel()), targets].mean())
  loss32 = float(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets))
  if abs(loss64 - loss32) > 1e-5 * loss64:
    sys.exit(f"float64 loss {loss64} and fp32 cross_entropy {loss32} disagree")
  return loss64


def dump_json(obj):
  return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items()) + "\n}\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("kumiko", help="the kumiko binary")
  ap.add_argument("out", nargs="?", default=DEFAULT_OUT, help="output folder (default %(default)s)")
  args = ap.parse_args(argv)
  kumiko = os.path.abspath(args.kumiko)
  torch.set_num_threads(1)
  torch.use_deterministic_algorithms(True)
  print(f"transformers {transformers.__version__}, torch {torch.__version__}")

  with tempfile.TemporaryDirectory(prefix="kumiko-hf-ppl-") as tmp:
    train_tokens, val, tokenizer_sha = prepare(kumiko, tmp)
  print(f"  train {train_tokens.size} tokens, val {val.size} tokens, tokenizer sha256 {tokenizer_sha}")

  model = make_model()
  final_train_loss = train(model, train_tokens)
  windows, w_val = eval_windows(val)
  loss = val_loss(model, windows)

  out = os.path.abspath(args.out)
  if os.path.isdir(out):
    shutil.rmtree(out)
  os.makedirs(out)
  model.save_pretrained(out, safe_serialization=True)
  # The folder must give the same loss as the model in memory.
  reloaded = LlamaForCausalLM.from_pretrained(out)
  reloaded.eval()
  again = val_loss(reloaded, windows)
  if again != loss:
    sys.exit(f"reloaded folder gives val_loss {again!r}, the trained model {loss!r}")

  golden = {
      "val_loss": loss,
      "seq_len": SEQ_LEN,
      "eval_batches": EVAL_BATCHES,
      "global_batch": GLOBAL_BATCH,
      "windows": EVAL_BATCHES * GLOBAL_BATCH,
      "val_windows": w_val,
      "val_tokens": int(val.size),
      "train_tokens": int(train_tokens.size),
      "tokenizer_sha256": tokenizer_sha,
      "prepare": PREPARE_ARGS,
      "transformers_version": transformers.__version__,
      "torch_version": torch.__version__,
      "seed": SEED,
      "train_steps": TRAIN_STEPS,
      "final_train_loss": final_train_loss,
      "notes": ("LlamaForCausalLM(vocab 512, hidden 48, intermediate 96, 2 layers, 4 heads, 2 kv heads, "
                "64 positions, rms_norm_eps 1e-5, rope_theta 1e4, untied head), transformers' default "
                "init after torch.manual_seed(seed); trained train_steps steps of torch.optim.AdamW(lr 3e-3, "
                "otherwise defaults), constant lr, no clipping, batches of 16 windows of 65 train tokens at "
                "offsets from torch.Generator().manual_seed(seed + 1), fp32, one thread. val_loss: mean "
                "next-token cross-entropy (float64, from the fp32 eval-mode logits) over the 16 * 64 "
                "targets of kumiko's evaluation windows: sequence g reads val tokens [w*64, w*64 + 65), "
                "w = g mod val_windows. prepare: the arguments of `kumiko prepare`, run in the repository "
                "root with --out a temporary folder."),
  }
  with open(os.path.join(out, "golden.json"), "w") as f:
    f.write(dump_json(golden))

  total = 0
  print(f"== {out}")
  for name in sorted(os.listdir(out)):
    size = os.path.getsize(os.path.join(out, name))
    total += size
    print(f"  {name:24s} {size:8d} bytes")
  print(f"  total {total} bytes")
  print(f"  val_loss {loss:.8f} (ppl {math.exp(loss):.3f}, ln V = {math.log(VOCAB):.4f}), "
        f"final train loss {final_train_loss:.4f}, {w_val} val windows")
  if total >= 600 * 1024:
    sys.exit(f"{out}: {total} bytes, above the 600 KB budget")


if __name__ == "__main__":
  main()
