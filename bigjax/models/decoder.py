"""Decoder-only language model: GPT-2 by default (learned positions, pre-LayerNorm, GELU, tied output),
and the options research decoders use now (rotary positions, RMSNorm, SwiGLU, no biases, untied output:
a Llama-style model is `positions="rotary", norm="rmsnorm", activation="silu", gated_mlp=True,
use_bias=False, tie_embeddings=False`; Mistral adds `sliding_window`, Qwen2 `qkv_bias`, Qwen3 `qk_norm`,
Gemma `norm_plus_one` and `embed_scale` with a gated tanh-GELU).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from bigjax.models import layers
from bigjax.config import ConfigError, ModelConfig


def decode_position(module: nn.Module, tokens):
  """In decode mode: (index, cache length) from the module's "cache" collection; advances the index.

  `slots` `[rows, L]` holds each row's cache positions 0..L-1: its static shape says how long the cache
  is (set by `init(..., decode=True)` with an input of that length). It has a row axis like every other
  non-scalar cache entry, so that beam search can reorder the cache rows uniformly.
  """
  rows, n = tokens.shape
  index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
  slots = module.variable("cache", "slots", lambda: jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (rows, n)))
  start = index.value
  if not module.is_initializing():
    index.value = start + n
  return start, slots.value.shape[1]


class Decoder(nn.Module):
  """`apply({"params": p}, input_ids, attention_mask=m)` → logits `[batch, length, vocab]` (float32).

  `attention_mask` `[batch, length]` is 1 for real tokens and 0 for padding; padded keys are never
  attended to. `positions` (default 0..length-1) index the learned table or set the rotary angles.
  Packed rows pass `segment_ids` (1, 2, ... per example, 0 for padding: attention never crosses a
  segment) and `positions` that restart at 0 in each segment. `prefix_mask` (1 on a prefix LM's inputs)
  makes the prefix visible both ways, as in T5's decoder-only prefix LM; the rest stays causal.
  `branch_ids` lay several continuations of one shared prefix out in one row (tree attention): 0 on the
  shared tokens, j on continuation j's; a token sees the shared tokens and its own branch's earlier
  tokens, never another branch's (give each branch the `positions` it would have after the prefix).
  With `decode=True` the call processes the next tokens after those already in the "cache" collection
  (see `bigjax.models.step_fn`). `output="head"` returns the output layer unapplied (`layers.Head`), for
  the train loss.
  """

  cfg: ModelConfig
  decode: bool = False
  lora: layers.Lora | None = None  # Low-rank adapters (training with train.lora_rank; see bigjax.lora).

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, positions=None, segment_ids=None, prefix_mask=None,
               branch_ids=None, deterministic: bool = True, output: str = "logits"):
    cfg = self.cfg
    b, n = input_ids.shape
    tokens = layers.Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), cfg.init_std,
                          cfg.dtype, cfg.param_dtype, name="token_embed")
    flash = layers.uses_flash(cfg, deterministic=deterministic, decode=self.decode)
    if self.decode:
      if segment_ids is not None or prefix_mask is not None or branch_ids is not None:
        raise ValueError("decode=True steps one sequence per row: segment_ids, prefix_mask and branch_ids are "
                         "for training and scoring")
      index, kv_len = decode_position(self, input_ids)
      positions = jnp.broadcast_to(index + jnp.arange(n), (b, n))
      mask = layers.causal_mask(n, kv_len, offset=index, window=cfg.sliding_window)[None, None]
    else:
      index = None
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(n), (b, n))
      mask = layers.causal_mask(n, window=cfg.sliding_window)[None, None]
      if prefix_mask is not None:
        if flash:
          raise ConfigError("model.attention='flash' has causal and segment masks only, not a prefix LM's; "
                            "use 'auto', 'plain', 'xla' or 'cudnn'")
        mask = jnp.logical_or(mask, layers.prefix_visible(prefix_mask))
      if branch_ids is not None:
        if flash:
          raise ConfigError("model.attention='flash' has causal and segment masks only, not branch_ids' "
                            "shared-prefix mask; use 'auto', 'plain', 'xla' or 'cudnn'")
        kb = branch_ids[:, None, None, :]
        mask = jnp.logical_and(mask, (kb == 0) | (kb == branch_ids[:, None, :, None]))
    mask = layers.combine_masks(mask, None if self.decode else layers.padding_mask(attention_mask),
                                layers.segment_mask(segment_ids))
    if flash:
      if cfg.sliding_window:
        raise ConfigError(f"model.attention='flash' has no sliding window (model.sliding_window="
                          f"{cfg.sliding_window}); use 'auto', 'plain', 'xla' or 'cudnn'")
      mask = layers.self_segments(attention_mask, segment_ids)

    x = tokens(input_ids)
    if cfg.embed_scale:  # Gemma: the scale in the compute dtype, as Hugging Face's Gemma rounds it.
      x = x * jnp.asarray(cfg.d_model ** 0.5, x.dtype)
    if cfg.positions == "learned":
      x = x + layers.Embed(cfg.max_len, cfg.d_model, ("length", "embed"), 0.01,
                           cfg.dtype, cfg.param_dtype, name="position_embed")(positions)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BTE)
    x = layers.Stack(cfg, cfg.num_layers, decode=self.decode, deterministic=deterministic, causal=True,
                     lora=self.lora, name="decoder")(
        x, mask, None, positions, None, None, index)
    x = layers.norm(cfg, "ln_final")(x)
    defer = output == "head"
    if cfg.tie_embeddings:
      logits = tokens.attend(x, decode=self.decode, defer=defer)
    else:
      logits = layers.Dense((cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                            init_std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                            decode=self.decode, name="lm_head")(x, defer=defer)
    if isinstance(logits, layers.Head):
      return logits
    logits = layers.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits.astype(jnp.float32)
