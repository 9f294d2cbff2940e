#!/usr/bin/python3
"""Check that `transformers` loads a Hugging Face folder and reproduces given logits.

Usage: /tmp/hfvenv/bin/python scripts/reference/check_hf_export.py DIR LOGITS_JSON [--tol 1e-5]

DIR is loaded with AutoModelForCausalLM.from_pretrained(DIR) (no custom code, fp32, eval
mode, eager attention); the input_ids of LOGITS_JSON are run through it and its logits are
compared with the JSON's. LOGITS_JSON holds (the layout of tests/golden/hf/*/golden.json):
  input_ids  [[...], ...]   B rows of T token ids
  shape      [B, T, V]
  logits     flat row-major list of B*T*V numbers (a nested [B][T][V] list works too)

Exit codes: 0 OK (max |diff| / max |logit| <= tol), 1 mismatch (the worst entry is printed)
or a folder transformers reports missing weights for, 2 bad arguments or JSON, 77 torch or
transformers not installed (skip).
"""
import argparse
import json
import sys


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("dir")
  ap.add_argument("logits_json")
  ap.add_argument("--tol", type=float, default=1e-5, help="bound on max |diff| / max |logit|")
  args = ap.parse_args(argv)

  try:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
  except ImportError as e:
    print("SKIP: torch and transformers are not installed (scripts/reference/README or docs)")
    print(f"  ({e}; see tests/golden/README.md, 'Hugging Face goldens')", file=sys.stderr)
    return 77

  try:
    with open(args.logits_json) as f:
      ref = json.load(f)
    ids = torch.tensor(ref["input_ids"], dtype=torch.long)
    shape = [int(x) for x in ref["shape"]]
    want = torch.tensor(ref["logits"], dtype=torch.float64).reshape(-1)
  except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
    print(f"error: {args.logits_json}: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  if ids.dim() != 2 or list(ids.shape) != shape[:2] or len(shape) != 3:
    print(f"error: {args.logits_json}: input_ids {list(ids.shape)} do not match shape {shape}",
          file=sys.stderr)
    return 2
  if want.numel() != shape[0] * shape[1] * shape[2]:
    print(f"error: {args.logits_json}: {want.numel()} logits for shape {shape}", file=sys.stderr)
    return 2
  want = want.view(shape)

  torch.set_num_threads(1)
  model, info = AutoModelForCausalLM.from_pretrained(
      args.dir, torch_dtype=torch.float32, trust_remote_code=False, attn_implementation="eager",
      output_loading_info=True)
  model.eval()
  print(f"loaded {args.dir}: {type(model).__name__} (transformers {transformers.__version__}, "
        f"torch {torch.__version__})")
  for key in ("unexpected_keys", "mismatched_keys", "error_msgs"):
    if info.get(key):
      print(f"  note: {key}: {info[key]}")
  if info.get("missing_keys"):
    print(f"FAIL: transformers found no weights for {info['missing_keys']} "
          "(they would be random)")
    return 1

  with torch.no_grad():
    got = model(input_ids=ids).logits.to(torch.float64)
  if list(got.shape) != shape:
    print(f"FAIL: the model gives logits of shape {list(got.shape)}, the JSON {shape}")
    return 1

  diff = (got - want).abs()
  scale = float(want.abs().max())
  worst = int(diff.reshape(-1).argmax())
  b, rem = divmod(worst, shape[1] * shape[2])
  t, v = divmod(rem, shape[2])
  max_diff = float(diff.max())
  rel = max_diff / scale if scale > 0 else max_diff
  summary = f"max |diff| {max_diff:.3e}, max |logit| {scale:.4f}, ratio {rel:.3e} (tol {args.tol:g})"
  if not torch.isfinite(got).all():
    print(f"FAIL: the model's logits are not all finite; {summary}")
    return 1
  if rel <= args.tol:
    print(f"OK: {shape[0]}x{shape[1]}x{shape[2]} logits match; {summary}")
    return 0
  print(f"FAIL: logits differ; {summary}")
  print(f"  worst entry [b={b}, t={t}, v={v}] (input id {int(ids[b, t])}): "
        f"transformers {float(got[b, t, v]):.8g}, json {float(want[b, t, v]):.8g}")
  return 1


if __name__ == "__main__":
  sys.exit(main())
