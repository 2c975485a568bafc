"""Encoder-decoder: T5 v1.0 / v1.1 (Raffel et al. 2019).

Shared token embedding (no position table), relative-position buckets (one learned bias table per
stack, computed once and added in every layer), RMSNorm without bias, pre-norm blocks, no attention
logit scaling. v1.0: ReLU MLP and tied output layer, with the decoder output scaled by d_model**-0.5;
v1.1: gated-GELU MLP and an untied output layer (no scaling).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from bigjax import layers
from bigjax.config import ModelConfig
from bigjax.models.decoder import decode_position


class EncoderStack(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool):
    cfg = self.cfg
    n = x.shape[1]
    bias = layers.RelativePositionBias(cfg, bidirectional=True, name="relative_bias")(jnp.arange(n), n)
    mask = layers.padding_mask(attention_mask)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.Stack(cfg, cfg.num_layers, deterministic=deterministic, name="layers")(x, mask, bias)
    x = layers.norm(cfg, "ln_final")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class DecoderStack(nn.Module):
  cfg: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x, attention_mask, encoded, encoder_mask, deterministic: bool):
    cfg = self.cfg
    n = x.shape[1]
    if self.decode:
      index, kv_len = decode_position(self, x[..., 0])
      mask = layers.causal_mask(n, kv_len, offset=index)[None, None]
      q_positions = index + jnp.arange(n)
    else:
      index, kv_len, q_positions = None, n, jnp.arange(n)
      mask = layers.combine_masks(layers.causal_mask(n)[None, None], layers.padding_mask(attention_mask))
    bias = layers.RelativePositionBias(cfg, bidirectional=False, name="relative_bias")(q_positions, kv_len)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.Stack(cfg, cfg.decoder_layers, cross=True, decode=self.decode, deterministic=deterministic,
                     name="layers")(x, mask, bias, None, encoded, layers.padding_mask(encoder_mask), index)
    x = layers.norm(cfg, "ln_final")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class EncoderDecoder(nn.Module):
  """`apply({"params": p}, input_ids, decoder_input_ids, attention_mask=m, decoder_attention_mask=dm)`
  → decoder logits `[batch, dec_len, vocab]` (float32). `encode` and `decode_step` are the two halves,
  used by generation (the encoder runs once; the decoder steps with a KV cache when `decode=True`)."""

  cfg: ModelConfig
  decode: bool = False

  def setup(self):
    cfg = self.cfg
    self.token_embed = layers.Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), cfg.init_std,
                                    cfg.dtype, cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = layers.Dense((cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                                  init_std=layers.kernel_std(cfg, cfg.d_model), dtype=cfg.dtype,
                                  param_dtype=cfg.param_dtype)
    self.encoder = EncoderStack(cfg)
    self.decoder = DecoderStack(cfg, self.decode)

  def encode(self, input_ids, attention_mask=None, deterministic: bool = True):
    x = self.token_embed(input_ids)
    return self.encoder(x, attention_mask, deterministic)

  def decode_step(self, decoder_input_ids, encoded, attention_mask=None, decoder_attention_mask=None,
                  deterministic: bool = True):
    cfg = self.cfg
    x = self.token_embed(decoder_input_ids)
    x = self.decoder(x, decoder_attention_mask, encoded, attention_mask, deterministic)
    if cfg.tie_embeddings:
      logits = self.token_embed.attend(x * jnp.asarray(cfg.d_model ** -0.5, x.dtype))
    else:
      logits = self.lm_head(x)
    logits = layers.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits.astype(jnp.float32)

  def __call__(self, input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None,
               deterministic: bool = True):
    encoded = self.encode(input_ids, attention_mask, deterministic)
    return self.decode_step(decoder_input_ids, encoded, attention_mask, decoder_attention_mask, deterministic)
