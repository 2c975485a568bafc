"""The Llama line ⇄ bigjax decoder: `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`,
`Qwen3ForCausalLM` and `GemmaForCausalLM` (and their base `*Model`s): rotary positions, RMSNorm, a gated MLP.

They share one checkpoint layout (`model.layers.{i}.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`,
two norms a layer) and differ in a few switches, each a ModelConfig field:
  llama    grouped-query heads (`num_kv_heads`), "linear"/"llama3" RoPE scaling (`rope_type`), biases
           in attention and MLP together (`use_bias`), tied or untied output
  mistral  Llama + a sliding attention window (`sliding_window`)
  qwen2    Llama + biases on q/k/v only (`qkv_bias`); a sliding window if every layer has it
  qwen3    Llama + RMSNorm of each query and key head (`qk_norm`, params `query_norm`/`key_norm`)
  gemma    norms that multiply by 1 + w (`norm_plus_one`), embeddings times sqrt(d_model) (`embed_scale`),
           tanh-GELU gate, head_dim independent of d_model, tied output
q_proj/k_proj rows are stored in the rotate-half layout that `bigjax.models.layers.rotary` uses, so they
load as they are (no permutation). Refused by name: other RoPE scalings ("dynamic", "longrope", ...), partial
rotary, windows on some layers only (Qwen's max_window_layers), biases in attention but not in the MLP or
the reverse (Llama, Qwen3, Gemma's attention_bias), and any model_type not above.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from bigjax.config import ConfigError, ModelConfig
from bigjax.convert.common import Tensors

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_HF_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
_BUFFERS = (".rotary_emb.inv_freq",)  # Older checkpoints saved the rotary frequencies; they are recomputed.
_ATTENTION = (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "o_proj"))
_MLP = (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj"))


_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
  """ModelConfig's rotary fields from `rope_parameters` (transformers >= 5) or top-level `rope_theta` and
  `rope_scaling` (older configs): the base, and "linear", "llama3" (Llama 3.1) or "yarn" (Qwen2.5's long
  context, as transformers computes it: a missing factor is max_position_embeddings / the original, the
  attention factor from mscale / mscale_all_dim when both are given).

  Other scalings ("dynamic", "longrope", ...) change the angles in ways bigjax's rotary does not compute,
  so they are refused rather than loaded into a model that would differ.
  """
  rope = hf.get("rope_parameters") or {}
  out = {"rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))}
  for source in (rope, hf.get("rope_scaling") or {}):
    if any(isinstance(v, dict) for v in source.values()):
      raise ConfigError(f"Llama rope_parameters per layer type ({', '.join(source)}) are not supported")
    kind = source.get("rope_type", source.get("type", "default"))
    if kind not in _ROPE_TYPES:
      raise ConfigError(f"Llama rope_type={kind!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
    if source.get("partial_rotary_factor", 1.0) != 1.0:
      raise ConfigError(f"Llama partial_rotary_factor={source['partial_rotary_factor']} is not supported")
    original = int(source.get("original_max_position_embeddings") or hf.get("max_position_embeddings", 8192))
    if kind == "yarn":
      factor = float(source.get("factor") or hf.get("max_position_embeddings", original) / original)
      attention = source.get("attention_factor")
      mscale, mscale_all = source.get("mscale"), source.get("mscale_all_dim")
      if attention is None and mscale and mscale_all:
        m = lambda scale: 1.0 if factor <= 1 else 0.1 * scale * math.log(factor) + 1.0
        attention = m(mscale) / m(mscale_all)
      out.update(rope_type="yarn", rope_factor=factor, rope_original_max_len=original,
                 rope_beta_fast=float(source.get("beta_fast") or 32), rope_beta_slow=float(source.get("beta_slow") or 1),
                 rope_attention_factor=float(attention or 0.0), rope_truncate=bool(source.get("truncate", True)))
    elif kind != "default":
      out.update(rope_type=kind, rope_factor=float(source["factor"]))
    if kind == "llama3":
      out.update(rope_low_freq_factor=float(source["low_freq_factor"]),
                 rope_high_freq_factor=float(source["high_freq_factor"]),
                 rope_original_max_len=original)
  return out


def _hf_rope(cfg: ModelConfig) -> dict[str, Any]:
  """`rope_parameters` for `cfg`, as transformers 5 writes them."""
  out = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
  if cfg.rope_type != "default":
    out["factor"] = cfg.rope_factor
  if cfg.rope_type == "llama3":
    out.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
               original_max_position_embeddings=cfg.rope_original_max_len)
  if cfg.rope_type == "yarn":
    out.update(original_max_position_embeddings=cfg.rope_original_max_len, beta_fast=cfg.rope_beta_fast,
               beta_slow=cfg.rope_beta_slow, truncate=cfg.rope_truncate)
    if cfg.rope_attention_factor:
      out["attention_factor"] = cfg.rope_attention_factor
  return out


# model_type → the transformers class that `to_hf` names.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM"}


def _check_supported(hf: dict[str, Any]) -> None:
  """Refuses settings whose computation bigjax's decoder does not reproduce exactly."""
  kind = hf.get("model_type", "llama")
  act = _activation(hf)
  if act not in _ACTIVATIONS:
    raise ConfigError(f"{kind} hidden_act={act!r} is not supported; supported: {', '.join(_ACTIVATIONS)}")
  heads = hf["num_attention_heads"]
  kv_heads = hf.get("num_key_value_heads") or heads
  if heads % kv_heads:
    raise ConfigError(f"{kind} num_key_value_heads={kv_heads} does not divide num_attention_heads={heads}")
  attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
  if kind == "llama" and attention_bias != mlp_bias:
    raise ConfigError(f"llama attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported: "
                      "bigjax has one use_bias for attention and MLP")
  if kind in ("qwen3", "gemma") and attention_bias:
    raise ConfigError(f"{kind} attention_bias=True is not supported: biases on q/k/v/o without the MLP's")


