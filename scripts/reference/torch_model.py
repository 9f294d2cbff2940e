"""Independent PyTorch reference of kumiko's two model families (gpt2, llama).

Written from the weights-file specification, not from kumiko's C++. Run with /usr/bin/python3
(Debian torch 1.13); the pyenv python3 first on PATH has no torch.

The model is functional: parameters live in a dict {logical name: tensor} and `forward` /
`loss_fn` take that dict, so the same code serves float64 golden values and fp32 benchmarks.

Weights file (HDF5): root attrs format="kumiko-weights", format_version=1; /config (string,
effective INI text); /model/<name> float32 with logical shapes; optional /batch/inputs and
/batch/targets int32 [B, T].
"""
import configparser
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

FORMAT_NAME = "kumiko-weights"
FORMAT_VERSION = 1

# 2-D weights of linear layers: the only tensors that get weight decay.
_DECAY_SUFFIXES = (".qkv.weight", ".proj.weight", ".fc.weight", ".gate.weight", ".up.weight",
                   ".down.weight")


@dataclass
class ModelConfig:
  arch: str
  n_layers: int
  n_heads: int
  n_kv_heads: int  # already resolved (0 -> n_heads)
  d_model: int
  d_ff: int  # already resolved (0 -> 4 * d_model)
  vocab_size: int
  max_seq_len: int
  tie_embeddings: bool
  norm_eps: float
  rope_theta: float

  @property
  def head_dim(self):
    return self.d_model // self.n_heads


@dataclass
class TrainConfig:
  lr: float
  beta1: float
  beta2: float
  eps: float
  weight_decay: float
  grad_clip: float


def _strip_value(v):
  v = v.strip()
  if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
    v = v[1:-1]
  return v


def parse_ini(text):
  """Parse kumiko's INI text; '#' and ';' start comments (also inline)."""
  cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
  cp.read_string(text)
  return cp


def _get(cp, section, key, conv, default=None):
  if not cp.has_section(section) or not cp.has_option(section, key):
    if default is None:
      raise ValueError(f"config: missing key [{section}] {key}")
    return default
  raw = _strip_value(cp.get(section, key))
  if conv is bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"config: [{section}] {key} expected a boolean, found '{raw}'")
  try:
    return conv(raw)
  except ValueError:
    raise ValueError(f"config: [{section}] {key} expected {conv.__name__}, found '{raw}'") from None


def model_config_from_ini(cp):
  arch = _get(cp, "model", "arch", str)
  if arch not in ("gpt2", "llama"):
    raise ValueError(f"config: [model] arch expected gpt2|llama, found '{arch}'")
  n_heads = _get(cp, "model", "n_heads", int)
  n_kv = _get(cp, "model", "n_kv_heads", int, 0)
  d_model = _get(cp, "model", "d_model", int)
  d_ff = _get(cp, "model", "d_ff", int, 0)
  cfg = ModelConfig(
      arch=arch,
      n_layers=_get(cp, "model", "n_layers", int),
      n_heads=n_heads,
      n_kv_heads=n_kv if n_kv > 0 else n_heads,
      d_model=d_model,
      d_ff=d_ff if d_ff > 0 else 4 * d_model,
      vocab_size=_get(cp, "model", "vocab_size", int),
      max_seq_len=_get(cp, "model", "max_seq_len", int),
      tie_embeddings=_get(cp, "model", "tie_embeddings", bool, False if arch == "llama" else True),
      norm_eps=_get(cp, "model", "norm_eps", float, 1e-5),
      rope_theta=_get(cp, "model", "rope_theta", float, 10000.0),
  )
  if cfg.d_model % cfg.n_heads != 0:
    raise ValueError(f"config: d_model {cfg.d_model} not divisible by n_heads {cfg.n_heads}")
  if cfg.n_heads % cfg.n_kv_heads != 0:
    raise ValueError(f"config: n_heads {cfg.n_heads} not divisible by n_kv_heads {cfg.n_kv_heads}")
  if arch == "gpt2" and cfg.n_kv_heads != cfg.n_heads:
    raise ValueError("config: gpt2 expects n_kv_heads == n_heads (or 0)")
  if arch == "llama" and cfg.head_dim % 2 != 0:
    raise ValueError(f"config: llama head_dim {cfg.head_dim} must be even for RoPE")
  return cfg


def train_config_from_ini(cp):
  return TrainConfig(
      lr=_get(cp, "train", "lr", float),
      beta1=_get(cp, "train", "beta1", float, 0.9),
      beta2=_get(cp, "train", "beta2", float, 0.95),
      eps=_get(cp, "train", "eps", float, 1e-8),
      weight_decay=_get(cp, "train", "weight_decay", float, 0.0),
      grad_clip=_get(cp, "train", "grad_clip", float, 0.0),
  )


