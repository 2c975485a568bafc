"""Run configuration: the one `ConfigDict` that drives a run, and the typed `ModelConfig`.

Every default lives in `default_config()`; experiment files in `experiments/` start from it and
change what they need (`get_config(arg)`), and every value can be overridden on the command line
as `--config.a.b=value`. `ModelConfig` is the frozen, validated view of `config.model` that the
models are built from.

`config.model.*` starts unset (None): a field takes an explicit value if one is given, else the
preset's (`model.preset`), else the ModelConfig default. `resolve` (called by `validate`) writes the
result back into `config.model`, so config.json and every reader of `config.model.X` see the real model.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping

import ml_collections


class ConfigError(ValueError):
  """A setting has a value that cannot work. The message names the setting and what is allowed."""


FAMILIES = ("encoder", "decoder", "encoder_decoder")
DTYPES = ("float32", "bfloat16", "float16")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "silu")
POSITIONS = ("learned", "rotary", "relative")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ENCODER_HEADS = ("mlm", "classifier", "none")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# What computes attention (bigjax.models.layers.attention): "auto" picks per backend and call; "plain" is
# two einsums and a float32 softmax (any backend, attention dropout, decoding); "xla" and "cudnn" are
# jax.nn.dot_product_attention's XLA path and its fused cuDNN kernel (NVIDIA GPUs, bfloat16/float16);
# "flash" is Pallas's flash-attention kernels (TPU; NVIDIA GPUs without T5's bias), which take packed
# segment ids instead of a dense mask, for training and scoring (KV-cache decoding steps run "plain").
ATTENTION = ("auto", "plain", "xla", "cudnn", "flash")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
OPTIMIZERS = ("adamw", "adafactor", "sgd", "lion")
QUANTIZE = ("none", "int8_weight", "int8_dynamic", "int8_qat")
# Which positions each family can use (T5 is defined by its relative buckets; BERT by learned ones).
_FAMILY_POSITIONS = {"encoder": ("learned", "rotary"), "decoder": ("learned", "rotary"),
                     "encoder_decoder": ("relative",)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a model. Defaults are GPT-2's conventions; presets give BERT's and T5's."""

  family: str = "decoder"  # "encoder" (BERT), "decoder" (GPT) or "encoder_decoder" (T5).
  vocab_size: int = 8192  # Rows of the embedding table (>= the tokenizer's vocabulary).
  d_model: int = 256  # Width of the residual stream.
  num_layers: int = 4  # Transformer blocks (the encoder's, for encoder_decoder).
  num_decoder_layers: int = 0  # encoder_decoder: decoder blocks (0 = num_layers).
  num_heads: int = 4  # Attention heads.
  num_kv_heads: int = 0  # Key/value heads (decoders; grouped-query attention when fewer); 0 = num_heads.
  head_dim: int = 0  # Per-head width; 0 means d_model // num_heads (T5 sets it: d_kv).
  d_ff: int = 1024  # Hidden width of the MLP.
  max_len: int = 1024  # Longest sequence (the size of the learned position table, if any).
  positions: str = "learned"  # "learned" table, "rotary" (RoPE on queries/keys), "relative" (T5 buckets).
  rope_theta: float = 10000.0  # Rotary base wavelength.
  # Rotary frequency scaling, as Hugging Face's rope_parameters: "default" (none), "linear" (every frequency
  # / rope_factor) or "llama3" (Llama 3.1: low frequencies / rope_factor, high ones kept, a smooth blend
  # between, the bands set by rope_low/high_freq_factor and rope_original_max_len) or "yarn" (below).
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  # "yarn" (Peng et al. 2023, as transformers computes it): frequencies blended between kept and / rope_factor
  # over the dimensions whose rotations in rope_original_max_len fall between rope_beta_slow and
  # rope_beta_fast; cos and sin times rope_attention_factor (0 = 0.1 ln(rope_factor) + 1).
  rope_beta_fast: float = 32.0
  rope_beta_slow: float = 1.0
  rope_attention_factor: float = 0.0
  rope_truncate: bool = True
  # Decoder options of today's open models (model.family='decoder'):
  sliding_window: int = 0  # Mistral: a query sees the last `sliding_window` positions only (itself included); 0 = all.
  qkv_bias: bool = False  # Qwen2: biases on the query/key/value projections (use_bias=True has them anyway).
  qk_norm: bool = False  # Qwen3: RMSNorm over each head's width on queries and keys, before the rotation.
  norm_plus_one: bool = False  # Gemma: norms multiply by (1 + scale); the stored scale starts at 0.
  embed_scale: bool = False  # Gemma: token embeddings times sqrt(d_model) (the tied output layer unscaled).
  relative_buckets: int = 32  # T5 relative-position buckets.
  relative_max_distance: int = 128  # T5: distances beyond this share the last bucket.
  norm: str = "layernorm"  # "layernorm" (mean and variance, scale and bias) or "rmsnorm" (scale only).
  norm_position: str = "pre"  # "pre": x + f(norm(x)), final norm (GPT, T5); "post": norm(x + f(x)) (BERT).
  layer_norm_eps: float = 1e-5  # Norm epsilon (GPT-2 1e-5, BERT 1e-12, T5 1e-6).
  activation: str = "gelu_tanh"  # MLP nonlinearity (GPT-2: tanh-approximated GELU).
  gated_mlp: bool = False  # act(x W0) * (x W1) (SwiGLU with silu; T5 v1.1's gated-GELU with gelu_tanh).
  use_bias: bool = True  # Biases in attention and MLP projections.
  tie_embeddings: bool = True  # Output projection is the token embedding transposed.
  type_vocab_size: int = 0  # encoder: segment (token type) embeddings, 0 = none (BERT: 2).
  encoder_head: str = "mlm"  # encoder: "mlm" (logits over the vocab), "classifier" (pooled [CLS]), "none".
  num_labels: int = 2  # encoder_head="classifier": number of classes.
  dropout_rate: float = 0.0  # Dropout on embeddings, attention probabilities and sublayer outputs.
  scan_layers: bool = False  # Run the blocks under nn.scan (one compiled block; params stacked on "layers").
  remat_policy: str = "none"  # Rematerialise blocks in the backward pass: none, full, dots, dots_no_batch.
  attention: str = "auto"  # auto | plain | xla | cudnn | flash: what computes attention (see ATTENTION).
  # int8 (bigjax.quantize): "int8_weight" / "int8_dynamic" are post-training (written by `bigjax quantize`),
  # "int8_qat" trains with int8-rounded weights in the forward pass (straight-through gradients), on the
  # modules whose path quantize_targets finds.
  quantize: str = "none"
  quantize_targets: str = r".*/(attention|cross_attention|mlp)/.*|lm_head"
  kv_cache_dtype: str = ""  # KV-cache storage: "" (the compute dtype) or "int8" (a float32 scale per position and head).
  init_std: float = 0.02  # Std of the normal initializer (residual projections get /sqrt(2L)).
  dtype: str = "float32"  # Compute dtype of activations.
  param_dtype: str = "float32"  # Storage dtype of parameters.

  def __post_init__(self):
    _choice("model.family", self.family, FAMILIES)
    _choice("model.dtype", self.dtype, DTYPES)
    _choice("model.param_dtype", self.param_dtype, DTYPES)
    _choice("model.activation", self.activation, ACTIVATIONS)
    _choice("model.norm", self.norm, NORMS)
    _choice("model.norm_position", self.norm_position, NORM_POSITIONS)
    _choice("model.encoder_head", self.encoder_head, ENCODER_HEADS)
    _choice("model.remat_policy", self.remat_policy, REMAT_POLICIES)
    _choice("model.attention", self.attention, ATTENTION)
    _choice("model.rope_type", self.rope_type, ROPE_TYPES)
    _choice("model.quantize", self.quantize, QUANTIZE)
    _choice("model.kv_cache_dtype", self.kv_cache_dtype, ("", "int8"))
    if self.quantize in ("int8_weight", "int8_dynamic") and self.scan_layers:
      raise ConfigError(f"model.quantize={self.quantize!r} runs the blocks unscanned (each layer's kernels get their "
                        "own scales); set model.scan_layers=False (bigjax quantize does)")
    if self.rope_type != "default":
      if self.positions != "rotary":
        raise ConfigError(f"model.rope_type={self.rope_type!r} scales rotary positions; model.positions is "
                          f"{self.positions!r}")
      if self.rope_factor <= 0:
        raise ConfigError(f"model.rope_factor={self.rope_factor}: must be > 0")
    if self.rope_type == "llama3" and not (0 < self.rope_low_freq_factor < self.rope_high_freq_factor
                                           and self.rope_original_max_len > 0):
      raise ConfigError(f"model.rope_type='llama3' needs 0 < model.rope_low_freq_factor "
                        f"({self.rope_low_freq_factor}) < model.rope_high_freq_factor ({self.rope_high_freq_factor}) "
                        f"and model.rope_original_max_len > 0 ({self.rope_original_max_len})")
    if self.rope_type == "yarn" and not (self.rope_beta_fast > self.rope_beta_slow > 0 and self.rope_original_max_len > 0
                                         and self.rope_attention_factor >= 0):
      raise ConfigError(f"model.rope_type='yarn' needs model.rope_beta_fast ({self.rope_beta_fast}) > "
                        f"model.rope_beta_slow ({self.rope_beta_slow}) > 0, model.rope_original_max_len > 0 and "
                        f"model.rope_attention_factor >= 0")
    _choice(f"model.positions (for model.family={self.family!r})", self.positions,
            _FAMILY_POSITIONS[self.family])
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_len"):
      _positive(f"model.{name}", getattr(self, name))
    for name in ("head_dim", "num_kv_heads", "num_decoder_layers", "type_vocab_size"):
      if getattr(self, name) < 0:
        raise ConfigError(f"model.{name}={getattr(self, name)}: must be >= 0")
    if self.head_dim == 0 and self.d_model % self.num_heads:
      raise ConfigError(
          f"model.d_model={self.d_model} is not divisible by model.num_heads={self.num_heads}; "
          "choose a divisor or set model.head_dim")
    if self.num_heads % self.kv_heads:
      raise ConfigError(f"model.num_kv_heads={self.num_kv_heads} must divide model.num_heads={self.num_heads} "
                        "(each key/value head serves num_heads / num_kv_heads query heads)")
    if self.kv_heads != self.num_heads and self.family != "decoder":
      raise ConfigError(f"model.num_kv_heads={self.num_kv_heads}: grouped-query attention is for "
                        f"model.family='decoder', not {self.family!r}; leave it 0")
    if self.sliding_window < 0:
      raise ConfigError(f"model.sliding_window={self.sliding_window}: must be >= 0 (0 = no window)")
    decoder_only = [f"model.{name}" for name in ("sliding_window", "qkv_bias", "qk_norm", "embed_scale")
                    if getattr(self, name)]
    if decoder_only and self.family != "decoder":
      raise ConfigError(f"{', '.join(decoder_only)}: for model.family='decoder' (Mistral, Qwen, Gemma), not "
                        f"{self.family!r}")
    if self.positions == "rotary" and self.kv_dim % 2:
      raise ConfigError(f"model.positions='rotary' needs an even head width, got {self.kv_dim}")
    if self.positions == "relative":
      _positive("model.relative_buckets", self.relative_buckets)
      _positive("model.relative_max_distance", self.relative_max_distance)
    if self.family == "encoder" and self.encoder_head == "classifier":
      _positive("model.num_labels", self.num_labels)
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(f"model.dropout_rate={self.dropout_rate}: must be in [0, 1)")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def kv_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ConfigError(f"model.{unknown[0]} is not a model setting; known: {', '.join(sorted(fields))}")
    return cls(**dict(d))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# Published sizes. `preset(name)` returns a ModelConfig; `config.model.preset` selects one.