def _activation(hf: dict[str, Any]) -> str:
  return hf.get("hidden_act") or hf.get("hidden_activation") or "silu"


def _window(hf: dict[str, Any]) -> int:
  """The sliding window every layer uses (0: none): Mistral's `sliding_window`; Qwen's when
  `use_sliding_window` and its `layer_types` (or `max_window_layers`) put every layer in the window."""
  kind = hf.get("model_type", "llama")
  if kind == "mistral":
    return int(hf.get("sliding_window") or 0)
  if kind not in ("qwen2", "qwen3") or not hf.get("use_sliding_window") or not hf.get("sliding_window"):
    return 0
  n = hf["num_hidden_layers"]
  types = hf.get("layer_types") or ["sliding_attention" if i >= hf.get("max_window_layers", 28) else
                                    "full_attention" for i in range(n)]
  if set(types) == {"full_attention"}:
    return 0
  if set(types) != {"sliding_attention"}:
    raise ConfigError(f"{kind} with a sliding window on some layers only (layer_types / max_window_layers="
                      f"{hf.get('max_window_layers')}) is not supported: bigjax's window is every layer's or none")
  return int(hf["sliding_window"])


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
  """ModelConfig of a Llama, Mistral, Qwen2, Qwen3 or Gemma config.json.

  attention_dropout only acts in training and bigjax's dropout_rate would also drop residuals, so it is
  not carried over. pretraining_tp only split the same matmuls into slices in older transformers (and
  is ignored by 5.x), so any value loads exactly.
  """
  _check_supported(hf)
  kind = hf.get("model_type", "llama")
  d, heads = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or d // heads
  kv_heads = hf.get("num_key_value_heads") or heads
  gemma = kind == "gemma"
  return ModelConfig(family="decoder", vocab_size=hf["vocab_size"], d_model=d,
                     num_layers=hf["num_hidden_layers"], num_heads=heads,
                     num_kv_heads=0 if kv_heads == heads else kv_heads,
                     head_dim=0 if head_dim * heads == d else head_dim, d_ff=hf["intermediate_size"],
                     max_len=hf.get("max_position_embeddings", 2048), positions="rotary",
                     **_rope(hf), norm="rmsnorm", layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
                     activation=_ACTIVATIONS[_activation(hf)], gated_mlp=True,
                     use_bias=kind == "llama" and bool(hf.get("attention_bias", False)),
                     qkv_bias=kind == "qwen2", qk_norm=kind == "qwen3", sliding_window=_window(hf),
                     norm_plus_one=gemma, embed_scale=gemma,
                     tie_embeddings=hf.get("tie_word_embeddings", gemma))


def _linear(get: Callable, name: str, fan_in: int, fan_out: int, use_bias: bool) -> dict:
  """A torch Linear (y = x W^T + b, W `[out, in]`) as a bigjax Dense (kernel `[in, out]`)."""
  p = {"kernel": get(f"{name}.weight", (fan_out, fan_in)).T}
  if use_bias:
    p["bias"] = get(f"{name}.bias", (fan_out,))
  return p


