"""Optax optimizer: AdamW with linear warmup + cosine decay, weight-decay mask, global-norm clipping."""

from __future__ import annotations

import jax
import optax

# Parameters whose name is one of these are never weight-decayed: biases, norm scales, embeddings.
NO_DECAY = ("bias", "scale", "embedding")


def schedule(config) -> optax.Schedule:
  o = config.optim
  steps = max(config.train.steps, o.warmup_steps + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=steps, end_value=o.learning_rate * o.end_lr_ratio)


def decay_mask(params):
  """True where weight decay applies: matrices, not biases, norm scales or embeddings."""
  def keep(path, _):
    # The last dict key is the param's name (a logical-partitioning box may add a `.value` after it).
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return names[-1] not in NO_DECAY
  return jax.tree_util.tree_map_with_path(keep, params)


def make(config) -> optax.GradientTransformation:
  o = config.optim
  parts = []
  if o.clip_norm:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  parts.append(optax.adamw(schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
