"""Model families: `build(cfg)` returns the linen module for a `ModelConfig`.

One calling convention for every family:
  encoder, decoder:  `module.apply({"params": p}, input_ids, attention_mask=m)` → logits `[b, l, vocab]`
                     (the encoder's classifier head gives `[b, num_labels]`);
  encoder_decoder:   `module.apply({"params": p}, input_ids, decoder_input_ids, attention_mask=m,
                     decoder_attention_mask=dm)` → the decoder's logits `[b, l_dec, vocab]`.

Also here: converting params between the scanned (`cfg.scan_layers`) and unscanned layouts, and the
KV-cache step functions that `bigjax.decode` drives.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.config import ConfigError, ModelConfig
from bigjax.models.decoder import Decoder
from bigjax.models.encoder import Encoder
from bigjax.models.encoder_decoder import EncoderDecoder

_FAMILIES = {"encoder": Encoder, "decoder": Decoder, "encoder_decoder": EncoderDecoder}


def build(cfg: ModelConfig, *, decode: bool = False):
  """The module for `cfg`; `decode=True` (decoder and encoder_decoder) makes the KV-cache variant."""
  if cfg.family not in _FAMILIES:
    raise ConfigError(f"model.family={cfg.family!r}: supported families are {', '.join(_FAMILIES)}")
  if decode:
    if cfg.family == "encoder":
      raise ConfigError("model.family='encoder' does not generate text; decoding needs decoder or encoder_decoder")
    return _FAMILIES[cfg.family](cfg, decode=True)
  return _FAMILIES[cfg.family](cfg)


# ------------------------------------------------------------------------- scanned ⇄ unscanned layouts

_BLOCK = re.compile(r"block_(\d+)$")


def scan_params(params: dict) -> dict:
  """Unscanned params (`block_0`, `block_1`, ... under each stack) → scanned (`blocks`, leading layer axis)."""
  if not isinstance(params, dict):
    return params
  blocks = {k: v for k, v in params.items() if _BLOCK.match(k)}
  out = {k: scan_params(v) for k, v in params.items() if k not in blocks}
  if blocks:
    order = sorted(blocks, key=lambda k: int(_BLOCK.match(k).group(1)))
    if [int(_BLOCK.match(k).group(1)) for k in order] != list(range(len(order))):
      raise ConfigError(f"scan_params: blocks {order} are not numbered 0..{len(order) - 1}")
    out["blocks"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs) if isinstance(xs[0], jax.Array)
                                           else np.stack(xs), *[blocks[k] for k in order])
  return out


def unscan_params(params: dict) -> dict:
  """Scanned params (`blocks` with a leading layer axis) → unscanned (`block_0`, `block_1`, ...)."""
  if not isinstance(params, dict):
    return params
  out = {k: unscan_params(v) for k, v in params.items() if k != "blocks"}
  if "blocks" in params:
    n = jax.tree_util.tree_leaves(params["blocks"])[0].shape[0]
    for i in range(n):
      out[f"block_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], params["blocks"])
  return out


def to_layout(cfg: ModelConfig, params: dict) -> dict:
  """`params` in the layout `cfg.scan_layers` asks for, whichever layout they come in."""
  scanned = _is_scanned(params)
  if cfg.scan_layers and not scanned:
    return scan_params(params)
  if not cfg.scan_layers and scanned:
    return unscan_params(params)
  return params


def _is_scanned(params) -> bool:
  if not isinstance(params, dict):
    return False
  return "blocks" in params or any(_is_scanned(v) for v in params.values())


# ----------------------------------------------------------------------------------- decoding

def init_cache(cfg: ModelConfig, batch: int, length: int, encoder_length: int = 1):
  """An empty KV cache (zeros) for `batch` rows of up to `length` tokens; built by shape, nothing run."""
  module = build(cfg, decode=True)
  ids = jnp.zeros((batch, length), jnp.int32)
  if cfg.family == "encoder_decoder":
    enc = jnp.zeros((batch, encoder_length, cfg.d_model), jnp.dtype(cfg.dtype))
    enc_mask = jnp.ones((batch, encoder_length), jnp.int32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, enc, enc_mask,
                                                method=module.decode_step))
  else:
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids))
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), dict(shapes["cache"]))


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
