"""T5 (`T5ForConditionalGeneration`, v1.0 and v1.1) ⇄ bigjax encoder_decoder.

Relative-position buckets (one bias table per stack, in block 0), RMSNorm without bias, no biases, no
attention logit scaling. v1.0 ties the output layer to the shared embedding and scales the decoder
output by d_model**-0.5; v1.1 (`tie_word_embeddings: false`, or transformers 5's
`scale_decoder_outputs: false`) has its own `lm_head.weight` and no scaling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bigjax.config import ConfigError, ModelConfig
from bigjax.convert.common import Tensors

_ARCHITECTURES = ("T5ForConditionalGeneration", "T5WithLMHeadModel")  # The second is the old name.
# transformers' activation name (the part of feed_forward_proj after "gated-") → bigjax's.
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu", "swish": "silu"}
# bigjax (activation, gated) → feed_forward_proj. transformers reads "gated-gelu" as gelu_new (tanh).
_FEED_FORWARD = {("relu", False): "relu", ("gelu", False): "gelu", ("gelu_tanh", False): "gelu_new",
                 ("silu", False): "silu", ("relu", True): "gated-relu", ("gelu", True): "gated-gelu_python",
                 ("gelu_tanh", True): "gated-gelu", ("silu", True): "gated-silu"}
# Old checkpoints carry a cross-attention bias table that T5 never uses (transformers ignores it too).
_UNUSED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def activation_from_hf(proj: str) -> tuple[str, bool]:
  """(bigjax activation, gated_mlp) for a T5 `feed_forward_proj` such as "relu" or "gated-gelu"."""
  parts = proj.split("-")
  gated = len(parts) == 2 and parts[0] == "gated"
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]
  if (len(parts) != 1 and not gated) or act not in _ACTIVATIONS:
    supported = sorted(set(_ACTIVATIONS) | {f"gated-{a}" for a in _ACTIVATIONS})
    raise ConfigError(f"T5 feed_forward_proj={proj!r} is not supported; supported: {', '.join(supported)}")
  return _ACTIVATIONS[act], gated


def is_tied(hf: dict[str, Any]) -> bool:
  """v1.0 style (output layer = shared embedding, decoder output scaled by d_model**-0.5)?

  transformers 5 always writes `tie_word_embeddings: true` for T5 and keeps the v1.1 choice in
  `scale_decoder_outputs: false`; older checkpoints say `tie_word_embeddings: false`.
  """
  return hf.get("tie_word_embeddings") is not False and hf.get("scale_decoder_outputs") is not False


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
  """The ModelConfig of a T5 config.json (transformers' defaults for absent keys). Only the LM head
  model converts: the others lack the decoder or the output layer bigjax's encoder_decoder has."""
  archs = hf.get("architectures") or [_ARCHITECTURES[0]]
  if any(a not in _ARCHITECTURES for a in archs):
    raise ConfigError(f"T5 architectures={archs!r} is not supported; supported: {', '.join(_ARCHITECTURES)}")
  activation, gated = activation_from_hf(hf.get("feed_forward_proj", "relu"))
  layers = hf.get("num_layers", 6)
  decoder_layers = hf.get("num_decoder_layers") or layers
  return ModelConfig(
      family="encoder_decoder", vocab_size=hf.get("vocab_size", 32128), d_model=hf.get("d_model", 512),
      head_dim=hf.get("d_kv", 64), d_ff=hf.get("d_ff", 2048), num_heads=hf.get("num_heads", 8),
      num_layers=layers, num_decoder_layers=0 if decoder_layers == layers else decoder_layers,
      relative_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_max_distance=hf.get("relative_attention_max_distance", 128),
      layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6), positions="relative", norm="rmsnorm",
      use_bias=False, activation=activation, gated_mlp=gated, tie_embeddings=is_tied(hf), max_len=512,
      init_std=1.0, dropout_rate=0.0)


def _linear(t: Tensors, name: str, n_in: int, n_out: int) -> np.ndarray:
  """A torch Linear weight `[out, in]` as a bigjax kernel `[in, out]`."""
  return t.get(name, (n_out, n_in)).T


def _attention(cfg: ModelConfig, t: Tensors, p: str) -> dict:
  """q/k/v `[d, heads, d_kv]` and o `[heads, d_kv, d]` of the attention at prefix `p`."""
  d, h, k = cfg.d_model, cfg.num_heads, cfg.kv_dim
  out = {name: {"kernel": _linear(t, f"{p}.{w}.weight", d, h * k).reshape(d, h, k)}
         for name, w in (("query", "q"), ("key", "k"), ("value", "v"))}
  out["out"] = {"kernel": _linear(t, f"{p}.o.weight", h * k, d).reshape(h, k, d)}
  return out


def _mlp(cfg: ModelConfig, t: Tensors, p: str) -> dict:
  d, f = cfg.d_model, cfg.d_ff
  names = ("wi_0", "wi_1") if cfg.gated_mlp else ("wi",)
  out = {n: {"kernel": _linear(t, f"{p}.{n}.weight", d, f)} for n in names}
  out["wo"] = {"kernel": _linear(t, f"{p}.wo.weight", f, d)}
  return out