def expected_shapes(cfg):
  """Ordered dict {name: logical shape} of every parameter the config implies."""
  C, F_, V, D = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.head_dim
  hq, hkv = cfg.n_heads, cfg.n_kv_heads
  gpt2 = cfg.arch == "gpt2"
  s = {"embed.tokens.weight": (V, C)}
  if gpt2:
    s["embed.positions.weight"] = (cfg.max_seq_len, C)
  for i in range(cfg.n_layers):
    p = f"blocks.{i}."
    s[p + "norm1.weight"] = (C,)
    if gpt2:
      s[p + "norm1.bias"] = (C,)
    s[p + "attn.qkv.weight"] = ((hq + 2 * hkv) * D, C)
    if gpt2:
      s[p + "attn.qkv.bias"] = ((hq + 2 * hkv) * D,)
    s[p + "attn.proj.weight"] = (C, hq * D)
    if gpt2:
      s[p + "attn.proj.bias"] = (C,)
    s[p + "norm2.weight"] = (C,)
    if gpt2:
      s[p + "norm2.bias"] = (C,)
      s[p + "mlp.fc.weight"] = (F_, C)
      s[p + "mlp.fc.bias"] = (F_,)
      s[p + "mlp.proj.weight"] = (C, F_)
      s[p + "mlp.proj.bias"] = (C,)
    else:
      s[p + "mlp.gate.weight"] = (F_, C)
      s[p + "mlp.up.weight"] = (F_, C)
      s[p + "mlp.down.weight"] = (C, F_)
  s["final_norm.weight"] = (C,)
  if gpt2:
    s["final_norm.bias"] = (C,)
  if not cfg.tie_embeddings:
    s["head.weight"] = (V, C)
  return s


def is_decayed(name):
  return name == "head.weight" or name.endswith(_DECAY_SUFFIXES)


# ------------------------------------------------------------------------------------------------
# Reading the weights file


def _as_str(v):
  if isinstance(v, np.ndarray):
    v = v.reshape(-1)[0] if v.size == 1 else v
  if isinstance(v, (bytes, np.bytes_)):
    return v.decode("utf-8")
  return str(v)


def read_weights(path):
  """Returns (ini_text, {name: np.float32 array}, inputs or None, targets or None)."""
  import h5py
  with h5py.File(path, "r") as f:
    fmt = _as_str(f.attrs.get("format", "<missing>"))
    if fmt != FORMAT_NAME:
      raise ValueError(f"{path}: root attribute format expected '{FORMAT_NAME}', found '{fmt}'")
    ver = f.attrs.get("format_version", None)
    ver = int(np.asarray(ver).reshape(-1)[0]) if ver is not None else None
    if ver != FORMAT_VERSION:
      raise ValueError(f"{path}: format_version expected {FORMAT_VERSION}, found {ver}")
    if "config" not in f:
      raise ValueError(f"{path}: missing dataset /config (effective INI text)")
    text = _as_str(f["config"][()])
    if "model" not in f:
      raise ValueError(f"{path}: missing group /model")
    params = {}

    def visit(name, obj):
      if isinstance(obj, h5py.Dataset):
        params[name.replace("/", ".")] = np.asarray(obj[()], dtype=np.float32)

    f["model"].visititems(visit)
    inputs = targets = None
    if "batch" in f:
      inputs = np.asarray(f["batch/inputs"][()], dtype=np.int64)
      targets = np.asarray(f["batch/targets"][()], dtype=np.int64)
  return text, params, inputs, targets


def check_params(cfg, params, path="weights"):
  want = expected_shapes(cfg)
  missing = [n for n in want if n not in params]
  extra = [n for n in params if n not in want]
  if missing:
    raise ValueError(f"{path}: missing tensors under /model: {', '.join(missing[:5])}"
                     + (" ..." if len(missing) > 5 else ""))
  if extra:
    raise ValueError(f"{path}: unexpected tensors under /model: {', '.join(extra[:5])}"
                     + (" ..." if len(extra) > 5 else ""))
  for n, shape in want.items():
    if tuple(params[n].shape) != tuple(shape):
      raise ValueError(f"{path}: /model/{n} expected shape {list(shape)}, "
                       f"found {list(params[n].shape)}")


def to_torch(params, dtype=torch.float64, requires_grad=True):
  return {n: torch.tensor(v, dtype=dtype).requires_grad_(requires_grad) for n, v in params.items()}


def random_params(cfg, seed=0, std=0.02, dtype=torch.float32, requires_grad=True):
  """Random small init (normal(0, std) weights, norm weights 1, biases 0): for benchmarks/tests."""
  g = torch.Generator().manual_seed(seed)
  out = {}
  for n, shape in expected_shapes(cfg).items():
    if ".norm" in n or n.startswith("final_norm"):
      t = torch.ones(shape) if n.endswith("weight") else torch.zeros(shape)
    elif n.endswith(".bias"):
      t = torch.zeros(shape)
    else:
      t = torch.randn(shape, generator=g) * std
    out[n] = t.to(dtype).requires_grad_(requires_grad)
  return out


# ------------------------------------------------------------------------------------------------
# Building blocks (explicit formulas; `fast=True` swaps in torch's fused ops for benchmarks)


def layer_norm(x, w, b, eps):
  mean = x.mean(dim=-1, keepdim=True)
  var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance
  return (x - mean) / torch.sqrt(var + eps) * w + b