_GPT2 = dict(family="decoder", vocab_size=50257, max_len=1024)
_BERT = dict(family="encoder", vocab_size=30522, max_len=512, type_vocab_size=2, norm_position="post",
             layer_norm_eps=1e-12, activation="gelu", encoder_head="mlm")
_T5 = dict(family="encoder_decoder", vocab_size=32128, max_len=512, positions="relative", norm="rmsnorm",
           layer_norm_eps=1e-6, use_bias=False, init_std=1.0)
_T5_V1_0 = dict(_T5, activation="relu", tie_embeddings=True)
_T5_V1_1 = dict(_T5, activation="gelu_tanh", gated_mlp=True, tie_embeddings=False)


# The Llama line (Hugging Face config.json values; `bigjax convert` loads these checkpoints as such models).
_LLAMA = dict(family="decoder", positions="rotary", norm="rmsnorm", activation="silu", gated_mlp=True,
              use_bias=False, tie_embeddings=False, layer_norm_eps=1e-5)
_LLAMA3 = dict(_LLAMA, vocab_size=128256, max_len=131072, rope_theta=500000.0, rope_type="llama3",
               rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_len=8192)
_QWEN = dict(_LLAMA, layer_norm_eps=1e-6, rope_theta=1000000.0, vocab_size=151936, max_len=32768)
_GEMMA = dict(_LLAMA, vocab_size=256000, max_len=8192, layer_norm_eps=1e-6, activation="gelu_tanh", head_dim=256,
              norm_plus_one=True, embed_scale=True, tie_embeddings=True)