def _stack(cfg: ModelConfig, t: Tensors, stack: str, num_layers: int) -> dict:
  """One of T5's stacks: `layer.0` self-attention, (decoder) `layer.1` cross-attention, then the MLP."""
  scale = lambda name: {"scale": t.get(f"{name}.weight", (cfg.d_model,))}
  sublayers = [("attention", "SelfAttention")]
  if stack == "decoder":
    sublayers.append(("cross_attention", "EncDecAttention"))
  blocks = {}
  for i in range(num_layers):
    p = f"{stack}.block.{i}.layer"
    block = {}
    for j, (name, hf_name) in enumerate(sublayers):
      block[f"ln_{name}"] = scale(f"{p}.{j}.layer_norm")
      block[name] = _attention(cfg, t, f"{p}.{j}.{hf_name}")
    j = len(sublayers)
    block["ln_mlp"] = scale(f"{p}.{j}.layer_norm")
    block["mlp"] = _mlp(cfg, t, f"{p}.{j}.DenseReluDense")
    blocks[f"block_{i}"] = block
  bias = t.get(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
               (cfg.relative_buckets, cfg.num_heads))
  return {"layers": blocks, "ln_final": scale(f"{stack}.final_layer_norm"),
          "relative_bias": {"embedding": bias}}


def _same_as_shared(t: Tensors, shared: np.ndarray, name: str, why: str) -> None:
  """Marks `name` used if present; it must equal `shared.weight` (transformers ties it to it)."""
  if name in t and not np.array_equal(t.get(name, shared.shape), shared):
    raise ConfigError(f"T5 tensor {name!r} differs from 'shared.weight' ({why})")


def params_from_hf(cfg: ModelConfig, t: Tensors, hf: dict[str, Any]) -> dict:
  """The unscanned bigjax param tree (what `build(cfg).init` makes) from a T5 checkpoint's tensors."""
  del hf
  t.ignore_suffixes(*_UNUSED)
  shared = t.get("shared.weight", (cfg.vocab_size, cfg.d_model))
  for stack in ("encoder", "decoder"):
    _same_as_shared(t, shared, f"{stack}.embed_tokens.weight", "T5 shares one token embedding")
  params: dict[str, Any] = {
      "token_embed": {"embedding": shared},
      "encoder": _stack(cfg, t, "encoder", cfg.num_layers),
      "decoder": _stack(cfg, t, "decoder", cfg.decoder_layers),
  }
  if cfg.tie_embeddings:
    _same_as_shared(t, shared, "lm_head.weight", "the config ties it and scales the decoder output by "
                    "d_model**-0.5; set tie_word_embeddings=false for a separate output layer")
  elif "lm_head.weight" in t:
    params["lm_head"] = {"kernel": _linear(t, "lm_head.weight", cfg.d_model, cfg.vocab_size)}
  else:  # transformers 5 saves no lm_head when it is (still) tied to the shared embedding.
    params["lm_head"] = {"kernel": shared.T.copy()}
  return params


def _check_t5_shaped(cfg: ModelConfig) -> None:
  """T5ForConditionalGeneration has no place for biases, LayerNorm, post-norm or other positions."""
  if (cfg.family != "encoder_decoder" or cfg.use_bias or cfg.norm != "rmsnorm" or cfg.positions != "relative"
      or cfg.norm_position != "pre"):
    raise ConfigError("to_hf: this model is not T5-shaped (T5 needs family encoder_decoder, no biases, "
                      "RMSNorm, pre-norm blocks and relative positions)")


def _write_attention(t: dict, p: str, attn: dict) -> None:
  """q/k/v/o as torch Linear weights `[out, in]` (the heads flattened into d_kv * num_heads)."""
  for name, w in (("query", "q"), ("key", "k"), ("value", "v")):
    kernel = np.asarray(attn[name]["kernel"])
    t[f"{p}.{w}.weight"] = kernel.reshape(kernel.shape[0], -1).T
  out = np.asarray(attn["out"]["kernel"])
  t[f"{p}.o.weight"] = out.reshape(-1, out.shape[-1]).T


def _write_stack(t: dict, stack: str, params: dict, num_layers: int) -> None:
  """The inverse of `_stack`: one stack's blocks, final norm and relative-position table."""
  sublayers = ["attention"] + (["cross_attention"] if stack == "decoder" else [])
  hf_names = {"attention": "SelfAttention", "cross_attention": "EncDecAttention"}
  for i in range(num_layers):
    b, p = params["layers"][f"block_{i}"], f"{stack}.block.{i}.layer"
    for j, name in enumerate(sublayers):
      t[f"{p}.{j}.layer_norm.weight"] = b[f"ln_{name}"]["scale"]
      _write_attention(t, f"{p}.{j}.{hf_names[name]}", b[name])
    j = len(sublayers)
    t[f"{p}.{j}.layer_norm.weight"] = b["ln_mlp"]["scale"]
    for n, w in b["mlp"].items():
      t[f"{p}.{j}.DenseReluDense.{n}.weight"] = np.asarray(w["kernel"]).T
  t[f"{stack}.final_layer_norm.weight"] = params["ln_final"]["scale"]
  bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
  t[bias] = params["relative_bias"]["embedding"]


def to_hf(cfg: ModelConfig, params: dict) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """T5ForConditionalGeneration config and tensors."""
  _check_t5_shaped(cfg)
  t: dict[str, np.ndarray] = {"shared.weight": params["token_embed"]["embedding"]}
  _write_stack(t, "encoder", params["encoder"], cfg.num_layers)
  _write_stack(t, "decoder", params["decoder"], cfg.decoder_layers)
  if not cfg.tie_embeddings:
    t["lm_head.weight"] = np.asarray(params["lm_head"]["kernel"]).T
  hf = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model, "d_kv": cfg.kv_dim, "d_ff": cfg.d_ff, "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": 0.0,
        "layer_norm_epsilon": cfg.layer_norm_eps, "initializer_factor": 1.0,
        "feed_forward_proj": _FEED_FORWARD[(cfg.activation, cfg.gated_mlp)], "is_encoder_decoder": True,
        "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.tie_embeddings,
        "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
  return hf, t
