"""Optax optimizer: AdamW, the learning-rate schedules, weight-decay mask, global-norm clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bigjax import config as config_lib
from bigjax.config import ConfigError

# Parameters whose name is one of these are never weight-decayed: biases, norm scales, embeddings.
NO_DECAY = ("bias", "scale", "embedding")


SCHEDULES = ("cosine", "linear", "rsqrt", "constant")


def decay_steps(config) -> int:
  """The step at which cosine / linear decay reach their end value: `optim.decay_steps`, or `train.steps`
  while that is 0 (the trainer pins the first run's value in the workdir, so a longer resume does not
  reshape the curve). At least warmup_steps + 1."""
  o = config.optim
  set_steps = o.get("decay_steps", 0)
  config_lib.check_decay_steps(set_steps)
  return max(set_steps or config.train.steps, o.warmup_steps + 1)


def schedule(config) -> optax.Schedule:
  """The learning rate by step (`optim.schedule`), peaking at `optim.learning_rate`:
  cosine / linear: linear warmup from 0 over `optim.warmup_steps`, then cosine / linear decay to
  `learning_rate * end_lr_ratio` at `decay_steps(config)`, held there after (BERT's schedule is linear);
  rsqrt: T5's inverse square root: the peak for `warmup_steps`, then `peak * sqrt(warmup_steps / step)`;
  constant: linear warmup, then the peak."""
  o = config.optim
  name = _name(config)
  peak, end = o.learning_rate, o.learning_rate * o.end_lr_ratio
  if name == "rsqrt":
    warm = max(o.warmup_steps, 1)
    return lambda step: peak * jnp.sqrt(warm / jnp.maximum(jnp.asarray(step, jnp.float32), warm))
  if name == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, o.warmup_steps), optax.constant_schedule(peak)],
                                [o.warmup_steps])
  steps = decay_steps(config)
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=o.warmup_steps,
                                              decay_steps=steps, end_value=end)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, o.warmup_steps),
                               optax.linear_schedule(peak, end, steps - o.warmup_steps)], [o.warmup_steps])


def describe_schedule(config) -> str:
  """One line for the start-up log, so the horizon a run decays over is visible, e.g.
  "cosine: warmup 100 steps to 0.001, decay to 0.0001 at step 520 (optim.decay_steps), then held"."""
  o = config.optim
  name = _name(config)
  peak, end = o.learning_rate, o.learning_rate * o.end_lr_ratio
  if name == "rsqrt":
    warm = max(o.warmup_steps, 1)
    return f"rsqrt: {peak:.3g} for {warm} steps, then {peak:.3g} * sqrt({warm} / step)"
  if name == "constant":
    return f"constant: warmup {o.warmup_steps} steps to {peak:.3g}, then held"
  source = "optim.decay_steps" if o.get("decay_steps", 0) else "train.steps"
  raw, horizon = o.get("decay_steps", 0) or config.train.steps, decay_steps(config)
  if raw != horizon:  # A horizon inside the warmup: the decay is one step, right after it.
    source += f"={raw}, raised past warmup_steps"
  return (f"{name}: warmup {o.warmup_steps} steps to {peak:.3g}, decay to {end:.3g} at step {horizon} "
          f"({source}), then held")


def _name(config) -> str:
  name = config.optim.get("schedule", "cosine")
  if name not in SCHEDULES:
    raise ConfigError(f"optim.schedule={name!r}: allowed values are {', '.join(map(repr, SCHEDULES))}")
  return name


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