def _decoder(base, layers, d, heads, kv_heads, d_ff, **kw):
  return dict(base, num_layers=layers, d_model=d, num_heads=heads, num_kv_heads=kv_heads, d_ff=d_ff, **kw)


def _bert(layers, d, heads):
  return dict(_BERT, num_layers=layers, d_model=d, num_heads=heads, d_ff=4 * d)


def _t5(base, layers, d, heads, d_ff, head_dim=64):
  return dict(base, num_layers=layers, d_model=d, num_heads=heads, d_ff=d_ff, head_dim=head_dim)


PRESETS: dict[str, dict[str, Any]] = {
    "gpt2_small": dict(_GPT2, d_model=768, num_layers=12, num_heads=12, d_ff=3072),
    "gpt2_medium": dict(_GPT2, d_model=1024, num_layers=24, num_heads=16, d_ff=4096),
    "gpt2_large": dict(_GPT2, d_model=1280, num_layers=36, num_heads=20, d_ff=5120),
    "gpt2_xl": dict(_GPT2, d_model=1600, num_layers=48, num_heads=25, d_ff=6400),
    # Llama 2 (Touvron et al. 2023), Llama 3 / 3.1 / 3.2 (Meta 2024: grouped-query heads, Llama 3.1's RoPE bands).
    "llama2_7b": _decoder(_LLAMA, 32, 4096, 32, 0, 11008, vocab_size=32000, max_len=4096),
    "llama3_8b": _decoder(_LLAMA3, 32, 4096, 32, 8, 14336, rope_type="default", max_len=8192),
    "llama3_2_1b": _decoder(_LLAMA3, 16, 2048, 32, 8, 8192, rope_factor=32.0, tie_embeddings=True),
    "llama3_2_3b": _decoder(_LLAMA3, 28, 3072, 24, 8, 8192, rope_factor=32.0, tie_embeddings=True),
    "llama3_1_8b": _decoder(_LLAMA3, 32, 4096, 32, 8, 14336, rope_factor=8.0),
    "llama3_1_70b": _decoder(_LLAMA3, 80, 8192, 64, 8, 28672, rope_factor=8.0),
    # Mistral 7B v0.1 (Jiang et al. 2023): a 4,096-token sliding window.
    "mistral_7b": _decoder(_LLAMA, 32, 4096, 32, 8, 14336, vocab_size=32000, max_len=32768, sliding_window=4096),
    # Qwen2.5 (biases on q/k/v) and Qwen3 (per-head q/k RMSNorm, head_dim 128).
    "qwen2_5_0_5b": _decoder(_QWEN, 24, 896, 14, 2, 4864, qkv_bias=True, tie_embeddings=True),
    "qwen2_5_7b": _decoder(_QWEN, 28, 3584, 28, 4, 18944, qkv_bias=True, vocab_size=152064, max_len=131072),
    "qwen3_0_6b": _decoder(_QWEN, 28, 1024, 16, 8, 3072, qk_norm=True, head_dim=128, max_len=40960,
                           tie_embeddings=True),
    "qwen3_8b": _decoder(_QWEN, 36, 4096, 32, 8, 12288, qk_norm=True, head_dim=128, max_len=40960),
    # Gemma (Gemma Team 2024): GeGLU, 1 + w norms, sqrt(d_model) embeddings, head_dim 256; 2B is multi-query.
    "gemma_2b": _decoder(_GEMMA, 18, 2048, 8, 1, 16384),
    "gemma_7b": _decoder(_GEMMA, 28, 3072, 16, 0, 24576),
    # BERT (Devlin et al. 2018) and the compact BERTs of Turc et al. 2019 (google-research/bert).
    "bert_tiny": _bert(2, 128, 2),
    "bert_mini": _bert(4, 256, 4),
    "bert_small": _bert(4, 512, 8),
    "bert_medium": _bert(8, 512, 8),
    "bert_base": _bert(12, 768, 12),
    "bert_large": _bert(24, 1024, 16),
    # T5 v1.0 (Raffel et al. 2019): ReLU MLP, tied embeddings.
    "t5_small": _t5(_T5_V1_0, 6, 512, 8, 2048),
    "t5_base": _t5(_T5_V1_0, 12, 768, 12, 3072),
    "t5_large": _t5(_T5_V1_0, 24, 1024, 16, 4096),
    "t5_3b": _t5(_T5_V1_0, 24, 1024, 32, 16384, head_dim=128),
    "t5_11b": _t5(_T5_V1_0, 24, 1024, 128, 65536, head_dim=128),
    # T5 v1.1: gated-GELU MLP, untied output layer.
    "t5_v1_1_small": _t5(_T5_V1_1, 8, 512, 6, 1024),
    "t5_v1_1_base": _t5(_T5_V1_1, 12, 768, 12, 2048),
    "t5_v1_1_large": _t5(_T5_V1_1, 24, 1024, 16, 2816),
    "t5_v1_1_xl": _t5(_T5_V1_1, 24, 2048, 32, 5120),
    "t5_v1_1_xxl": _t5(_T5_V1_1, 24, 4096, 64, 10240),
}