def rms_norm(x, w, eps):
  return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def gelu_tanh(x):
  return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def rope_cos_sin(T, D, theta, dtype):
  """cos, sin [T, D] in HF layout: frequencies duplicated over the two halves."""
  inv_freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # [D/2]
  pos = torch.arange(T, dtype=torch.float64)
  freqs = torch.outer(pos, inv_freq)  # [T, D/2]
  emb = torch.cat([freqs, freqs], dim=-1)  # [T, D]
  return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
  h = x.shape[-1] // 2
  return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
  """x [B, H, T, D]; cos/sin [T, D]."""
  return x * cos + rotate_half(x) * sin


def causal_attention(q, k, v, n_rep):
  """q [B, Hq, T, D], k/v [B, Hkv, T, D]; query head h reads kv head h // n_rep."""
  B, Hq, T, D = q.shape
  kv_index = torch.arange(Hq) // n_rep  # [Hq]
  k = k[:, kv_index]  # [B, Hq, T, D]
  v = v[:, kv_index]
  scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # [B, Hq, T, T]
  mask = torch.ones(T, T, dtype=torch.bool).triu(1)  # True above the diagonal = future
  scores = scores.masked_fill(mask, float("-inf"))
  return torch.softmax(scores, dim=-1) @ v  # [B, Hq, T, D]


def _attention_block(cfg, p, pre, h, rope):
  B, T, C = h.shape
  D, hq, hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
  qkv = F.linear(h, p[pre + "qkv.weight"], p.get(pre + "qkv.bias"))  # [B, T, (hq+2hkv)*D]
  q, k, v = qkv.split([hq * D, hkv * D, hkv * D], dim=-1)
  q = q.view(B, T, hq, D).transpose(1, 2)  # [B, hq, T, D]
  k = k.view(B, T, hkv, D).transpose(1, 2)  # [B, hkv, T, D]
  v = v.view(B, T, hkv, D).transpose(1, 2)
  if rope is not None:
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
  y = causal_attention(q, k, v, hq // hkv)  # [B, hq, T, D]
  y = y.transpose(1, 2).reshape(B, T, hq * D)
  return F.linear(y, p[pre + "proj.weight"], p.get(pre + "proj.bias"))  # [B, T, C]


def forward(cfg, p, ids, fast=False):
  """ids [B, T] int64 -> logits [B, T, V]."""
  B, T = ids.shape
  if T > cfg.max_seq_len:
    raise ValueError(f"sequence length {T} exceeds max_seq_len {cfg.max_seq_len}")
  dtype = p["embed.tokens.weight"].dtype
  gpt2 = cfg.arch == "gpt2"
  eps = cfg.norm_eps
  x = p["embed.tokens.weight"][ids]  # [B, T, C]
  if gpt2:
    x = x + p["embed.positions.weight"][:T]

  def norm(x, prefix):
    if gpt2:
      if fast:
        return F.layer_norm(x, (cfg.d_model,), p[prefix + "weight"], p[prefix + "bias"], eps)
      return layer_norm(x, p[prefix + "weight"], p[prefix + "bias"], eps)
    if fast and hasattr(F, "rms_norm"):  # torch >= 2.4: the fused kernel
      return F.rms_norm(x, (cfg.d_model,), p[prefix + "weight"], eps)
    return rms_norm(x, p[prefix + "weight"], eps)

  rope = None if gpt2 else rope_cos_sin(T, cfg.head_dim, cfg.rope_theta, dtype)
  for i in range(cfg.n_layers):
    b = f"blocks.{i}."
    x = x + _attention_block(cfg, p, b + "attn.", norm(x, b + "norm1."), rope)
    h = norm(x, b + "norm2.")  # [B, T, C]
    if gpt2:
      u = F.linear(h, p[b + "mlp.fc.weight"], p[b + "mlp.fc.bias"])  # [B, T, F]
      u = F.gelu(u, approximate="tanh") if fast else gelu_tanh(u)
      x = x + F.linear(u, p[b + "mlp.proj.weight"], p[b + "mlp.proj.bias"])
    else:
      g = F.linear(h, p[b + "mlp.gate.weight"])  # [B, T, F]
      u = F.linear(h, p[b + "mlp.up.weight"])  # [B, T, F]
      x = x + F.linear(F.silu(g) * u, p[b + "mlp.down.weight"])
  x = norm(x, "final_norm.")
  head = p["embed.tokens.weight"] if cfg.tie_embeddings else p["head.weight"]
  return x @ head.t()  # [B, T, V]


def loss_fn(cfg, p, inputs, targets, fast=False):
  logits = forward(cfg, p, inputs, fast=fast)
  return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_adamw(tc, params):
  """torch AdamW with weight decay only on the 2-D weights of linear layers."""
  decay = [t for n, t in params.items() if is_decayed(n)]
  no_decay = [t for n, t in params.items() if not is_decayed(n)]
  groups = [{"params": decay, "weight_decay": tc.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
  return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)
