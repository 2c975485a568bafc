"""Model families: `build(cfg)` returns the linen module for a `ModelConfig`.

One calling convention for every family:
  encoder, decoder:  `module.apply({"params": p}, input_ids, attention_mask=m)` → logits `[b, l, vocab]`
                     (the encoder's classifier head gives `[b, num_labels]`);
  encoder_decoder:   `module.apply({"params": p}, input_ids, decoder_input_ids, attention_mask=m,
                     decoder_attention_mask=dm)` → the decoder's logits `[b, l_dec, vocab]`.

Also here: the KV-cache step functions that `bigjax.decode` drives. Converting params between the scanned
(`cfg.scan_layers`) and unscanned layouts is `bigjax.models.layout` (re-exported here).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bigjax.config import ConfigError, ModelConfig
from bigjax.models.decoder import Decoder
from bigjax.models.encoder import Encoder
from bigjax.models.encoder_decoder import EncoderDecoder
from bigjax.models.layout import scan_params, to_layout, unscan_params  # noqa: F401  (re-exported)

_FAMILIES = {"encoder": Encoder, "decoder": Decoder, "encoder_decoder": EncoderDecoder}


def build(cfg: ModelConfig, *, decode: bool = False, lora=None):
  """The module for `cfg`; `decode=True` (decoder and encoder_decoder) makes the KV-cache variant; `lora` (a
  `layers.Lora`) adds low-rank adapters to the blocks' projections it names (training; see bigjax.lora)."""
  if cfg.family not in _FAMILIES:
    raise ConfigError(f"model.family={cfg.family!r}: supported families are {', '.join(_FAMILIES)}")
  extra = {"lora": lora} if lora is not None else {}
  if decode:
    if cfg.family == "encoder":
      raise ConfigError("model.family='encoder' does not generate text; decoding needs decoder or encoder_decoder")
    module = _FAMILIES[cfg.family](cfg, decode=True, **extra)
  else:
    module = _FAMILIES[cfg.family](cfg, **extra)
  if cfg.quantize == "int8_qat":  # Qwix's quantization-aware training: float params, int8-rounded in use.
    from bigjax import quantize  # pylint: disable=g-import-not-at-top
    return quantize.qat_module(module, cfg)
  if cfg.quantize != "none":  # Qwix's int8 (bigjax.quantize); params as plain dicts.
    from bigjax import quantize  # pylint: disable=g-import-not-at-top
    return quantize.QuantizedModule(module, cfg)
  return module


# ----------------------------------------------------------------------------------- decoding

def init_cache(cfg: ModelConfig, batch: int, length: int, encoder_length: int = 1):
  """An empty KV cache (zeros) for `batch` rows of up to `length` tokens; built by shape, nothing run."""
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                _cache_shapes(cfg, batch, length, encoder_length))


@functools.lru_cache(maxsize=32)
def _cache_shapes(cfg: ModelConfig, batch: int, length: int, encoder_length: int):
  """The cache's shapes, traced once per setting: tracing the model's init took 0.25 s of every
  `decode.for_model` call (T5-small, 2026-12-02), a third of a batch-1 generation of 64 tokens."""
  module = build(cfg, decode=True)
  ids = jnp.zeros((batch, length), jnp.int32)
  if cfg.family == "encoder_decoder":
    enc = jnp.zeros((batch, encoder_length, cfg.d_model), jnp.dtype(cfg.dtype))
    enc_mask = jnp.ones((batch, encoder_length), jnp.int32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, enc, enc_mask,
                                                method=module.decode_step))
  else:
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids))
  return dict(shapes["cache"])


def step_fn(cfg: ModelConfig, params, encoded=None, encoder_mask=None):
  """`(tokens [rows, n], cache) -> (logits [rows, n, vocab], cache)` for `bigjax.decode`.

  For encoder_decoder, `encoded` `[rows, enc_len, d_model]` and `encoder_mask` `[rows, enc_len]` are the
  encoder's output for each row (see `EncoderDecoder.encode`); the decoder attends over them.
  """
  module = build(cfg, decode=True)

  def fn(tokens, cache):
    variables = {"params": params, "cache": cache}
    if cfg.family == "encoder_decoder":
      logits, out = module.apply(variables, tokens, encoded, encoder_mask, method=module.decode_step,
                                 mutable=["cache"])
    else:
      logits, out = module.apply(variables, tokens, mutable=["cache"])
    return logits, out["cache"]

  return fn


def uncached_step_fn(cfg: ModelConfig, params, total_len: int):
  """A `step_fn` with no KV cache: its "cache" is the token buffer, and every call runs the whole
  buffer through the model again. The reference that cached decoding must equal, and its baseline.
  Returns `(step_fn, empty_cache_fn(rows))`. Decoder family only."""
  if cfg.family != "decoder":
    raise ConfigError("uncached_step_fn: only model.family='decoder' scores a token buffer on its own")
  module = build(cfg)

  def fn(tokens, cache):
    n = tokens.shape[1]
    buf = jax.lax.dynamic_update_slice(cache["tokens"], tokens.astype(jnp.int32), (0, cache["index"]))
    logits = module.apply({"params": params}, buf)
    out = jax.lax.dynamic_slice_in_dim(logits, cache["index"], n, axis=1)
    return out, {"tokens": buf, "index": cache["index"] + n}

  def empty(rows: int):
    return {"tokens": jnp.zeros((rows, total_len), jnp.int32), "index": jnp.zeros((), jnp.int32)}

  return fn, empty