# Stacks of 24 layers or more are scanned by default: measured with experiments/benchmarks/compile.py
# (decoder train step, this project's 2-core CPU, 2026-12-02), the unrolled stack's trace + lower + compile
# took 15.2 / 54.0 / 297.5 s at 12 / 24 / 48 layers and the scanned one 3.9 / 3.2 / 4.4 s, its step no
# slower. An explicit model.scan_layers wins, as every explicit field does.
SCAN_FROM_LAYERS = 24
for _p in PRESETS.values():
  if _p["num_layers"] >= SCAN_FROM_LAYERS:
    _p["scan_layers"] = True
del _p


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ConfigError(f"model.preset={name!r} is not a preset; known: {', '.join(PRESETS)}")
  return ModelConfig(**{**PRESETS[name], **overrides})


# The fields every config.json has held since presets exist: a section with a preset and all of these set
# is a config.json from before explicit values won (see _model_fields).
_ALWAYS_SAVED = ("family", "vocab_size", "d_model", "num_layers", "num_heads", "head_dim", "d_ff", "max_len",
                 "dropout_rate", "layer_norm_eps", "activation", "use_bias", "tie_embeddings", "init_std", "dtype",
                 "param_dtype")


def _model_fields(section: Mapping[str, Any]) -> dict[str, Any]:
  """The fields of a `model` section: ModelConfig defaults < its preset < every field set (not None).

  A section with a preset and every field of _ALWAYS_SAVED set is a config.json written before explicit
  values won: it held every field, and one equal to its default meant "the preset's". It is read by
  that rule, so an old run resolves to the model it trained. (`resolve` empties the preset, so what it
  writes never looks like one; a config built in code would have to set all 16 of those fields.)"""
  d = dict(section)
  name = d.pop("preset", "") or ""
  base = preset(name).to_dict() if name else ModelConfig().to_dict()
  if name and all(d.get(k) is not None for k in _ALWAYS_SAVED):
    defaults = ModelConfig().to_dict()
    # scan_layers came into presets after that format: such a file's saved value is the one it trained with.
    return {**defaults, **{k: (base[k] if k in base and v == defaults[k] and k != "scan_layers" else v)
                           for k, v in d.items() if v is not None}}
  return {**base, **{k: v for k, v in d.items() if v is not None or k not in base}}


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The validated ModelConfig of a run config: defaults < `model.preset` < explicitly set fields.

  Pure (the config is not changed); `resolve` also writes the result into the config."""
  return ModelConfig.from_dict(_model_fields(config.model.to_dict()))


def resolve(config: ml_collections.ConfigDict) -> ModelConfig:
  """Writes the model into `config.model` in place: every field its real value and `preset` emptied
  (its values are now the fields), so what the run saves and whoever reads `config.model.X` see the
  model that is built, not None or a default the preset overrode. Idempotent; works on a locked config."""
  mcfg = model_config(config)
  values = {**mcfg.to_dict(), "preset": ""}
  missing = [k for k in values if k not in config.model]  # A config.json that predates a field.
  if missing:
    with config.unlocked():
      for k in missing:
        config.model[k] = values[k]
  for k, v in values.items():
    if config.model[k] != v:  # Equal values stay (a saved int 10000 may not be overwritten by a float).
      config.model[k] = v
  return mcfg


def resolve_saved(saved: Mapping[str, Any]) -> dict[str, Any]:
  """A copy of a saved config.json dict as today's run would write it, so that a resumed run's pinned
  settings compare field by field with a workdir of any age: the `model` section as `resolve` writes it
  (an older file read by the rule it was written under) and `optim.decay_steps` pinned (a workdir from
  before that setting decayed over its `train.steps`)."""
  out = copy.deepcopy(dict(saved))
  mcfg = ModelConfig.from_dict(_model_fields(out.get("model") or {}))
  out["model"] = {**mcfg.to_dict(), "preset": ""}
  horizon = _saved_decay_steps(out)
  if horizon:
    out["optim"] = {**(out.get("optim") or {}), "decay_steps": horizon}
  return out


def _saved_decay_steps(saved: Mapping[str, Any]) -> int:
  """The horizon a saved run decayed over (0 if it records none): its optim.decay_steps, else train.steps."""
  return (saved.get("optim") or {}).get("decay_steps") or (saved.get("train") or {}).get("steps") or 0


def resolve_decay_steps(config: ml_collections.ConfigDict, saved: Mapping[str, Any] | None = None) -> int:
  """The step at which the learning rate's decay ends, to pin in the workdir on its first run, so that
  raising train.steps on resume trains on at the end of the curve instead of reshaping it mid-run:
  an explicit `optim.decay_steps`, else the one the workdir's `saved` config.json pinned, else its
  `train.steps` (workdirs from before the setting), else this run's `train.steps`."""
  return config.optim.get("decay_steps", 0) or (_saved_decay_steps(saved) if saved else 0) or config.train.steps


