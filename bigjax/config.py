"""Run configuration: the one `ConfigDict` that drives a run, and the typed `ModelConfig`.

Every default lives in `default_config()`; experiment files in `experiments/` start from it and
change what they need (`get_config(arg)`), and every value can be overridden on the command line
as `--config.a.b=value`. `ModelConfig` is the frozen, validated view of `config.model` that the
models are built from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections


class ConfigError(ValueError):
  """A setting has a value that cannot work. The message names the setting and what is allowed."""


FAMILIES = ("decoder",)  # issue 3 adds "encoder" and "encoder_decoder".
DTYPES = ("float32", "bfloat16", "float16")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a model. Defaults are GPT-2's conventions."""

  family: str = "decoder"  # Which model family `bigjax.models.build` makes.
  vocab_size: int = 8192  # Rows of the embedding table (>= the tokenizer's vocabulary).
  d_model: int = 256  # Width of the residual stream.
  num_layers: int = 4  # Transformer blocks.
  num_heads: int = 4  # Attention heads.
  head_dim: int = 0  # Per-head width; 0 means d_model // num_heads.
  d_ff: int = 1024  # Hidden width of the MLP.
  max_len: int = 1024  # Learned positions: the longest sequence the model accepts.
  dropout_rate: float = 0.0  # Dropout on embeddings, attention output and MLP output.
  layer_norm_eps: float = 1e-5  # LayerNorm epsilon (GPT-2: 1e-5).
  activation: str = "gelu_tanh"  # MLP nonlinearity (GPT-2: tanh-approximated GELU).
  use_bias: bool = True  # Biases in attention and MLP projections.
  tie_embeddings: bool = True  # Output projection is the token embedding transposed.
  init_std: float = 0.02  # Std of the normal initializer (residual projections get /sqrt(2L)).
  dtype: str = "float32"  # Compute dtype of activations.
  param_dtype: str = "float32"  # Storage dtype of parameters.

  def __post_init__(self):
    _choice("model.family", self.family, FAMILIES)
    _choice("model.dtype", self.dtype, DTYPES)
    _choice("model.param_dtype", self.param_dtype, DTYPES)
    _choice("model.activation", self.activation, ACTIVATIONS)
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_len"):
      _positive(f"model.{name}", getattr(self, name))
    if self.head_dim < 0:
      raise ConfigError(f"model.head_dim={self.head_dim}: must be >= 0 (0 means d_model // num_heads)")
    if self.head_dim == 0 and self.d_model % self.num_heads:
      raise ConfigError(
          f"model.d_model={self.d_model} is not divisible by model.num_heads={self.num_heads}; "
          "choose a divisor or set model.head_dim")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(f"model.dropout_rate={self.dropout_rate}: must be in [0, 1)")

  @property
  def kv_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

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
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2_small": dict(vocab_size=50257, d_model=768, num_layers=12, num_heads=12, d_ff=3072, max_len=1024),
    "gpt2_medium": dict(vocab_size=50257, d_model=1024, num_layers=24, num_heads=16, d_ff=4096, max_len=1024),
    "gpt2_large": dict(vocab_size=50257, d_model=1280, num_layers=36, num_heads=20, d_ff=5120, max_len=1024),
    "gpt2_xl": dict(vocab_size=50257, d_model=1600, num_layers=48, num_heads=25, d_ff=6400, max_len=1024),
}


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ConfigError(f"model.preset={name!r} is not a preset; known: {', '.join(PRESETS)}")
  return ModelConfig(family="decoder", **{**PRESETS[name], **overrides})


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The validated ModelConfig of a run config (a preset, if named, under the explicit fields)."""
  d = dict(config.model.to_dict())
  name = d.pop("preset", "")
  if name:
    base = preset(name).to_dict()
    defaults = ModelConfig().to_dict()
    # Fields left at their default take the preset's value; fields set explicitly win.
    d = {k: (base[k] if v == defaults.get(k) else v) for k, v in d.items()}
  return ModelConfig.from_dict(d)


def default_config() -> ml_collections.ConfigDict:
  """Every setting a run has, with its default. Experiment files change what they need."""
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict(ModelConfig().to_dict())
  c.model.preset = ""  # A name from bigjax.config.PRESETS; explicit model.* values override it.

  c.data = ml_collections.ConfigDict()
  # "pydoc_prose" | "stdlib_code" (embedded corpora), a local text file path or glob (one
  # document per file), or "tfds:NAME[/CONFIG]" for any TFDS dataset (see data.text_key).
  c.data.source = "stdlib_code"
  c.data.text_key = "text"  # Feature holding the text, for tfds: sources.
  c.data.train_split = "train"  # Split names, for tfds: sources.
  c.data.eval_split = "validation"
  c.data.data_dir = ""  # TFDS data dir ("" = TFDS default, ~/tensorflow_datasets). May be gs://.
  # A SentencePiece model path (relative paths are looked up in the repo's tokenizers/ too), or
  # "byte" for byte-level tokens that need no training.
  c.data.tokenizer = "prose_sp8k.model"
  c.data.seq_len = 256  # Tokens per training example.
  c.data.batch_size = 16  # Global batch (examples per step, summed over all processes).
  c.data.eval_batches = 8  # Eval batches per evaluation (0 = the whole eval split).

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3  # Peak learning rate.
  c.optim.warmup_steps = 100  # Linear warmup from 0 to the peak.
  c.optim.end_lr_ratio = 0.1  # Cosine decay ends at learning_rate * end_lr_ratio at train.steps.
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1  # Decoupled (AdamW); never applied to biases, norms or embeddings.
  c.optim.clip_norm = 1.0  # Global-norm gradient clipping (0 = off).

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000  # Target step; raising it on a finished workdir trains on.
  c.train.seed = 0  # Seeds params, dropout and the data order.
  c.train.log_every = 50  # A progress line and a metrics.jsonl train line every this many steps.
  c.train.eval_every = 250  # Eval (loss, bits/byte, samples) every this many steps, and at the end.
  c.train.checkpoint_every = 250  # Checkpoint every this many steps, and at the end.
  c.train.keep_checkpoints = 3  # How many recent checkpoints to keep.
  c.train.init_from = ""  # A workdir whose latest params start a fresh run (ignored when resuming).
  c.train.num_samples = 2  # Texts sampled at each eval into samples.txt (0 = none).
  c.train.sample_len = 64  # Tokens sampled after each prompt.
  c.train.sample_temperature = 0.8
  c.train.sample_top_k = 40

  c.mesh = ml_collections.ConfigDict()
  # Sizes of the ("data", "fsdp", "tensor") mesh axes; -1 takes the devices left over.
  c.mesh.shape = (-1, 1, 1)
  c.mesh.num_devices = 0  # Use only the first N devices (0 = all).
  return c


def _choice(name, value, allowed):
  if value not in allowed:
    raise ConfigError(f"{name}={value!r}: allowed values are {', '.join(map(repr, allowed))}")


def _positive(name, value):
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"{name}={value!r}: must be a positive integer")


def validate(config: ml_collections.ConfigDict) -> ModelConfig:
  """Checks that need only the config; returns the ModelConfig. Raises ConfigError."""
  mcfg = model_config(config)
  for name in ("seq_len", "batch_size"):
    _positive(f"data.{name}", config.data[name])
  if config.data.seq_len > mcfg.max_len:
    raise ConfigError(
        f"data.seq_len={config.data.seq_len} is longer than model.max_len={mcfg.max_len} "
        "(the model's learned positions); lower data.seq_len or raise model.max_len")
  if config.data.eval_batches < 0:
    raise ConfigError(f"data.eval_batches={config.data.eval_batches}: must be >= 0")
  for name in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    _positive(f"train.{name}", config.train[name])
  if config.train.num_samples < 0 or config.train.sample_len < 0:
    raise ConfigError("train.num_samples and train.sample_len must be >= 0")
  if config.optim.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate={config.optim.learning_rate}: must be > 0")
  if config.optim.warmup_steps < 0:
    raise ConfigError(f"optim.warmup_steps={config.optim.warmup_steps}: must be >= 0")
  if not 0.0 <= config.optim.end_lr_ratio <= 1.0:
    raise ConfigError(f"optim.end_lr_ratio={config.optim.end_lr_ratio}: must be in [0, 1]")
  shape = tuple(config.mesh.shape)
  if len(shape) != 3 or any((not isinstance(s, int)) or s == 0 or s < -1 for s in shape) \
      or list(shape).count(-1) > 1:
    raise ConfigError(
        f"mesh.shape={shape}: must be three sizes for (data, fsdp, tensor), positive or a single -1")
  return mcfg
