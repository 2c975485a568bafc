"""Magnitude pruning as an Optax transformation: the masks live in the optimizer state.

`train.prune`:
  "magnitude"  unstructured: the `train.prune_sparsity` fraction of smallest-|w| weights of the targeted
               kernels is zero, over all of them at once (`train.prune_scope="global"`) or within each
               weight matrix (`"layer"`; a scanned stack's matrices one by one), reached gradually by Zhu &
               Gupta's (2017) cubic schedule s_t = s_f (1 - (1 - (t - t0) / (t1 - t0))^3) from
               `train.prune_start` (t0) to `train.prune_end` (t1), the masks recomputed every
               `train.prune_every` steps and at t1.
  "n:m"        structured N:M (`train.prune_n_m`, e.g. "2:4", what NVIDIA's sparse tensor cores run): in every
               group of M consecutive weights along a kernel's last input axis the N largest |w| are kept,
               from `train.prune_start` on (masks recomputed as above).
`train.prune_targets` is a regular expression over flat param names (default: the attention and MLP
kernels of the blocks; embeddings, norms and biases are never pruned unless named).

The transformation wraps the whole optimizer: it computes the inner update, takes the weights that update
would give, recomputes the masks when the schedule says (by rank, so exactly the stated count is zero,
ties broken by position), and returns for a pruned weight the update -w, so that w + update is exactly 0:
pruned weights stay exactly zero through training, and, the masks being optimizer state, through
checkpoints and resume (bit-exact as any other state).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigjax.config import ConfigError

KINDS = ("none", "magnitude", "n:m")
SCOPES = ("global", "layer")
DEFAULT_TARGETS = r"(attention|mlp)/[^/]+/kernel$"


class Spec(NamedTuple):
  kind: str
  sparsity: float
  scope: str
  n: int
  m: int
  start: int
  end: int
  every: int
  targets: str


def spec(config) -> Spec | None:
  """The run's pruning from `train.prune*`, or None; a ConfigError names a bad setting."""
  t = config.train
  kind = t.get("prune", "none")
  if kind not in KINDS:
    raise ConfigError(f"train.prune={kind!r}: allowed values are {', '.join(map(repr, KINDS))}")
  if kind == "none":
    return None
  scope = t.get("prune_scope", "global")
  if scope not in SCOPES:
    raise ConfigError(f"train.prune_scope={scope!r}: allowed values are {', '.join(map(repr, SCOPES))}")
  sparsity = float(t.get("prune_sparsity", 0.5))
  if kind == "magnitude" and not 0.0 < sparsity < 1.0:
    raise ConfigError(f"train.prune_sparsity={sparsity}: must be in (0, 1)")
  n_m = str(t.get("prune_n_m", "2:4"))
  try:
    n, m = (int(x) for x in n_m.split(":"))
    assert 0 < n < m
  except (ValueError, AssertionError):
    raise ConfigError(f"train.prune_n_m={n_m!r}: must be N:M with 0 < N < M, e.g. '2:4'") from None
  start, end, every = int(t.get("prune_start", 0)), int(t.get("prune_end", 0) or t.steps), int(t.get("prune_every", 10))
  if start < 0 or end < start or every < 1:
    raise ConfigError(f"train.prune_start={start}, train.prune_end={end}, train.prune_every={every}: need "
                      "0 <= start <= end and every >= 1")
  targets = str(t.get("prune_targets", DEFAULT_TARGETS))
  try:
    re.compile(targets)
  except re.error as e:
    raise ConfigError(f"train.prune_targets={targets!r} is not a regular expression: {e}") from None
  return Spec(kind, 1.0 - n / m if kind == "n:m" else sparsity, scope, n, m, start, end, every, targets)


class PruneState(NamedTuple):
  count: jax.Array  # Updates applied so far (the step the next update makes).
  masks: Any  # {flat param name: bool array}, True = kept.
  inner: Any


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _unflat(d):
  return flax.traverse_util.unflatten_dict(d, sep="/")


def target_names(params, s: Spec) -> list[str]:
  names = [k for k in _flat(params) if re.search(s.targets, k)]
  if not names:
    raise ConfigError(f"train.prune_targets={s.targets!r} names no parameter the optimizer trains (e.g. "
                      f"{', '.join(list(_flat(params))[:3])})")
  return names


def target_sparsity(s: Spec, step) -> jax.Array:
  """Zhu & Gupta's cubic schedule (magnitude), or the N:M sparsity from `start` on."""
  t = jnp.asarray(step, jnp.float32)
  if s.kind == "n:m" or s.end == s.start:
    return jnp.where(t >= s.start, s.sparsity, 0.0)
  frac = jnp.clip((t - s.start) / (s.end - s.start), 0.0, 1.0)
  return s.sparsity * (1.0 - (1.0 - frac) ** 3)