def default_config() -> ml_collections.ConfigDict:
  """Every setting a run has, with its default. Experiment files change what they need."""
  c = ml_collections.ConfigDict()

  # Every ModelConfig field (see its comments), unset (None) until given: then the preset's value, else
  # ModelConfig's default. A placeholder of the field's type, so --config.model.X=V parses by type.
  c.model = ml_collections.ConfigDict(
      {f.name: ml_collections.config_dict.placeholder(type(f.default)) for f in dataclasses.fields(ModelConfig)})
  c.model.preset = ""  # A name from bigjax.config.PRESETS; explicit model.* values override it.

  c.data = ml_collections.ConfigDict()
  # "pydoc_prose" | "stdlib_code" (embedded corpora), a local text file path or glob (one
  # document per file), or "tfds:NAME[/CONFIG]" for any TFDS dataset (see data.text_key).
  c.data.source = "stdlib_code"
  c.data.text_key = "text"  # Field with the (input) text: a TFDS feature, a JSONL key or a CSV column.
  c.data.target_key = ""  # Field with the target text or label (text_to_text, classification).
  # Classification: label names in index order, comma-separated ("" = a TFDS ClassLabel's names, else
  # the train split's labels, sorted).
  c.data.labels = ""
  c.data.train_split = "train"  # Split names, for tfds: sources.
  c.data.eval_split = "validation"
  c.data.data_dir = ""  # TFDS data dir ("" = TFDS default, ~/tensorflow_datasets). May be gs://.
  # A SentencePiece model path (relative paths are looked up in the repo's tokenizers/ too), or
  # "byte" for byte-level tokens that need no training.
  c.data.tokenizer = "code_sp4k.model"  # Shipped in tokenizers/, made for the default source.
  # How windows of tokens become batches: "causal_lm" (decoder), "masked_lm" (encoder), "span_corruption"
  # (encoder_decoder); "" = the model family's own.
  # Labelled records: "text_to_text" (decoder, encoder_decoder), "classification" (encoder). Also
  # "prefix_lm" (decoder, encoder_decoder) on plain text.
  c.data.objective = ""
  c.data.target_len = 0  # Decoder length of text_to_text on an encoder_decoder (0 = data.seq_len).
  c.data.pack = True  # text_to_text: pack several examples into each training row (segment_ids, positions).
  c.data.seq_len = 256  # Tokens per training example (the encoder's input length for span corruption).
  c.data.batch_size = 16  # Global batch (examples per step, summed over all processes).
  c.data.eval_batches = 8  # Eval batches per evaluation (0 = the whole eval split).

  c.optim = ml_collections.ConfigDict()
  # "adamw" | "adafactor" (factored second moments, as T5 trained: set decay 0.8, update clipping 1.0 and
  # parameter-scale updates below; T5's relative step size 1/sqrt(step) capped at 0.01 is schedule "rsqrt"
  # with learning_rate 0.01 and warmup_steps 10000) | "sgd" (momentum, optionally Nesterov) | "lion".
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3  # Peak learning rate.
  c.optim.warmup_steps = 100  # Linear warmup from 0 to the peak (rsqrt: steps held at the peak).
  # "cosine" | "linear" (warmup, then decay to learning_rate * end_lr_ratio at optim.decay_steps) | "rsqrt"
  # (T5's inverse square root after warmup_steps) | "constant" (warmup, then the peak).
  c.optim.schedule = "cosine"
  c.optim.end_lr_ratio = 0.1  # The decay ends at learning_rate * end_lr_ratio at optim.decay_steps.
  c.optim.decay_steps = 0  # Step where cosine/linear decay ends, held after (0 = first run's train.steps, pinned).
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1  # Decoupled (AdamW); never applied to biases, norms or embeddings.
  c.optim.clip_norm = 1.0  # Global-norm gradient clipping (0 = off).
  c.optim.momentum = 0.9  # sgd only (0 = plain SGD).
  c.optim.nesterov = False  # sgd only.
  c.optim.adafactor_decay_rate = 0.8  # Adafactor's second-moment decay: 1 - step^-0.8 (T5).
  c.optim.adafactor_clipping = 1.0  # Adafactor's update clipping (RMS of the update; 0 = off).
  c.optim.adafactor_parameter_scale = True  # Adafactor: updates scaled by each parameter's RMS (T5).
  c.optim.adafactor_min_dim_to_factor = 128  # Adafactor: matrices with both dims >= this are factored.

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000  # Target step; raising it on a finished workdir trains on.
  c.train.seed = 0  # Seeds params, dropout and the data order.
  c.train.log_every = 50  # A progress line and a metrics.jsonl train line every this many steps.
  c.train.eval_every = 250  # Eval (loss, bits/byte, samples) every this many steps, and at the end.
  c.train.checkpoint_every = 250  # Checkpoint every this many steps, and at the end.
  c.train.keep_checkpoints = 3  # How many recent checkpoints to keep.
  # The eval metric (a key of the eval line: loss, accuracy, bits_per_byte, ...) whose best checkpoint is
  # kept besides the recent ones, and whether best is "min" or "max" ("" = keep only the recent ones).
  c.train.best_metric = "loss"
  c.train.best_mode = "min"
  c.train.async_checkpoints = True  # Write checkpoints in the background while training goes on.
  # Split each batch into this many microbatches and sum their gradients: the update of the whole batch
  # with 1/k of its activation memory. Must divide data.batch_size (and leave whole rows per device).
  c.train.grad_accum_steps = 1
  # A step whose loss or gradients are not finite: "error" stops the run naming the step (the last good
  # checkpoint is kept), "skip" leaves params and optimizer state as they were and goes on.
  c.train.on_nonfinite = "error"
  c.train.init_from = ""  # A workdir whose latest params start a fresh run (ignored when resuming).
  # LoRA (bigjax.lora): rank > 0 trains low-rank adapters on the block projections whose module path
  # ("decoder/block_0/attention/query", ...) the regular expression lora_targets finds; every other weight
  # stays frozen, bitwise. Readers of the workdir (eval, decode, convert) get the adapters merged in.
  c.train.lora_rank = 0
  c.train.lora_alpha = 16.0  # The adapter's output is scaled by lora_alpha / lora_rank.
  c.train.lora_targets = "attention/(query|value)$"  # Hu et al.'s W_q and W_v; e.g. "attention|mlp" for all.
  c.train.lora_dropout = 0.0  # Dropout on the adapter's input (the base path is not dropped).
  # Pruning (bigjax.prune): "none", "magnitude" (unstructured, to prune_sparsity by Zhu & Gupta's schedule
  # from prune_start to prune_end; prune_scope "global" or "layer") or "n:m" (prune_n_m, e.g. "2:4"). The
  # masks are optimizer state; pruned weights stay exactly zero. prune_end 0 = train.steps of the first run.
  # Distillation (bigjax.distill): a workdir or Hugging Face directory of the same family and vocabulary;
  # loss = distill_alpha * T^2 * KL(teacher_T || student_T) + (1 - distill_alpha) * cross-entropy.
  c.train.teacher = ""
  c.train.distill_alpha = 0.5
  c.train.distill_temperature = 2.0
  c.train.teacher_dtype = ""  # "" = the teacher's own; "bfloat16" halves its memory.
  c.train.prune = "none"
  c.train.prune_sparsity = 0.5
  c.train.prune_scope = "global"
  c.train.prune_n_m = "2:4"
  c.train.prune_start = 0
  c.train.prune_end = 0
  c.train.prune_every = 10
  c.train.prune_targets = r"(attention|mlp)/[^/]+/kernel$"  # Flat param names; embeddings/norms/biases kept.
  c.train.num_samples = 2  # Texts sampled at each eval into samples.txt (0 = none).
  c.train.sample_len = 64  # Tokens sampled after each prompt.
  c.train.sample_temperature = 0.8
  c.train.sample_top_k = 40

  c.mesh = ml_collections.ConfigDict()
  # Sizes of the ("data", "fsdp", "tensor") mesh axes; -1 takes the devices left over.
  c.mesh.shape = (-1, 1, 1)
  c.mesh.num_devices = 0  # Use only the first N devices (0 = all).
  # Overrides of the logical-axis rules (bigjax/partitioning.py RULES): (name, "data" | "fsdp" | "tensor" |
  # None | ("data", "fsdp")) pairs, e.g. (("embed", None),) keeps params whole on fsdp devices.
  c.mesh.rules = ()
  return c