def _block(cfg: ModelConfig, get: Callable) -> dict:
  """One decoder layer: q kernel `[d, h, hd]`, k/v kernels `[d, kv_heads, hd]` (biases without the `d`),
  out kernel `[h, hd, d]`."""
  d, h, hd, f = cfg.d_model, cfg.num_heads, cfg.kv_dim, cfg.d_ff
  attn = {}
  for ours, theirs in _ATTENTION[:3]:
    heads = h if ours == "query" else cfg.kv_heads
    p = _linear(get, f"self_attn.{theirs}", d, heads * hd, cfg.use_bias or cfg.qkv_bias)
    attn[ours] = {k: v.reshape(v.shape[:-1] + (heads, hd)) for k, v in p.items()}
  if cfg.qk_norm:
    attn["query_norm"] = {"scale": get("self_attn.q_norm.weight", (hd,))}
    attn["key_norm"] = {"scale": get("self_attn.k_norm.weight", (hd,))}
  out = _linear(get, "self_attn.o_proj", h * hd, d, cfg.use_bias)
  attn["out"] = dict(out, kernel=out["kernel"].reshape(h, hd, d))
  sizes = {"wi_0": (d, f), "wi_1": (d, f), "wo": (f, d)}
  mlp = {ours: _linear(get, f"mlp.{theirs}", *sizes[ours], cfg.use_bias) for ours, theirs in _MLP}
  return {"ln_attention": {"scale": get("input_layernorm.weight", (d,))}, "attention": attn,
          "ln_mlp": {"scale": get("post_attention_layernorm.weight", (d,))}, "mlp": mlp}


def params_from_hf(cfg: ModelConfig, t: Tensors, hf: dict[str, Any]) -> dict:
  """bigjax params (unscanned) from a `*ForCausalLM` or `*Model` checkpoint of the Llama line."""
  t.ignore_suffixes(*_BUFFERS)
  prefix = "model." if t.has_prefix("model.") else ""
  get = lambda name, shape: t.get(prefix + name, shape)
  d = cfg.d_model
  blocks = {f"block_{i}": _block(cfg, lambda name, shape, i=i: get(f"layers.{i}.{name}", shape))
            for i in range(cfg.num_layers)}
  params: dict[str, Any] = {
      "token_embed": {"embedding": get("embed_tokens.weight", (cfg.vocab_size, d))},
      "decoder": blocks,
      "ln_final": {"scale": get("norm.weight", (d,))},
  }
  if "lm_head.weight" in t:
    head = t.get("lm_head.weight", (cfg.vocab_size, d))
    if cfg.tie_embeddings:
      if not np.array_equal(head, params["token_embed"]["embedding"]):
        raise ConfigError(f"{hf.get('model_type', 'llama')} config says tie_word_embeddings=True but "
                          "lm_head.weight differs from embed_tokens.weight")
    else:
      params["lm_head"] = {"kernel": head.T}
  elif not cfg.tie_embeddings:
    raise ConfigError(f"{hf.get('model_type', 'llama')} checkpoint is missing tensor 'lm_head.weight' "
                      "(tie_word_embeddings=False)")
  return params


