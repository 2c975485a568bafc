"""Optax optimizers (AdamW, Adafactor, SGD, Lion), the learning-rate schedules, the weight-decay mask and
global-norm clipping. Adafactor's factored statistics carry logical axis names derived from their parameter's
(`boxed_adafactor`), so they shard by the same rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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


def _factored_dims(shape, min_dim: int):
  """The (second largest, largest) axes optax's Adafactor factors a parameter over, or None (its rule)."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape)
  if shape[order[-2]] < min_dim:
    return None
  return int(order[-2]), int(order[-1])


def boxed_adafactor(inner: optax.GradientTransformation, min_dim: int) -> optax.GradientTransformation:
  """`inner` (optax's Adafactor) on boxed params: its state is initialised on the unboxed values, then each
  statistic gets its parameter's logical names (v_row without the largest axis, v_col without the second
  largest, v all of them when the parameter is not factored), so `partitioning` shards it like the
  parameter instead of finding names of the wrong rank."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  def init(params):
    raw = nn.meta.unbox(params)
    state = inner.init(raw)
    leaves, treedef = jax.tree_util.tree_flatten(raw)
    boxes = [b if isinstance(b, nn.Partitioned) else None  # nn.LogicallyPartitioned is one too.
             for b in jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))]

    def named(stats, which: str):
      out = []
      for stat, param, box in zip(treedef.flatten_up_to(stats), leaves, boxes):
        dims = _factored_dims(param.shape, min_dim)
        if box is None or (dims is None) != (which == "v"):  # Unnamed, or a (1,) placeholder.
          out.append(stat)
        elif which == "v":
          out.append(box.replace(value=stat))
        else:  # v_row drops the largest axis, v_col the second largest.
          drop = dims[1] if which == "v_row" else dims[0]
          out.append(box.replace(value=stat, names=tuple(n for i, n in enumerate(box.names) if i != drop)))
      return treedef.unflatten(out)

    def rebox(s):
      if not hasattr(s, "v_row"):
        return s
      return s._replace(v_row=named(s.v_row, "v_row"), v_col=named(s.v_col, "v_col"), v=named(s.v, "v"))

    return jax.tree_util.tree_map(rebox, state, is_leaf=lambda x: hasattr(x, "v_row"))

  return optax.GradientTransformation(init, inner.update)


def make(config) -> optax.GradientTransformation:
  """The optimizer `optim.name` names, after global-norm clipping (`optim.clip_norm`); weight decay (where
  `optim.weight_decay` > 0) never touches biases, norm scales or embeddings."""
  o = config.optim
  name = o.get("name", "adamw")
  if name not in config_lib.OPTIMIZERS:
    raise ConfigError(f"optim.name={name!r}: allowed values are {', '.join(map(repr, config_lib.OPTIMIZERS))}")
  lr, wd = schedule(config), o.weight_decay
  parts = []
  if o.clip_norm:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  if name == "adamw":
    parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=decay_mask))
  elif name == "lion":
    parts.append(optax.lion(lr, b1=o.b1, b2=o.b2, weight_decay=wd, mask=decay_mask))
  elif name == "sgd":
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
    parts.append(optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov))
  else:
    min_dim = o.get("adafactor_min_dim_to_factor", 128)
    parts.append(boxed_adafactor(optax.adafactor(
        lr, min_dim_size_to_factor=min_dim, decay_rate=o.get("adafactor_decay_rate", 0.8),
        multiply_by_parameter_scale=o.get("adafactor_parameter_scale", True),
        clipping_threshold=o.get("adafactor_clipping", 1.0) or None, weight_decay_rate=wd or None,
        weight_decay_mask=decay_mask if wd else None), min_dim))
  from bigjax import prune  # pylint: disable=g-import-not-at-top
  pruning = prune.spec(config)
  tx = optax.chain(*parts)
  return prune.transformation(tx, pruning) if pruning is not None else tx
