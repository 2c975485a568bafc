"""Encoder-decoder: T5 v1.0 / v1.1 (Raffel et al. 2019).

Shared token embedding (no position table), relative-position buckets (one learned bias table per
stack, computed once and added in every layer), RMSNorm without bias, pre-norm blocks, no attention
logit scaling. v1.0: ReLU MLP and tied output layer, with the decoder output scaled by d_model**-0.5;
v1.1: gated-GELU MLP and an untied output layer (no scaling).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from bigjax.models import layers
from bigjax.config import ModelConfig
from bigjax.models.decoder import decode_position


class EncoderStack(nn.Module):
  cfg: ModelConfig
  lora: layers.Lora | None = None

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.cfg
    n = x.shape[1]
    bias = layers.RelativePositionBias(cfg, bidirectional=True, name="relative_bias")(jnp.arange(n), n)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.Stack(cfg, cfg.num_layers, deterministic=deterministic, lora=self.lora, name="layers")(x, mask, bias)
    x = layers.norm(cfg, "ln_final")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class DecoderStack(nn.Module):
  cfg: ModelConfig
  decode: bool = False
  lora: layers.Lora | None = None

  @nn.compact
  def __call__(self, x, self_mask, encoded, cross_mask, deterministic: bool):
    cfg = self.cfg
    n = x.shape[1]
    if self.decode:
      index, kv_len = decode_position(self, x[..., 0])
      mask = layers.causal_mask(n, kv_len, offset=index)[None, None]
      q_positions = index + jnp.arange(n)
    else:
      index, kv_len, q_positions = None, n, jnp.arange(n)
      mask = self_mask if isinstance(self_mask, layers.Segments) else layers.combine_masks(
          layers.causal_mask(n)[None, None], self_mask)
    bias = layers.RelativePositionBias(cfg, bidirectional=False, name="relative_bias")(q_positions, kv_len)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.Stack(cfg, cfg.decoder_layers, cross=True, decode=self.decode, deterministic=deterministic,
                     causal=True, lora=self.lora, name="layers")(x, mask, bias, None, encoded, cross_mask, index)
    x = layers.norm(cfg, "ln_final")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class EncoderDecoder(nn.Module):
  """`apply({"params": p}, input_ids, decoder_input_ids, attention_mask=m, decoder_attention_mask=dm)`
  → decoder logits `[batch, dec_len, vocab]` (float32). `encode` and `decode_step` are the two halves,
  used by generation (the encoder runs once; the decoder steps with a KV cache when `decode=True`).
  `output="head"` returns the output layer unapplied (`layers.Head`), for the train loss.

  Packed rows pass `segment_ids` (encoder) and `decoder_segment_ids` (1, 2, ... per example, 0 for
  padding): no attention crosses a segment, and decoder segment k attends to encoder segment k only.
  Positions need no restart: T5's relative bias sees only differences of positions within a segment,
  which packing leaves unchanged."""

  cfg: ModelConfig
  decode: bool = False
  lora: layers.Lora | None = None  # Low-rank adapters (training with train.lora_rank; see bigjax.lora).

  def setup(self):
    cfg = self.cfg
    self.token_embed = layers.Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), cfg.init_std,
                                    cfg.dtype, cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = layers.Dense((cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                                  init_std=layers.kernel_std(cfg, cfg.d_model), dtype=cfg.dtype,
                                  param_dtype=cfg.param_dtype, decode=self.decode)
    self.encoder = EncoderStack(cfg, self.lora)
    self.decoder = DecoderStack(cfg, self.decode, self.lora)

  def encode(self, input_ids, attention_mask=None, segment_ids=None, deterministic: bool = True):
    x = self.token_embed(input_ids)
    if layers.uses_flash(self.cfg, deterministic=deterministic, decode=self.decode):
      mask = layers.self_segments(attention_mask, segment_ids)
    else:
      mask = layers.combine_masks(layers.padding_mask(attention_mask), layers.segment_mask(segment_ids))
    return self.encoder(x, mask, deterministic)

  def decode_step(self, decoder_input_ids, encoded, attention_mask=None, decoder_attention_mask=None,
                  segment_ids=None, decoder_segment_ids=None, deterministic: bool = True,
                  output: str = "logits"):
    cfg = self.cfg
    if (segment_ids is None) != (decoder_segment_ids is None):
      raise ValueError("packed batches need both segment_ids and decoder_segment_ids")
    x = self.token_embed(decoder_input_ids)
    self_mask = cross_mask = None
    if not self.decode:
      self_mask = layers.combine_masks(layers.padding_mask(decoder_attention_mask),
                                       layers.segment_mask(decoder_segment_ids))
    cross_mask = layers.combine_masks(layers.padding_mask(attention_mask),
                                      layers.segment_mask(decoder_segment_ids, segment_ids))
    if layers.uses_flash(self.cfg, deterministic=deterministic, decode=self.decode):
      self_mask = layers.self_segments(decoder_attention_mask, decoder_segment_ids)
      cross_mask = layers.cross_segments(decoder_input_ids.shape, decoder_segment_ids, attention_mask, segment_ids)
    x = self.decoder(x, self_mask, encoded, cross_mask, deterministic)
    defer = output == "head"
    if cfg.tie_embeddings:
      logits = self.token_embed.attend(x * jnp.asarray(cfg.d_model ** -0.5, x.dtype), decode=self.decode,
                                       defer=defer)
    else:
      logits = self.lm_head(x, defer=defer)
    if isinstance(logits, layers.Head):
      return logits
    logits = layers.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits.astype(jnp.float32)

  def __call__(self, input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None,
               segment_ids=None, decoder_segment_ids=None, deterministic: bool = True, output: str = "logits"):
    encoded = self.encode(input_ids, attention_mask, segment_ids, deterministic)
    return self.decode_step(decoder_input_ids, encoded, attention_mask, decoder_attention_mask, segment_ids,
                            decoder_segment_ids, deterministic, output)