def model_type(cfg: ModelConfig) -> str:
  """The Hugging Face model_type that expresses `cfg`, or a ConfigError naming what none does."""
  wrong = [name for name, bad in (
      ("family != 'decoder'", cfg.family != "decoder"), ("positions != 'rotary'", cfg.positions != "rotary"),
      ("norm != 'rmsnorm'", cfg.norm != "rmsnorm"), ("gated_mlp=False", not cfg.gated_mlp),
      ("norm_position != 'pre'", cfg.norm_position != "pre")) if bad]
  if wrong:
    raise ConfigError(f"to_hf: this model is not Llama-shaped ({', '.join(wrong)}); Llama needs a pre-norm "
                      "decoder with rotary positions, RMSNorm and a gated MLP")
  switches = {"qkv_bias": cfg.qkv_bias and not cfg.use_bias, "qk_norm": cfg.qk_norm,
              "sliding_window": cfg.sliding_window > 0, "gemma": cfg.norm_plus_one or cfg.embed_scale,
              "use_bias": cfg.use_bias}
  on = sorted(name for name, v in switches.items() if v)
  allowed = {(): "llama", ("use_bias",): "llama", ("sliding_window",): "mistral", ("qkv_bias",): "qwen2",
             ("qkv_bias", "sliding_window"): "qwen2", ("qk_norm",): "qwen3", ("qk_norm", "sliding_window"): "qwen3",
             ("gemma",): "gemma"}
  kind = allowed.get(tuple(on))
  if kind == "llama" and cfg.d_model % cfg.num_heads:  # LlamaConfig refuses it; Mistral's reads the same weights.
    if cfg.use_bias:
      raise ConfigError(f"to_hf: LlamaConfig needs d_model ({cfg.d_model}) % num_heads ({cfg.num_heads}) == 0, and "
                        "Mistral (which does not) has no biases (model.use_bias=True)")
    kind = "mistral"
  if kind is None or (kind == "gemma" and not (cfg.norm_plus_one and cfg.embed_scale)):
    raise ConfigError(f"to_hf: no Hugging Face model has this combination ({', '.join(on)}; norm_plus_one="
                      f"{cfg.norm_plus_one}, embed_scale={cfg.embed_scale}); llama, mistral (sliding_window), qwen2 "
                      "(qkv_bias), qwen3 (qk_norm) and gemma (norm_plus_one and embed_scale) each add one")
  if kind == "gemma" and cfg.rope_type != "default":
    raise ConfigError(f"to_hf: gemma has no RoPE scaling (model.rope_type={cfg.rope_type!r})")
  return kind


def _hf_config(cfg: ModelConfig, kind: str) -> dict[str, Any]:
  """The `*ForCausalLM` config.json; rope_theta is written both ways so older transformers read it too."""
  hf = {"model_type": kind, "architectures": [ARCHITECTURES[kind]], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.kv_dim,
        "hidden_act": _HF_ACTIVATIONS[cfg.activation], "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.layer_norm_eps, "rope_theta": cfg.rope_theta,
        "rope_parameters": _hf_rope(cfg), "attention_dropout": 0.0, "tie_word_embeddings": cfg.tie_embeddings}
  if kind == "llama":
    hf.update(attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias)
  if kind in ("qwen3", "gemma"):
    hf["attention_bias"] = False
  if kind == "mistral":
    hf["sliding_window"] = cfg.sliding_window or None
  if kind in ("qwen2", "qwen3"):
    window = cfg.sliding_window > 0
    hf.update(use_sliding_window=window, sliding_window=cfg.sliding_window or None, max_window_layers=0,
              layer_types=[("sliding_attention" if window else "full_attention")] * cfg.num_layers)
  return hf


def _hf_block(cfg: ModelConfig, b: dict, prefix: str) -> dict[str, np.ndarray]:
  """One bigjax block as `model.layers.{i}.*` tensors (torch Linear weights are `[out, in]`)."""
  t = {f"{prefix}.input_layernorm.weight": b["ln_attention"]["scale"],
       f"{prefix}.post_attention_layernorm.weight": b["ln_mlp"]["scale"]}
  fan_in = {"out": cfg.num_heads * cfg.kv_dim, "wo": cfg.d_ff}  # Every other projection reads d_model.
  for group, names in (("attention", _ATTENTION), ("mlp", _MLP)):
    hf_group = "self_attn" if group == "attention" else "mlp"
    for ours, theirs in names:
      p, name = b[group][ours], f"{prefix}.{hf_group}.{theirs}"
      t[f"{name}.weight"] = np.reshape(p["kernel"], (fan_in.get(ours, cfg.d_model), -1)).T
      if "bias" in p:
        t[f"{name}.bias"] = np.reshape(p["bias"], (-1,))
  if cfg.qk_norm:
    t[f"{prefix}.self_attn.q_norm.weight"] = b["attention"]["query_norm"]["scale"]
    t[f"{prefix}.self_attn.k_norm.weight"] = b["attention"]["key_norm"]["scale"]
  return t


def to_hf(cfg: ModelConfig, params: dict) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """The `*ForCausalLM` config (the model_type `model_type(cfg)` names) and tensors."""
  kind = model_type(cfg)
  t: dict[str, np.ndarray] = {"model.embed_tokens.weight": params["token_embed"]["embedding"],
                              "model.norm.weight": params["ln_final"]["scale"]}
  for i in range(cfg.num_layers):
    t.update(_hf_block(cfg, params["decoder"][f"block_{i}"], f"model.layers.{i}"))
  if not cfg.tie_embeddings:
    t["lm_head.weight"] = np.asarray(params["lm_head"]["kernel"]).T
  return _hf_config(cfg, kind), t