def _choice(name, value, allowed):
  if value not in allowed:
    raise ConfigError(f"{name}={value!r}: allowed values are {', '.join(map(repr, allowed))}")


def _positive(name, value):
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"{name}={value!r}: must be a positive integer")


def check_decay_steps(value) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ConfigError(f"optim.decay_steps={value!r}: must be an integer >= 0 (0 = the first run's train.steps)")


def _check_lora(train) -> None:
  import re  # pylint: disable=g-import-not-at-top
  rank = train.get("lora_rank", 0)
  if not isinstance(rank, int) or rank < 0:
    raise ConfigError(f"train.lora_rank={rank!r}: must be an integer >= 0 (0 = no LoRA)")
  if not rank:
    return
  if train.get("lora_alpha", 16.0) <= 0:
    raise ConfigError(f"train.lora_alpha={train.lora_alpha}: must be > 0")
  if not 0.0 <= train.get("lora_dropout", 0.0) < 1.0:
    raise ConfigError(f"train.lora_dropout={train.lora_dropout}: must be in [0, 1)")
  try:
    re.compile(train.get("lora_targets", ""))
  except re.error as e:
    raise ConfigError(f"train.lora_targets={train.lora_targets!r} is not a regular expression: {e}") from None


def validate(config: ml_collections.ConfigDict) -> ModelConfig:
  """Checks that need only the config; returns the ModelConfig. Raises ConfigError.

  Resolves `config.model` in place first (`resolve`): call it before anything reads the config."""
  mcfg = resolve(config)
  for name in ("seq_len", "batch_size"):
    _positive(f"data.{name}", config.data[name])
  if mcfg.positions == "learned" and config.data.seq_len > mcfg.max_len:
    raise ConfigError(
        f"data.seq_len={config.data.seq_len} is longer than model.max_len={mcfg.max_len} "
        "(the model's learned positions); lower data.seq_len or raise model.max_len")
  if config.data.target_len < 0:
    raise ConfigError(f"data.target_len={config.data.target_len}: must be >= 0 (0 = data.seq_len)")
  if config.data.eval_batches < 0:
    raise ConfigError(f"data.eval_batches={config.data.eval_batches}: must be >= 0")
  for name in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "grad_accum_steps"):
    _positive(f"train.{name}", config.train[name])
  if config.data.batch_size % config.train.grad_accum_steps:
    raise ConfigError(f"train.grad_accum_steps={config.train.grad_accum_steps} does not divide "
                      f"data.batch_size={config.data.batch_size} into equal microbatches")
  _choice("train.on_nonfinite", config.train.on_nonfinite, ("error", "skip"))
  _choice("optim.schedule", config.optim.get("schedule", "cosine"), ("cosine", "linear", "rsqrt", "constant"))
  _choice("optim.name", config.optim.get("name", "adamw"), OPTIMIZERS)
  _choice("train.best_mode", config.train.best_mode, ("min", "max"))
  if config.train.num_samples < 0 or config.train.sample_len < 0:
    raise ConfigError("train.num_samples and train.sample_len must be >= 0")
  _check_lora(config.train)
  from bigjax import prune  # pylint: disable=g-import-not-at-top
  prune.spec(config)  # Names a bad train.prune* setting.
  if config.optim.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate={config.optim.learning_rate}: must be > 0")
  if config.optim.warmup_steps < 0:
    raise ConfigError(f"optim.warmup_steps={config.optim.warmup_steps}: must be >= 0")
  if not 0.0 <= config.optim.end_lr_ratio <= 1.0:
    raise ConfigError(f"optim.end_lr_ratio={config.optim.end_lr_ratio}: must be in [0, 1]")
  check_decay_steps(config.optim.get("decay_steps", 0))
  shape = tuple(config.mesh.shape)
  if len(shape) != 3 or any((not isinstance(s, int)) or s == 0 or s < -1 for s in shape) \
      or list(shape).count(-1) > 1:
    raise ConfigError(
        f"mesh.shape={shape}: must be three sizes for (data, fsdp, tensor), positive or a single -1")
  return mcfg
