"""GPT-2 style decoder: learned positions, pre-LayerNorm blocks, GELU MLP, tied output embedding."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from bigjax import layers
from bigjax.config import ModelConfig


class DecoderBlock(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool = True):
    cfg = self.cfg
    ln = lambda name: layers.LayerNorm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, name=name)
    x = x + layers.SelfAttention(cfg, name="attention")(ln("ln_attention")(x), mask, deterministic)
    x = x + layers.Mlp(cfg, name="mlp")(ln("ln_mlp")(x), deterministic)
    return layers.constrain(x, layers.BTE)


class Decoder(nn.Module):
  """`apply({"params": p}, input_ids, attention_mask=m)` → logits `[batch, length, vocab]` (float32).

  `attention_mask` `[batch, length]` is 1 for real tokens and 0 for padding; padded keys are never
  attended to. `positions` (default 0..length-1) index the learned position table.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, positions=None, deterministic: bool = True):
    cfg = self.cfg
    b, length = input_ids.shape
    tokens = layers.Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), cfg.init_std,
                          cfg.dtype, cfg.param_dtype, name="token_embed")
    pos_table = layers.Embed(cfg.max_len, cfg.d_model, ("length", "embed"), 0.01,
                             cfg.dtype, cfg.param_dtype, name="position_embed")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    x = tokens(input_ids) + pos_table(positions)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BTE)

    mask = layers.causal_mask(length)[None, None]
    if attention_mask is not None:
      mask = jnp.logical_and(mask, attention_mask.astype(jnp.bool_)[:, None, None, :])

    for i in range(cfg.num_layers):
      x = DecoderBlock(cfg, name=f"block_{i}")(x, mask, deterministic)
    x = layers.LayerNorm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, name="ln_final")(x)
    if cfg.tie_embeddings:
      logits = tokens.attend(x)
    else:
      logits = layers.Dense((cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                            init_std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                            name="lm_head")(x)
    logits = layers.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits.astype(jnp.float32)
