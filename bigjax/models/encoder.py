"""Encoder: BERT (token + segment + learned position embeddings, post-LayerNorm blocks) with its heads.

`cfg.encoder_head` picks what `__call__` returns:
  "mlm"        — masked-LM logits `[batch, length, vocab]` (dense + activation + norm, then the tied or
                 untied output layer with a per-token bias), as BertForMaskedLM;
  "classifier" — logits `[batch, num_labels]` from the pooled first ([CLS]) token (dense + tanh), as
                 BertForSequenceClassification;
  "none"       — the last hidden states `[batch, length, d_model]`, as BertModel (whose pooler weights
                 are kept, so that a classifier can be fine-tuned from them).
With `output="head"` the MLM head returns its output layer unapplied (`layers.Head`, the bias with it), for
the train loss; the other heads return what they always do.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from bigjax.models import layers
from bigjax.config import ModelConfig


class Encoder(nn.Module):
  """`apply({"params": p}, input_ids, attention_mask=m, token_type_ids=s)`; see the module docstring."""

  cfg: ModelConfig
  lora: layers.Lora | None = None  # Low-rank adapters (training with train.lora_rank; see bigjax.lora).

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, positions=None, segment_ids=None,
               deterministic: bool = True, output: str = "logits"):
    cfg = self.cfg
    b, n = input_ids.shape
    dense = lambda features, names, name: layers.Dense(
        features, ("embed",), names, use_bias=cfg.use_bias, init_std=cfg.init_std, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, name=name)
    tokens = layers.Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), cfg.init_std,
                          cfg.dtype, cfg.param_dtype, name="token_embed")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(n), (b, n))
    x = tokens(input_ids)
    if cfg.positions == "learned":
      x = x + layers.Embed(cfg.max_len, cfg.d_model, ("length", "embed"), cfg.init_std,
                           cfg.dtype, cfg.param_dtype, name="position_embed")(positions)
    if cfg.type_vocab_size:
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + layers.Embed(cfg.type_vocab_size, cfg.d_model, ("segments", "embed"), cfg.init_std,
                           cfg.dtype, cfg.param_dtype, name="segment_embed")(token_type_ids)
    if cfg.norm_position == "post":
      x = layers.norm(cfg, "ln_embed")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    # Pinned after the (possibly scanned) stack: left to propagation, the MLM head's backward pass got
    # wrong gradients from XLA's SPMD partitioner on a (2, 2, 2) mesh (tests/test_meshes.py).
    x = layers.constrain(x, layers.BTE)
    # Packed rows (segment_ids 1, 2, ...; 0 = padding) attend within their segment only.
    mask = layers.combine_masks(layers.padding_mask(attention_mask), layers.segment_mask(segment_ids))
    if layers.uses_flash(cfg, deterministic=deterministic):
      mask = layers.self_segments(attention_mask, segment_ids)
    x = layers.Stack(cfg, cfg.num_layers, deterministic=deterministic, lora=self.lora, name="encoder")(
        x, mask, None, positions)
    x = layers.constrain(x, layers.BTE)
    if cfg.norm_position == "pre":
      x = layers.norm(cfg, "ln_final")(x)

    if cfg.encoder_head == "mlm":
      # The transform's output is named `embed`, not `mlp`: mlm_ln normalises over it, and a norm over a
      # tensor-sharded feature axis gave wrong gradients on a (2, 2, 2) mesh (XLA SPMD; tests/test_meshes.py).
      h = layers.ACTIVATIONS[cfg.activation](layers.Dense(
          (cfg.d_model,), ("mlp",), ("embed",), use_bias=cfg.use_bias, init_std=cfg.init_std, dtype=cfg.dtype,
          param_dtype=cfg.param_dtype, name="mlm_dense")(x))
      h = layers.norm(cfg, "mlm_ln")(h)
      defer = output == "head"
      if cfg.tie_embeddings:
        logits = tokens.attend(h, defer=defer)
      else:
        logits = layers.Dense((cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False, init_std=cfg.init_std,
                              dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="lm_head")(h, defer=defer)
      bias = self.param("mlm_bias", layers.param_init(nn.initializers.zeros, ("vocab",)), (cfg.vocab_size,),
                        layers.dtype_of(cfg.param_dtype))
      if isinstance(logits, layers.Head):
        return logits._replace(bias=bias)
      logits = layers.constrain(logits + bias.astype(logits.dtype),
                                ("activation_batch", "activation_length", "activation_vocab"))
      return logits.astype(jnp.float32)
    pooled = jnp.tanh(dense((cfg.d_model,), ("mlp",), "pooler")(x[:, 0]))
    if cfg.encoder_head == "none":
      return x  # The pooler's params exist (BertModel has them); its output is not needed here.
    pooled = nn.Dropout(cfg.dropout_rate)(pooled, deterministic=deterministic)
    logits = layers.Dense((cfg.num_labels,), ("mlp",), ("labels",), use_bias=True, init_std=cfg.init_std,
                          dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="classifier")(pooled)
    return logits.astype(jnp.float32)
