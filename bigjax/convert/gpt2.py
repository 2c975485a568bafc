"""GPT-2 (`GPT2LMHeadModel`, `GPT2Model`) ⇄ bigjax decoder (learned positions, LayerNorm, biases)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bigjax.config import ConfigError, ModelConfig
from bigjax.convert.common import Tensors

_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # Causal-mask buffers some checkpoints carry.


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
  act = hf.get("activation_function", "gelu_new")
  if act not in _ACTIVATIONS:
    raise ConfigError(f"GPT-2 activation_function={act!r} is not supported; supported: {', '.join(_ACTIVATIONS)}")
  for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                   ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
    if hf.get(flag, ok) != ok:
      raise ConfigError(f"GPT-2 {flag}={hf.get(flag)!r} is not supported (only {ok})")
  d = hf["n_embd"]
  return ModelConfig(family="decoder", vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["n_layer"],
                     num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d, max_len=hf["n_positions"],
                     layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=_ACTIVATIONS[act],
                     use_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True))


def params_from_hf(cfg: ModelConfig, t: Tensors, hf: dict[str, Any]) -> dict:
  del hf
  t.ignore_suffixes(*_BUFFERS)
  prefix = "transformer." if t.has_prefix("transformer.") else ""
  get = lambda name, shape: t.get(prefix + name, shape)
  d, h, f, hd = cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.kv_dim
  ln = lambda name: {"scale": get(f"{name}.weight", (d,)), "bias": get(f"{name}.bias", (d,))}
  blocks = {}
  for i in range(cfg.num_layers):
    p = f"h.{i}"
    qkv_w = get(f"{p}.attn.c_attn.weight", (d, 3 * d))  # Conv1D: y = x @ W + b.
    qkv_b = get(f"{p}.attn.c_attn.bias", (3 * d,))
    attn = {name: {"kernel": qkv_w[:, j * d:(j + 1) * d].reshape(d, h, hd),
                   "bias": qkv_b[j * d:(j + 1) * d].reshape(h, hd)}
            for j, name in enumerate(("query", "key", "value"))}
    attn["out"] = {"kernel": get(f"{p}.attn.c_proj.weight", (d, d)).reshape(h, hd, d),
                   "bias": get(f"{p}.attn.c_proj.bias", (d,))}
    blocks[f"block_{i}"] = {
        "ln_attention": ln(f"{p}.ln_1"),
        "attention": attn,
        "ln_mlp": ln(f"{p}.ln_2"),
        "mlp": {"wi": {"kernel": get(f"{p}.mlp.c_fc.weight", (d, f)), "bias": get(f"{p}.mlp.c_fc.bias", (f,))},
                "wo": {"kernel": get(f"{p}.mlp.c_proj.weight", (f, d)), "bias": get(f"{p}.mlp.c_proj.bias", (d,))}},
    }
  params: dict[str, Any] = {
      "token_embed": {"embedding": get("wte.weight", (cfg.vocab_size, d))},
      "position_embed": {"embedding": get("wpe.weight", (cfg.max_len, d))},
      "decoder": blocks,
      "ln_final": ln("ln_f"),
  }
  if "lm_head.weight" in t:
    head = t.get("lm_head.weight", (cfg.vocab_size, d))
    if cfg.tie_embeddings:
      if not np.array_equal(head, params["token_embed"]["embedding"]):
        raise ConfigError("GPT-2 config says tie_word_embeddings=True but lm_head.weight differs from wte.weight")
    else:
      params["lm_head"] = {"kernel": head.T}
  elif not cfg.tie_embeddings:
    raise ConfigError("GPT-2 checkpoint is missing tensor 'lm_head.weight' (tie_word_embeddings=False)")
  return params


def to_hf(cfg: ModelConfig, params: dict) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """GPT2LMHeadModel config and tensors."""
  if (not cfg.use_bias or cfg.head_dim not in (0, cfg.d_model // cfg.num_heads) or cfg.norm != "layernorm"
      or cfg.gated_mlp or cfg.norm_position != "pre" or cfg.activation == "silu"):
    raise ConfigError("to_hf: this decoder is not GPT-2-shaped (GPT-2 needs biases, LayerNorm, pre-norm, "
                      "an ungated gelu/relu MLP and head_dim = d_model / num_heads)")
  act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.activation]
  d = cfg.d_model
  t: dict[str, np.ndarray] = {
      "transformer.wte.weight": params["token_embed"]["embedding"],
      "transformer.wpe.weight": params["position_embed"]["embedding"],
      "transformer.ln_f.weight": params["ln_final"]["scale"],
      "transformer.ln_f.bias": params["ln_final"]["bias"],
  }
  for i in range(cfg.num_layers):
    b, h = params["decoder"][f"block_{i}"], f"transformer.h.{i}"
    a = b["attention"]
    t[f"{h}.ln_1.weight"], t[f"{h}.ln_1.bias"] = b["ln_attention"]["scale"], b["ln_attention"]["bias"]
    t[f"{h}.ln_2.weight"], t[f"{h}.ln_2.bias"] = b["ln_mlp"]["scale"], b["ln_mlp"]["bias"]
    t[f"{h}.attn.c_attn.weight"] = np.concatenate([np.reshape(a[n]["kernel"], (d, d))
                                                   for n in ("query", "key", "value")], 1)
    t[f"{h}.attn.c_attn.bias"] = np.concatenate([np.reshape(a[n]["bias"], (d,)) for n in ("query", "key", "value")])
    t[f"{h}.attn.c_proj.weight"] = np.reshape(a["out"]["kernel"], (d, d))
    t[f"{h}.attn.c_proj.bias"] = a["out"]["bias"]
    t[f"{h}.mlp.c_fc.weight"], t[f"{h}.mlp.c_fc.bias"] = b["mlp"]["wi"]["kernel"], b["mlp"]["wi"]["bias"]
    t[f"{h}.mlp.c_proj.weight"], t[f"{h}.mlp.c_proj.bias"] = b["mlp"]["wo"]["kernel"], b["mlp"]["wo"]["bias"]
  if not cfg.tie_embeddings:
    t["lm_head.weight"] = np.asarray(params["lm_head"]["kernel"]).T
  hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
        "n_embd": d, "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.d_ff,
        "n_positions": cfg.max_len, "layer_norm_epsilon": cfg.layer_norm_eps, "activation_function": act,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": cfg.tie_embeddings}
  return hf, t