def _keep_largest(x: jax.Array, sparsity) -> jax.Array:
  """True on all but the floor(sparsity * size) smallest |x| (ranks: exact counts, ties by position)."""
  flat = jnp.abs(x).reshape(-1)
  ranks = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)
  k = jnp.floor(sparsity * flat.size).astype(jnp.int32)
  return (ranks >= k).reshape(x.shape)


def _in_axis(name: str, ndim: int) -> int:
  """A kernel's last input axis: the attention output kernel [heads, kv, d] has two input axes, every other
  projection one (q/k/v [d, heads, kv], MLP [d, ff] / [ff, d]); a scanned stack adds the leading layer axis."""
  scanned = "/blocks/" in f"/{name}"
  first = 1 if scanned else 0
  inputs = 2 if re.search(r"attention/out/kernel$", name) else 1
  axis = first + inputs - 1
  if axis >= ndim:
    raise ConfigError(f"train.prune='n:m': cannot find the input axis of {name} (shape of rank {ndim})")
  return axis


def _n_m_axis(name: str, shape: tuple[int, ...], n: int, m: int) -> int:
  """The axis N:M groups run along in `name` of `shape`; a ConfigError when M does not divide it."""
  axis = _in_axis(name, len(shape))
  if shape[axis] % m:
    raise ConfigError(f"train.prune='n:m' ({n}:{m}): {name} has {shape[axis]} weights along its input axis "
                      f"{axis}, not a multiple of {m}; narrow train.prune_targets")
  return axis


def _n_m_mask(name: str, x: jax.Array, n: int, m: int) -> jax.Array:
  axis = _n_m_axis(name, x.shape, n, m)
  moved = jnp.moveaxis(jnp.abs(x), axis, -1)
  groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
  ranks = jnp.argsort(jnp.argsort(groups, axis=-1, stable=True), axis=-1, stable=True)
  keep = (ranks >= m - n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, axis)


def masks_for(s: Spec, weights: dict[str, jax.Array], sparsity) -> dict[str, jax.Array]:
  """The masks of `weights` (flat name → array) at `sparsity`."""
  if s.kind == "n:m":
    return {k: _n_m_mask(k, w, s.n, s.m) for k, w in weights.items()}
  if s.scope == "layer":
    out = {}
    for k, w in weights.items():
      if "/blocks/" in f"/{k}":  # Scanned: each layer's matrix on its own.
        out[k] = jax.vmap(lambda x: _keep_largest(x, sparsity))(w)
      else:
        out[k] = _keep_largest(w, sparsity)
    return out
  names = sorted(weights)
  sizes = [weights[k].size for k in names]
  keep = _keep_largest(jnp.concatenate([weights[k].reshape(-1).astype(jnp.float32) for k in names]), sparsity)
  offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
  parts = jnp.split(keep, offsets)
  return {k: p.reshape(weights[k].shape) for k, p in zip(names, parts)}


def transformation(inner: optax.GradientTransformation, s: Spec) -> optax.GradientTransformation:
  """`inner`, then pruning: see the module docstring."""

  def init(params):
    flat = _flat(params)
    masks = {}
    for k in target_names(params, s):
      p = flat[k]
      shape = jnp.shape(p.value if isinstance(p, nn.LogicallyPartitioned) else p)
      if s.kind == "n:m":  # Found at start-up, before anything is written.
        _n_m_axis(k, shape, s.n, s.m)
      if isinstance(p, nn.LogicallyPartitioned):  # Sharded like its parameter.
        masks[k] = p.replace(value=jnp.ones(p.value.shape, jnp.bool_))
      else:
        masks[k] = jnp.ones(jnp.shape(p), jnp.bool_)
    return PruneState(jnp.zeros([], jnp.int32), masks, inner.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("pruning needs the params in update()")
    updates, inner_state = inner.update(updates, state.inner, params)
    flat_u, flat_p = _flat(updates), _flat(params)
    step = state.count + 1  # The step this update completes.
    due = (step >= s.start) & (step <= s.end) & (((step - s.start) % s.every == 0) | (step == s.end))
    new = {k: flat_p[k] + flat_u[k] for k in state.masks}
    masks = jax.lax.cond(due, lambda: masks_for(s, new, target_sparsity(s, step)), lambda: dict(state.masks))
    for k, keep in masks.items():
      flat_u[k] = jnp.where(keep, flat_u[k], -flat_p[k])  # w + (-w) = 0 exactly.
    return _unflat(flat_u), PruneState(state.count + 1, masks, inner_state)

  return optax.GradientTransformation(init, update)


def sparsity(params, s: Spec) -> jax.Array:
  """Fraction of exact zeros over the targeted weights."""
  flat = _flat(params)
  names = [k for k in flat if re.search(s.targets, k)]
  zeros = sum(jnp.sum(flat[k] == 0) for k in names)
  return zeros / sum(flat[k].size for k in names)
