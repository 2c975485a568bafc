"""Hugging Face ⇄ bigjax weights. Reads and writes `config.json` + safetensors; torch is not needed.

Supported so far: GPT-2 (`GPT2LMHeadModel`, `GPT2Model`). Every tensor of the checkpoint must be
used and every bigjax parameter must be filled: anything else is an error that names the tensor.
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath
import numpy as np

from bigjax.config import ConfigError, ModelConfig

_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
# Buffers some GPT-2 checkpoints carry that are not weights (causal masks).
_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")


def _read_safetensors(path: epath.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise ConfigError(f"{path}: no *.safetensors file (save the model with safe_serialization=True)")
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    tensors.update(load(f.read_bytes()))
  return tensors


def _gpt2_config(hf: dict[str, Any]) -> ModelConfig:
  act = hf.get("activation_function", "gelu_new")
  if act not in _GPT2_ACTIVATIONS:
    raise ConfigError(f"GPT-2 activation_function={act!r} is not supported; supported: {', '.join(_GPT2_ACTIVATIONS)}")
  for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                   ("reorder_and_upcast_attn", False)):
    if hf.get(flag, ok) != ok:
      raise ConfigError(f"GPT-2 {flag}={hf.get(flag)!r} is not supported (only {ok})")
  d = hf["n_embd"]
  return ModelConfig(family="decoder", vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["n_layer"],
                     num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d, max_len=hf["n_positions"],
                     layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=_GPT2_ACTIVATIONS[act],
                     use_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True))


def _gpt2_params(cfg: ModelConfig, t: dict[str, np.ndarray]) -> dict:
  prefix = "transformer." if any(k.startswith("transformer.") for k in t) else ""
  used: set[str] = set()

  def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
    key = prefix + name
    if key not in t:
      raise ConfigError(f"GPT-2 checkpoint is missing tensor {key!r}")
    if tuple(t[key].shape) != shape:
      raise ConfigError(f"GPT-2 tensor {key!r} has shape {tuple(t[key].shape)}, expected {shape}")
    used.add(key)
    return np.asarray(t[key], np.float32)

  d, h, f, hd = cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.kv_dim
  ln = lambda name: {"scale": get(f"{name}.weight", (d,)), "bias": get(f"{name}.bias", (d,))}
  params: dict[str, Any] = {
      "token_embed": {"embedding": get("wte.weight", (cfg.vocab_size, d))},
      "position_embed": {"embedding": get("wpe.weight", (cfg.max_len, d))},
      "ln_final": ln("ln_f"),
  }
  for i in range(cfg.num_layers):
    p = f"h.{i}"
    qkv_w = get(f"{p}.attn.c_attn.weight", (d, 3 * d))  # Conv1D: y = x @ W + b.
    qkv_b = get(f"{p}.attn.c_attn.bias", (3 * d,))
    attn = {}
    for j, name in enumerate(("query", "key", "value")):
      attn[name] = {"kernel": qkv_w[:, j * d:(j + 1) * d].reshape(d, h, hd),
                    "bias": qkv_b[j * d:(j + 1) * d].reshape(h, hd)}
    attn["out"] = {"kernel": get(f"{p}.attn.c_proj.weight", (d, d)).reshape(h, hd, d),
                   "bias": get(f"{p}.attn.c_proj.bias", (d,))}
    params[f"block_{i}"] = {
        "ln_attention": ln(f"{p}.ln_1"),
        "attention": attn,
        "ln_mlp": ln(f"{p}.ln_2"),
        "mlp": {"wi": {"kernel": get(f"{p}.mlp.c_fc.weight", (d, f)), "bias": get(f"{p}.mlp.c_fc.bias", (f,))},
                "wo": {"kernel": get(f"{p}.mlp.c_proj.weight", (f, d)), "bias": get(f"{p}.mlp.c_proj.bias", (d,))}},
    }
  if "lm_head.weight" in t:
    used.add("lm_head.weight")
    head = np.asarray(t["lm_head.weight"], np.float32)
    if cfg.tie_embeddings:
      if not np.array_equal(head, params["token_embed"]["embedding"]):
        raise ConfigError("GPT-2 config says tie_word_embeddings=True but lm_head.weight differs from wte.weight")
    else:
      params["lm_head"] = {"kernel": head.T}
  elif not cfg.tie_embeddings:
    raise ConfigError("GPT-2 checkpoint is missing tensor 'lm_head.weight' (tie_word_embeddings=False)")
  unused = sorted(k for k in t if k not in used and not k.endswith(_GPT2_BUFFERS))
  if unused:
    raise ConfigError(f"GPT-2 checkpoint has tensors bigjax does not use: {', '.join(unused[:5])}")
  return params


def from_hf(path: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) from a Hugging Face model directory (config.json + safetensors)."""
  root = epath.Path(path)
  if not (root / "config.json").exists():
    raise ConfigError(f"{path}: not a Hugging Face model directory (no config.json)")
  hf = json.loads((root / "config.json").read_text())
  model_type = hf.get("model_type")
  if model_type != "gpt2":
    raise ConfigError(f"{path}: model_type={model_type!r} is not supported yet; supported: 'gpt2'")
  cfg = _gpt2_config(hf)
  return cfg, _gpt2_params(cfg, _read_safetensors(root))


