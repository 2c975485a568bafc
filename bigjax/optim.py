"""Optax optimizer: AdamW with linear warmup + cosine decay, weight-decay mask, global-norm clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bigjax.config import ConfigError

# Parameters whose name is one of these are never weight-decayed: biases, norm scales, embeddings.
NO_DECAY = ("bias", "scale", "embedding")


SCHEDULES = ("cosine", "linear", "rsqrt", "constant")


def schedule(config) -> optax.Schedule:
  """The learning rate by step (`optim.schedule`), peaking at `optim.learning_rate`:
  cosine / linear: linear warmup from 0 over `optim.warmup_steps`, then cosine / linear decay to
  `learning_rate * end_lr_ratio` at `train.steps` (BERT's schedule is linear);
  rsqrt: T5's inverse square root: the peak for `warmup_steps`, then `peak * sqrt(warmup_steps / step)`;
  constant: linear warmup, then the peak."""
  o = config.optim
  name = o.get("schedule", "cosine")
  if name not in SCHEDULES:
    raise ConfigError(f"optim.schedule={name!r}: allowed values are {', '.join(map(repr, SCHEDULES))}")
  steps = max(config.train.steps, o.warmup_steps + 1)
  peak, end = o.learning_rate, o.learning_rate * o.end_lr_ratio
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=o.warmup_steps,
                                              decay_steps=steps, end_value=end)
  if name == "rsqrt":
    warm = max(o.warmup_steps, 1)
    return lambda step: peak * jnp.sqrt(warm / jnp.maximum(jnp.asarray(step, jnp.float32), warm))
  warmup = optax.linear_schedule(0.0, peak, o.warmup_steps)
  after = (optax.linear_schedule(peak, end, steps - o.warmup_steps) if name == "linear"
           else optax.constant_schedule(peak))
  return optax.join_schedules([warmup, after], [o.warmup_steps])


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
