"""Shared transformer layers. Every param and activation carries logical axis names.

Param names: `vocab`, `embed`, `heads`, `kv`, `mlp`, `length`.
Activation names: `activation_batch`, `activation_length`, `activation_embed`, `activation_heads`,
`activation_kv`, `activation_mlp`, `activation_vocab` (kept apart from param names so that a rule can
shard a weight's `embed` over `fsdp` while the batch is on `fsdp` too). Only
`bigjax.partitioning` maps these names to a mesh; nothing here knows one.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.config import ModelConfig

Array = jax.Array

BTE = ("activation_batch", "activation_length", "activation_embed")
BTHD = ("activation_batch", "activation_length", "activation_heads", "activation_kv")


def constrain(x: Array, names: tuple[str, ...]) -> Array:
  return nn.with_logical_constraint(x, names)


def dtype_of(name: str):
  return jnp.dtype(name)


def normal(std: float):
  return nn.initializers.normal(stddev=std)


def param_init(init, names):
  return nn.with_logical_partitioning(init, names)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
}


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, computed in float32, with `embed`-named scale and bias."""

  eps: float = 1e-5
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = self.param("scale", param_init(nn.initializers.ones, ("embed",)), (d,), dtype_of(self.param_dtype))
    bias = self.param("bias", param_init(nn.initializers.zeros, ("embed",)), (d,), dtype_of(self.param_dtype))
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(dtype_of(self.dtype))


class Dense(nn.Module):
  """y = x @ kernel (+ bias), with the kernel's axes named; contracts the last `len(in_names)` axes."""

  features: tuple[int, ...]
  in_names: tuple[str, ...]
  out_names: tuple[str, ...]
  use_bias: bool = True
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n_in = len(self.in_names)
    in_shape = x.shape[-n_in:]
    kernel = self.param("kernel", param_init(normal(self.init_std), self.in_names + self.out_names),
                        in_shape + tuple(self.features), dtype_of(self.param_dtype))
    dt = dtype_of(self.dtype)
    in_axes = tuple(range(x.ndim - n_in, x.ndim))
    y = jax.lax.dot_general(x.astype(dt), kernel.astype(dt), ((in_axes, tuple(range(n_in))), ((), ())))
    if self.use_bias:
      bias = self.param("bias", param_init(nn.initializers.zeros, self.out_names), tuple(self.features),
                        dtype_of(self.param_dtype))
      y = y + bias.astype(dt)
    return y


def causal_mask(length: int) -> Array:
  return jnp.tril(jnp.ones((length, length), jnp.bool_))


class SelfAttention(nn.Module):
  """Multi-head self-attention; `mask` is boolean `[batch, 1 | heads, q_len, kv_len]`."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
    cfg = self.cfg
    dense = functools.partial(Dense, use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    hk = (cfg.num_heads, cfg.kv_dim)
    q = dense(hk, ("embed",), ("heads", "kv"), init_std=cfg.init_std, name="query")(x)
    k = dense(hk, ("embed",), ("heads", "kv"), init_std=cfg.init_std, name="key")(x)
    v = dense(hk, ("embed",), ("heads", "kv"), init_std=cfg.init_std, name="value")(x)
    q, k, v = (constrain(t, BTHD) for t in (q, k, v))
    q = q * jnp.asarray(cfg.kv_dim ** -0.5, q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    out = constrain(out, BTHD)
    out = dense((cfg.d_model,), ("heads", "kv"), ("embed",),
                init_std=cfg.init_std / (2 * cfg.num_layers) ** 0.5, name="out")(out)
    out = nn.Dropout(cfg.dropout_rate)(out, deterministic=deterministic)
    return constrain(out, BTE)


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    cfg = self.cfg
    dense = functools.partial(Dense, use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    h = dense((cfg.d_ff,), ("embed",), ("mlp",), init_std=cfg.init_std, name="wi")(x)
    h = constrain(ACTIVATIONS[cfg.activation](h), ("activation_batch", "activation_length", "activation_mlp"))
    out = dense((cfg.d_model,), ("mlp",), ("embed",),
                init_std=cfg.init_std / (2 * cfg.num_layers) ** 0.5, name="wo")(h)
    out = nn.Dropout(cfg.dropout_rate)(out, deterministic=deterministic)
    return constrain(out, BTE)


class Embed(nn.Module):
  """A `[num, features]` table; `__call__` looks ids up, `attend` projects onto the table (tied output)."""

  num: int
  features: int
  names: tuple[str, str]
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"

  def setup(self):
    self.embedding = self.param("embedding", param_init(normal(self.init_std), self.names),
                                (self.num, self.features), dtype_of(self.param_dtype))

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding, ids, axis=0).astype(dtype_of(self.dtype))

  def attend(self, x: Array) -> Array:
    dt = dtype_of(self.dtype)
    return jnp.einsum("...d,vd->...v", x.astype(dt), self.embedding.astype(dt))