def to_hf(cfg: ModelConfig, params: dict, out_dir: str) -> None:
  """Writes a directory that `transformers.GPT2LMHeadModel.from_pretrained` loads."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  if cfg.family != "decoder" or not cfg.use_bias or cfg.head_dim not in (0, cfg.d_model // cfg.num_heads):
    raise ConfigError("to_hf: only GPT-2-shaped decoders (biases, head_dim = d_model / num_heads) convert so far")
  act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.activation]
  d = cfg.d_model
  p = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  t: dict[str, np.ndarray] = {
      "transformer.wte.weight": p(params["token_embed"]["embedding"]),
      "transformer.wpe.weight": p(params["position_embed"]["embedding"]),
      "transformer.ln_f.weight": p(params["ln_final"]["scale"]),
      "transformer.ln_f.bias": p(params["ln_final"]["bias"]),
  }
  for i in range(cfg.num_layers):
    b, h = params[f"block_{i}"], f"transformer.h.{i}"
    a = b["attention"]
    t[f"{h}.ln_1.weight"], t[f"{h}.ln_1.bias"] = p(b["ln_attention"]["scale"]), p(b["ln_attention"]["bias"])
    t[f"{h}.ln_2.weight"], t[f"{h}.ln_2.bias"] = p(b["ln_mlp"]["scale"]), p(b["ln_mlp"]["bias"])
    t[f"{h}.attn.c_attn.weight"] = p(np.concatenate([np.reshape(a[n]["kernel"], (d, d))
                                                     for n in ("query", "key", "value")], 1))
    t[f"{h}.attn.c_attn.bias"] = p(np.concatenate([np.reshape(a[n]["bias"], (d,)) for n in ("query", "key", "value")]))
    t[f"{h}.attn.c_proj.weight"] = p(np.reshape(a["out"]["kernel"], (d, d)))
    t[f"{h}.attn.c_proj.bias"] = p(a["out"]["bias"])
    t[f"{h}.mlp.c_fc.weight"], t[f"{h}.mlp.c_fc.bias"] = p(b["mlp"]["wi"]["kernel"]), p(b["mlp"]["wi"]["bias"])
    t[f"{h}.mlp.c_proj.weight"], t[f"{h}.mlp.c_proj.bias"] = p(b["mlp"]["wo"]["kernel"]), p(b["mlp"]["wo"]["bias"])
  if not cfg.tie_embeddings:
    t["lm_head.weight"] = p(np.asarray(params["lm_head"]["kernel"]).T)
  hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
        "n_embd": d, "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.d_ff,
        "n_positions": cfg.max_len, "layer_norm_epsilon": cfg.layer_norm_eps, "activation_function": act,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": cfg.tie_embeddings}
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
  (out / "model.safetensors").write_bytes(save(t, metadata={"format": "pt"}))
