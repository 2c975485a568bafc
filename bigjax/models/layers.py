"""Shared transformer layers. Every param and activation carries logical axis names.

Param names: `vocab`, `embed`, `heads`, `kv`, `mlp`, `length`, `relpos`, `labels` (and `layers` for the
stacked axis of scanned blocks). Activation names: `activation_batch`, `activation_length`,
`activation_embed`, `activation_heads`, `activation_kv`, `activation_mlp`, `activation_vocab` (kept
apart from param names so that a rule can shard a weight's `embed` over `fsdp` while the batch is on
`fsdp` too). Only `bigjax.partitioning` maps these names to a mesh; nothing here knows one.

Masks are boolean, broadcastable to `[batch, heads, q_len, kv_len]` (True = may attend); additive
biases (T5's relative positions) are float `[1 | batch, heads, q_len, kv_len]`.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.config import ConfigError, ModelConfig

Array = jax.Array

BTE = ("activation_batch", "activation_length", "activation_embed")
BTHD = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
BTKD = ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv")  # Key/value heads.
BTM = ("activation_batch", "activation_length", "activation_mlp")


def constrain(x: Array, names: tuple[str, ...]) -> Array:
  return nn.with_logical_constraint(x, names)


def dtype_of(name: str):
  return jnp.dtype(name)


def normal(std: float):
  return nn.initializers.normal(stddev=std)


def param_init(init, names):
  return nn.with_logical_partitioning(init, names)


LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))  # Multiplied by `dot_general` in float32.


def _dims_spec(lhs_ndim: int, rhs_ndim: int, dims) -> tuple[str, str, str]:
  """An einsum spec equal to `lax.dot_general(lhs, rhs, dims)`'s (batch axes, lhs free, rhs free order)."""
  (lc, rc), (lb, rb) = dims
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  lhs, rhs = [""] * lhs_ndim, [""] * rhs_ndim
  for i, j in zip(lb, rb):
    lhs[i] = rhs[j] = next(letters)
  for i, j in zip(lc, rc):
    lhs[i] = rhs[j] = next(letters)
  for spec in (lhs, rhs):
    for i, c in enumerate(spec):
      spec[i] = c or next(letters)
  out = [lhs[i] for i in lb] + [c for i, c in enumerate(lhs) if i not in lb and i not in lc]
  out += [c for i, c in enumerate(rhs) if i not in rb and i not in rc]
  return "".join(lhs), "".join(rhs), "".join(out)


def _einsum_f32(x: Array, y: Array, spec: tuple[str, str, str]) -> Array:
  """`einsum(x, y)` with float32 accumulation and result. On CPU, a product whose `x` has a single row (every
  free axis of size 1: a decoding step at batch 1) goes to XLA's matrix-vector emitter, which has no fast
  bf16 path (10x slower than two rows on this project's CPU: the output layer of GPT-2 small 63 ms against
  5.7 ms), so there it is computed with a zero row added and that row dropped from the result."""
  xs, ys, out = spec
  product = lambda a: jnp.einsum(f"{xs},{ys}->{out}", a, y, preferred_element_type=jnp.float32)
  free = [i for i, c in enumerate(xs) if c not in ys]
  wide = math.prod(n for c, n in zip(ys, y.shape) if c not in xs) > 1
  if not free or not wide or any(x.shape[i] != 1 for i in free):
    return product(x)

  def two_rows(a):
    axis, kept = free[0], out.index(xs[free[0]])
    return jax.lax.slice_in_dim(product(jnp.concatenate([a, jnp.zeros_like(a)], axis)), 0, 1, axis=kept)

  return jax.lax.platform_dependent(x, cpu=two_rows, default=product)


def materialize(x: Array, fn: Callable[[Array], Array] | None = None) -> Array:
  """`x` unchanged, computed once into a buffer of its own on CPU, where XLA's fusion otherwise recomputes a
  chain of cheap elementwise producers inside every consumer, transposing copies included: a weight
  gradient's operand then re-evaluates its whole chain in transposed (cache-hostile) order, and an unrolled
  stack's residual-stream gradient is rebuilt from the top of the stack at every layer (O(layers^2) work).
  Profiled on the float32 train step (README, Speed): 0.7-1.0 s of a 3.4 s decoder step in such copies.
  With `fn`, the buffer holds `fn(x)`, computed inside the barrier in one pass (a decoding step's
  transposed kernels, `Dense`): without the barrier XLA moved those transposes into the decoding loop.
  The buffer comes from a conditional whose branches both return `fn(x)` (`* 1` is exact for every float);
  XLA cannot fuse across it, and removes one whose branches are the same computation, hence the `* 1`.
  (`lax.optimization_barrier` is removed on CPU before fusion.) Other backends get `x` as it is, and so do
  runs of several processes: reading the predicate's element of a sharded `x` is a collective, and on CPU
  between processes each one is a round trip over the network, at every matmul's backward."""
  fn = fn or (lambda v: v)

  def barrier(v):
    first = v[(0,) * v.ndim]  # One element (under a mesh, a scalar collective, not a reshard of `v`).
    return jax.lax.cond(jnp.isnan(first), lambda u: fn(u) * 1, fn, v)

  if not isinstance(x, jax.Array) or x.size == 0 or jax.process_count() > 1:
    return fn(x)
  return jax.lax.platform_dependent(x, cpu=barrier, default=fn)


@jax.custom_vjp
def materialized_grad(x: Array) -> Array:
  """The identity, whose gradient is `materialize`d: put on the residual stream after each sublayer, the
  stream's gradient is computed once per sublayer instead of once per consumer."""
  return x


materialized_grad.defvjp(lambda x: (x, None), lambda _, g: (materialize(g),))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot_materialized(a: Array, b: Array, dims) -> Array:
  return jax.lax.dot_general(a, b, dims)


def _dot_materialized_fwd(a, b, dims):
  return jax.lax.dot_general(a, b, dims), (a, b)


def _dense_form(a, b, dims) -> int:
  """How many axes a product contracts when it is `Dense`'s or a tied output layer's: `a`'s trailing n
  axes with `b`'s leading n (a kernel, `[*in, *out]`) or trailing n (a table, `[*out, *in]`), no batch
  axes, `b` with free axes of its own; 0 otherwise."""
  (ca, cb), (ba, bb) = dims
  n = len(ca)
  dense = (not ba and not bb and 0 < n < a.ndim and n < b.ndim and tuple(ca) == tuple(range(a.ndim - n, a.ndim))
           and tuple(cb) in (tuple(range(n)), tuple(range(b.ndim - n, b.ndim))))
  return n if dense else 0


def _dot_materialized_bwd(dims, res, g):
  a, b = res
  n = _dense_form(a, b, dims)
  if not n:  # JAX's own transpose of the product, with the cotangent and the activation materialized.
    return jax.vjp(lambda x, y: jax.lax.dot_general(x, y, dims), materialize(a), b)[1](materialize(g))
  # Both gradients as row-major 2-D products in the orientation XLA's CPU matmuls run fastest, `b`'s from
  # a materialized `a.T` (`[in, rows]`), where JAX's transpose had XLA copy the `[rows, out]` cotangent
  # transposed and multiply two transposed operands; a table's (`[*out, *in]`) gradient is that
  # `[in, out]` product, materialized transposed once.
  out_major = tuple(dims[0][1]) != tuple(range(n))
  rows, inner = math.prod(a.shape[:-n]), math.prod(a.shape[-n:])
  g = materialize(g.reshape(rows, -1))
  w = b.reshape((-1, inner) if out_major else (inner, -1))
  da = jax.lax.dot_general(g, w, (((1,), (0 if out_major else 1,)), ((), ()))).reshape(a.shape)
  a_t = materialize(a.reshape(rows, inner), lambda r: r.T)
  db = jax.lax.dot_general(a_t, g, (((1,), (0,)), ((), ())))
  db = materialize(db, lambda t: t.T) if out_major else db
  return da, db.reshape(b.shape)


_dot_materialized.defvjp(_dot_materialized_fwd, _dot_materialized_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _accumulate_f32(a: Array, b: Array, spec: tuple[str, str, str]) -> Array:
  return _einsum_f32(a, b, spec)


def _accumulate_f32_fwd(a, b, spec):
  return _accumulate_f32(a, b, spec), (a, b)


def _accumulate_f32_bwd(spec, res, g):
  a, b = res
  a = materialize(a)
  g = materialize(g.astype(a.dtype))  # Rounded once, as a low-precision matmul's output would be.
  x, y, z = spec
  da = _einsum_f32(g, b, (z, y, x)).astype(a.dtype)
  db = _einsum_f32(a, g, (x, z, y)).astype(b.dtype)
  return da, db


_accumulate_f32.defvjp(_accumulate_f32_fwd, _accumulate_f32_bwd)


def _low_precision(a, b) -> bool:
  return (isinstance(a, jax.Array) and isinstance(b, jax.Array) and a.dtype in LOW_PRECISION
          and b.dtype == a.dtype)


def dot_general(lhs: Array, rhs: Array, dimension_numbers) -> Array:
  """`lax.dot_general`, except that two bfloat16/float16 operands are multiplied with float32 accumulation
  and a **float32** result (the caller rounds it, after adding a bias in float32), in the forward pass and
  in both gradients: a custom VJP, because JAX's own transpose would contract the float32 cotangent with
  the low-precision operand, i.e. in float32. The numbers are those of a low-precision matmul on the
  accelerators (float32 accumulation, one rounding); on CPUs with AMX/AVX512-BF16 it is also XLA's fast
  path: a bf16 x bf16 -> f32 dot ran at 1.5-1.8 TFLOP/s on this project's CPU where bf16 -> bf16 and
  f32 dots ran at 0.26-0.33 (README, Speed: mixed precision). float32 products are `lax.dot_general`'s
  bit for bit; their backward pass `materialize`s the cotangent and the activation before the two gradient
  products, and for `Dense`'s and the tied output layer's (`_dense_form`) computes both as row-major 2-D
  products, the weights' from `a.T` (gradients equal to rounding; a run's losses were bit for bit the same;
  paired A/B, README, Speed: the float32 train step 0.72x the time for Llama at the small shape, 0.86x T5,
  0.87-0.89x GPT-2 and Llama at the mid, 0.93x GPT-2 and BERT small from the tied layer's form alone; in
  bfloat16 the same layouts were 5-11% slower, so `_accumulate_f32` keeps its einsums). Other dtypes (Qwix's quantized arrays) go to
  `lax.dot_general` unchanged."""
  if _low_precision(lhs, rhs):
    return _accumulate_f32(lhs, rhs, _dims_spec(lhs.ndim, rhs.ndim, dimension_numbers))
  if isinstance(lhs, jax.Array) and isinstance(rhs, jax.Array) and lhs.dtype == rhs.dtype == jnp.float32:
    return _dot_materialized(lhs, rhs, dimension_numbers)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers)


STEP_ROWS = 64  # A decoding step's product of at most this many rows reads its weights out-major on CPU.


def _step_weights(x: Array, w: Array, n_in: int) -> bool:
  """Whether a decoding step's product of `x` (`[rows, 1, *in]`: one position per row) and weights `w`
  reads them out-major on CPU (`step_product`): float32, with 2..STEP_ROWS rows. (One row goes to XLA's
  matrix-vector emitter, at memory speed in every order; bfloat16 products are ~10 GB/s in every order
  with 2+ rows, and with one XLA converts the weights to float32 first.)"""
  return (isinstance(w, jax.Array) and x.dtype == w.dtype == jnp.float32 and x.ndim > n_in + 1
          and x.shape[1] == 1 and 2 <= math.prod(x.shape[:-n_in]) <= STEP_ROWS and jax.process_count() == 1)


def step_product(x: Array, w_out_major: Array, n_in: int) -> Array:
  """`x`'s last `n_in` axes contracted with `w_out_major`'s (`[*out, *in]`), as `[*rows, *out]`: a
  decoding step's product on CPU with the weights as the left operand, in the order XLA reads at memory
  speed with few rows. Measured on this project's CPU (AMD EPYC, 2026-12-02; `jnp.sum` read 29 GB/s), float32,
  GPT-2 small's shapes at 8 rows: the weights read at 15-23 GB/s so, against 10-14 GB/s as the right operand
  in the model's `[*in, *out]` order and 8-15 GB/s in out-major order (the tied output layer: 22.6, 12.5
  and 14.6 GB/s)."""
  contract_w = tuple(range(w_out_major.ndim - n_in, w_out_major.ndim))
  y = jax.lax.dot_general(w_out_major, x, ((contract_w, tuple(range(x.ndim - n_in, x.ndim))), ((), ())))
  n_out = w_out_major.ndim - n_in  # y is [*out, *rows]: transpose the small result.
  return jnp.transpose(y, tuple(range(n_out, y.ndim)) + tuple(range(n_out)))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def kernel_std(cfg: ModelConfig, fan_in: int, *, residual: bool = False) -> float:
  """Init std of a projection: GPT/BERT use a fixed std (residual outputs / sqrt(2L)); T5 uses fan-in."""
  if cfg.family == "encoder_decoder":
    return cfg.init_std * fan_in ** -0.5
  return cfg.init_std / (2 * cfg.num_layers) ** 0.5 if residual else cfg.init_std


class Norm(nn.Module):
  """LayerNorm (mean and variance; scale and bias) or RMSNorm (T5/Llama: scale only) over the last axis, in
  float32. `plus_one` (Gemma) multiplies by 1 + scale, the scale starting at 0."""

  kind: str = "layernorm"
  eps: float = 1e-5
  dtype: str = "float32"
  param_dtype: str = "float32"
  plus_one: bool = False
  names: tuple[str, ...] = ("embed",)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    pd = dtype_of(self.param_dtype)
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param("scale", param_init(init, self.names), (d,), pd).astype(jnp.float32)
    if self.plus_one:
      scale = 1.0 + scale
    xf = x.astype(jnp.float32)
    if self.kind == "rmsnorm":
      y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.eps)
      y = y * scale
    else:
      bias = self.param("bias", param_init(nn.initializers.zeros, self.names), (d,), pd)
      mean = xf.mean(-1, keepdims=True)
      var = jnp.square(xf - mean).mean(-1, keepdims=True)
      y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
      y = y * scale + bias.astype(jnp.float32)
    return y.astype(dtype_of(self.dtype))


def norm(cfg: ModelConfig, name: str) -> Norm:
  return Norm(cfg.norm, cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, cfg.norm_plus_one, name=name)


class Lora(NamedTuple):
  """Low-rank adapters (Hu et al. 2021) on the Dense layers whose module path (e.g.
  "decoder/block_0/attention/query") `targets` (a regular expression) finds: y = x W + (alpha / rank) ·
  dropout(x) A B, A `[in..., rank]` initialised as torch's Linear (uniform ±1/sqrt(fan_in)), B `[rank, out...]`
  zeros, so an adapted model starts equal to its base. See `bigjax.lora`."""
  rank: int
  alpha: float
  targets: str
  dropout: float = 0.0

  def applies(self, path: tuple[str, ...]) -> bool:
    return re.search(self.targets, "/".join(path)) is not None


class Dense(nn.Module):
  """y = x @ kernel (+ bias), with the kernel's axes named; contracts the last `len(in_names)` axes; with a
  `lora` whose targets name this layer's path, plus its low-rank adapter (`lora_a`, `lora_b`)."""

  features: tuple[int, ...]
  in_names: tuple[str, ...]
  out_names: tuple[str, ...]
  use_bias: bool = True
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  lora: Lora | None = None
  deterministic: bool = True  # Only LoRA's dropout reads it.
  # A KV-cache decoding model's layer: a call with one position per row (a decoding step) reads the kernel
  # out-major on CPU (`step_product`). The transposed copy depends on the weights only, so inside a decoding
  # loop XLA computes it once, before the loop (it hoists loop-invariant code; the prefill takes the
  # usual product).
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, defer: bool = False) -> Array | Head:
    """`defer` (an output layer's): the `Head` (x and the kernel) for the train loss to multiply in chunks
    (`head_xent`); with a bias or a LoRA adapter on this layer, the logits as usual."""
    n_in = len(self.in_names)
    in_shape = x.shape[-n_in:]
    kernel = self.param("kernel", param_init(normal(self.init_std), self.in_names + self.out_names),
                        in_shape + tuple(self.features), dtype_of(self.param_dtype))
    dt = dtype_of(self.dtype)
    contract = lambda a, w, n: dot_general(a, w, ((tuple(range(a.ndim - n, a.ndim)), tuple(range(n))), ((), ())))
    # Cast only when needed: a quantized kernel (bigjax.quantize: Qwix's int8 arrays) arrives as it is.
    # In bfloat16/float16 `dot_general` returns float32: the bias (and LoRA's update) is added before the
    # one rounding to `dtype`.
    xa, w = x.astype(dt), kernel if kernel.dtype == dt else kernel.astype(dt)
    adapted = self.lora is not None and self.lora.applies(self.scope.path)
    if defer and n_in == 1 and len(self.features) == 1 and not self.use_bias and not adapted:
      return Head(xa, w, table=False)
    if self.decode and _step_weights(xa, w, n_in):
      out_major = tuple(range(n_in, w.ndim)) + tuple(range(n_in))
      y = jax.lax.platform_dependent(
          xa, w, cpu=lambda a, k: step_product(a, materialize(k, lambda u: jnp.transpose(u, out_major)), n_in),
          default=lambda a, k: contract(a, k, n_in))
    else:
      y = contract(xa, w, n_in)
    if self.use_bias:
      bias = self.param("bias", param_init(nn.initializers.zeros, self.out_names), tuple(self.features),
                        dtype_of(self.param_dtype))
      y = y + bias.astype(y.dtype)
    if self.lora is not None and self.lora.applies(self.scope.path):
      r = self.lora.rank
      bound = math.prod(in_shape) ** -0.5
      uniform = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
      a = self.param("lora_a", param_init(uniform, self.in_names + ("lora_rank",)), in_shape + (r,),
                     dtype_of(self.param_dtype))
      b = self.param("lora_b", param_init(nn.initializers.zeros, ("lora_rank",) + self.out_names),
                     (r,) + tuple(self.features), dtype_of(self.param_dtype))
      h = nn.Dropout(self.lora.dropout)(x, deterministic=self.deterministic) if self.lora.dropout else x
      h = contract(h.astype(dt), a.astype(dt), n_in).astype(dt)
      y = y + contract(h, b.astype(dt), 1) * jnp.asarray(self.lora.alpha / r, y.dtype)
    return y.astype(dt)


def causal_mask(q_len: int, kv_len: int | None = None, offset=0, window: int = 0) -> Array:
  """`[q_len, kv_len]`: query i (at position offset + i) may attend keys at positions <= offset + i, and with
  a `window` > 0 (Mistral's sliding window) only the last `window` of them: offset + i - window < key."""
  kv_len = q_len if kv_len is None else kv_len
  q, k = (offset + jnp.arange(q_len))[:, None], jnp.arange(kv_len)[None, :]
  return (q >= k) & (k > q - window) if window else q >= k


def padding_mask(mask: Array | None) -> Array | None:
  """`[batch, length]` 1/0 token mask → boolean `[batch, 1, 1, length]` key mask."""
  return None if mask is None else mask.astype(jnp.bool_)[:, None, None, :]


def segment_mask(q_segments: Array | None, kv_segments: Array | None = None) -> Array | None:
  """Packed rows: `[batch, q_len]` and `[batch, kv_len]` segment ids (0 = padding) → boolean
  `[batch, 1, q_len, kv_len]`: a query sees only keys of its own segment, and no key of segment 0."""
  if q_segments is None:
    return None
  kv_segments = q_segments if kv_segments is None else kv_segments
  return ((q_segments[:, None, :, None] == kv_segments[:, None, None, :])
          & (kv_segments[:, None, None, :] != 0))


def prefix_visible(prefix_mask: Array | None) -> Array | None:
  """Prefix LM: `[batch, length]` 1 on the prefix → boolean `[batch, 1, length, length]` that lets prefix
  tokens see each other both ways (OR it with the causal mask; segments still apply)."""
  if prefix_mask is None:
    return None
  p = prefix_mask.astype(jnp.bool_)
  return p[:, None, :, None] & p[:, None, None, :]


def combine_masks(*masks: Array | None) -> Array | None:
  out = None
  for m in masks:
    if m is not None:
      out = m if out is None else jnp.logical_and(out, m)
  return out


def rope_inv_freq(cfg: ModelConfig, dim: int) -> Array:
  """float32 `[dim / 2]` rotary frequencies: theta^(-2i/dim), scaled as `cfg.rope_type` says (computed as
  Hugging Face's rope utilities compute them, in float32)."""
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  if cfg.rope_type == "linear":
    return inv_freq / cfg.rope_factor
  if cfg.rope_type == "llama3":
    factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old = cfg.rope_original_max_len
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return jnp.where(medium, smoothed, scaled)
  if cfg.rope_type == "yarn":
    def dim_of(rotations):  # The dimension that turns `rotations` times over the original context.
      return dim * math.log(cfg.rope_original_max_len / (rotations * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))
    low, high = dim_of(cfg.rope_beta_fast), dim_of(cfg.rope_beta_slow)
    if cfg.rope_truncate:
      low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: extrapolate (the frequency kept); 0: interpolate (divided by the factor).
    return inv_freq / cfg.rope_factor * (1 - keep) + inv_freq * keep
  return inv_freq


def rope_attention_factor(cfg: ModelConfig) -> float:
  """What cos and sin are multiplied by: yarn's attention factor, else 1."""
  if cfg.rope_type != "yarn":
    return 1.0
  if cfg.rope_attention_factor:
    return cfg.rope_attention_factor
  return 0.1 * math.log(cfg.rope_factor) + 1.0 if cfg.rope_factor > 1 else 1.0


def rotary(x: Array, positions: Array, cfg: ModelConfig) -> Array:
  """Rotary position embedding (RoFormer), rotate-half layout as in GPT-NeoX and Llama.

  x `[batch, length, heads, dim]`, positions `[batch, length]`; frequencies from `rope_inv_freq`.
  """
  dim = x.shape[-1]
  inv_freq = rope_inv_freq(cfg, dim)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, dim/2]
  angles = jnp.concatenate([angles, angles], -1)[:, :, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  if cfg.rope_type == "yarn":
    factor = rope_attention_factor(cfg)
    cos, sin = cos * factor, sin * factor
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], -1)
  return (xf * cos + rotated * sin).astype(x.dtype)


def relative_position_bucket(relative_position: Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucketing of (key position - query position): exact for small distances, log-spaced beyond."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # float32 throughout, as in the Mesh TensorFlow and PyTorch references, so that buckets agree exactly.
  scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
            / jnp.float32(math.log(max_distance / max_exact)) * (num_buckets - max_exact))
  large = jnp.minimum(max_exact + scaled.astype(relative_position.dtype), num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
  """T5's learned per-head bias for each relative-position bucket → `[1, heads, q_len, kv_len]`."""

  cfg: ModelConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions: Array, kv_len: int) -> Array:
    cfg = self.cfg
    table = self.param("embedding", param_init(normal(cfg.init_std), ("relpos", "heads")),
                       (cfg.relative_buckets, cfg.num_heads), dtype_of(cfg.param_dtype))
    rel = jnp.arange(kv_len)[None, :] - q_positions[:, None]
    buckets = relative_position_bucket(rel, bidirectional=self.bidirectional, num_buckets=cfg.relative_buckets,
                                       max_distance=cfg.relative_max_distance)
    bias = jnp.take(table, buckets, axis=0).astype(jnp.float32)  # [q, k, heads]
    return jnp.transpose(bias, (2, 0, 1))[None]


def _backend() -> str:
  return jax.default_backend()


def attention_implementation(cfg: ModelConfig, *, dropout: bool, backend: str | None = None,
                             decode: bool = False) -> str:
  """What computes attention for `cfg` on `backend` (default: JAX's): "plain", "xla", "cudnn" or "flash".

  `auto` takes cuDNN's fused kernel (through `jax.nn.dot_product_attention`) on NVIDIA GPUs in bfloat16 or
  float16 when no attention dropout runs, and the plain path otherwise. "flash" (the Pallas kernels, TPU
  and NVIDIA GPU) serves training and scoring; KV-cache decoding steps (`decode=True`: a few queries over
  the cache) take the plain path. An explicit choice that cannot run here is a ConfigError naming
  `model.attention`."""
  backend = backend or _backend()
  choice = cfg.attention
  if choice == "auto":
    cudnn = backend in ("gpu", "cuda") and cfg.dtype in ("bfloat16", "float16") and not dropout and not decode
    return "cudnn" if cudnn else "plain"
  _check_attention(cfg, backend, dropout)
  return "plain" if decode and choice == "flash" else choice


def _check_attention(cfg: ModelConfig, backend: str, dropout: bool) -> None:
  """Refuses, in one line, an explicit `model.attention` this backend and config cannot run."""
  if cfg.attention in ("xla", "cudnn", "flash") and dropout:
    raise ConfigError(f"model.attention={cfg.attention!r} has no attention dropout (model.dropout_rate="
                      f"{cfg.dropout_rate}); use model.attention='plain' or 'auto' to train with dropout")
  if cfg.attention == "cudnn" and backend not in ("gpu", "cuda"):
    raise ConfigError(f"model.attention='cudnn' runs on NVIDIA GPUs only; this backend is {backend} "
                      "(allowed here: 'auto', 'plain', 'xla')")
  if cfg.attention == "cudnn" and cfg.dtype not in ("bfloat16", "float16"):
    raise ConfigError(f"model.attention='cudnn' needs model.dtype 'bfloat16' or 'float16' (cuDNN's fused "
                      f"attention), not {cfg.dtype!r}")
  if cfg.attention == "flash" and backend not in ("tpu", "gpu", "cuda"):
    raise ConfigError(f"model.attention='flash' runs the Pallas kernels of TPUs and NVIDIA GPUs; this backend "
                      f"is {backend} (allowed here: 'auto', 'plain', 'xla')")
  if cfg.attention == "flash" and backend != "tpu" and cfg.family == "encoder_decoder":
    raise ConfigError("model.attention='flash' on GPUs has no additive bias, which T5's relative positions need "
                      "(model.family='encoder_decoder'); use 'cudnn', 'xla' or 'auto'")


def uses_flash(cfg: ModelConfig, *, deterministic: bool, decode: bool = False) -> bool:
  """Whether a model call runs the flash kernels, and so must hand its attention `Segments`, not dense masks."""
  return attention_implementation(cfg, dropout=cfg.dropout_rate > 0 and not deterministic, decode=decode) == "flash"


class Segments(NamedTuple):
  """What the flash kernels take instead of a dense mask: `[batch, q_len]` and `[batch, kv_len]` int32 ids;
  a query attends the keys of its own id (and, in causal attention, not after it). Packed rows give their
  segment ids (0 = padding), unpacked rows their 1/0 attention mask; `q=None` means nothing is masked."""
  q: Array | None
  kv: Array | None


def self_segments(mask: Array | None, segment_ids: Array | None) -> Segments:
  """Self-attention's segment ids from a call's `[batch, length]` 1/0 mask and packed segment ids (these
  win). A padding query (id 0) sees only padding keys, where the dense mask shows it none: its output is
  never used."""
  ids = segment_ids if segment_ids is not None else mask
  return Segments(None, None) if ids is None else Segments(ids.astype(jnp.int32), ids.astype(jnp.int32))


def cross_segments(q_shape: tuple[int, int], q_segments: Array | None, kv_mask: Array | None,
                   kv_segments: Array | None) -> Segments:
  """Cross-attention's: packed decoder segment k sees encoder segment k; otherwise every query sees the
  encoder's unpadded keys."""
  kv = kv_segments if kv_segments is not None else kv_mask
  if kv is None:
    return Segments(None, None)
  q = q_segments if q_segments is not None else jnp.ones(q_shape, jnp.int32)
  return Segments(q.astype(jnp.int32), kv.astype(jnp.int32))


def flash_attention(q: Array, k: Array, v: Array, seg: Segments, bias: Array | None, *, scale: float,
                    causal: bool, backend: str, interpret: bool = False) -> Array:
  """The Pallas flash-attention kernels on `[batch, length, heads, head_dim]` inputs: on TPU
  `pallas.ops.tpu.flash_attention` (segment ids for queries and keys, causal, an additive bias), on NVIDIA
  GPUs `pallas.ops.gpu.attention.mha` (self-attention segment ids, causal). Tests run them in Pallas's
  interpret mode on CPU (`interpret=True` for the GPU kernel, `pltpu.force_tpu_interpret_mode()` for TPU)."""
  b, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  if backend == "tpu":
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # pylint: disable=g-import-not-at-top
    bq, bk = min(128, q_len), min(128, kv_len)
    blocks = tpu_flash.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1, block_q_major_dkv=bq,
                                  block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq, block_k_major_dq=bk,
                                  block_k_dq=bk, block_q_dq=bq)
    if seg.q is not None and kv_len % 128:
      raise ConfigError(f"model.attention='flash' on TPU masks keys in blocks of 128; this call has {kv_len} keys "
                        "(make data.seq_len, and T5's target length, multiples of 128, or use 'xla')")
    ids = None if seg.q is None else tpu_flash.SegmentIds(seg.q, seg.kv)
    # The kernel scales the biased logits, (q·k + bias) * scale; the bias is pre-divided to mean q·k * scale + bias.
    ab = None if bias is None else jnp.broadcast_to(bias / scale, (b, heads, q_len, kv_len)).astype(jnp.float32)
    t = lambda x: jnp.swapaxes(x, 1, 2)  # The kernel's layout: [batch, heads, length, head_dim].
    out = tpu_flash.flash_attention(t(q), t(k), t(v), ab, ids, causal=causal, sm_scale=scale, block_sizes=blocks)
    return t(out)
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention  # pylint: disable=g-import-not-at-top
  if bias is not None or q_len != kv_len:
    raise ValueError("the GPU flash kernel runs self-attention without an additive bias")
  return gpu_attention.mha(q, k, v, seg.q, sm_scale=scale, causal=causal, interpret=interpret)


def attention(q: Array, k: Array, v: Array, mask: Array | None, bias: Array | None, *, scale: float,
              implementation: str, dropout=None, heads_major_kv: bool = False, new_kv=None) -> Array:
  """softmax(scale · q kᵀ + bias, masked) v for `[batch, length, heads, head_dim]` queries, keys and values;
  `mask` (True = visible) and `bias` broadcast to `[batch, heads, q_len, kv_len]`. "plain": float32 logits
  and softmax, then `dropout(probs)` if given; "xla" / "cudnn": `jax.nn.dot_product_attention`. Keys and
  values may have fewer heads than the queries (GQA: head i reads key/value head i // group).

  `heads_major_kv` (the plain path only): keys come `[batch, kv_heads, kv_len, head_dim]` and values
  `[batch, kv_heads, head_dim, kv_len]`, the KV cache's layout. A dot_general takes its batch axes (batch,
  heads) major, so from the `[batch, kv_len, heads, head_dim]` layout XLA's CPU compiler copied each
  layer's whole cache at every decoding step (a third of a batch-8 GPT-2 step). And a decoding step's
  products are matrix-vector products, whose matrix XLA's CPU compiler reads with the contracted axis
  minor: from values `[kv_len, head_dim]` it transposed every layer's value cache at every step. From
  these layouts it reads both caches where they lie.

  `new_kv` (with `heads_major_kv`): `(key, value, index)`, one position's key `[batch, kv_heads, 1,
  head_dim]` and value `[batch, kv_heads, head_dim, 1]` that stand at `index` instead of what `k` and `v`
  hold there: a one-row decoding step reads the cache as it was before its write. With one row XLA drops
  the size-1 row axis of the products' operands; reading the written cache, it fused the write into that
  reshape — a second write — and gave each write a copy of the cache (four copies of each layer's keys a
  step). With more rows the products read the written cache in place."""
  if implementation == "plain" and heads_major_kv:
    b, q_len, heads, d = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    q = (q * jnp.asarray(scale, q.dtype)).reshape(b, q_len, kv_heads, group, d)
    logits = jnp.einsum("bqhgd,bhkd->bhgqk", q, k)
    if new_kv is not None:
      k_new, v_new, index = new_kv
      at = jnp.arange(kv_len) == index
      logits = jnp.where(at, jnp.einsum("bqhgd,bhkd->bhgqk", q, k_new), logits)
    probs = _masked_softmax(logits.astype(jnp.float32).reshape(b, heads, q_len, kv_len), mask, bias, dropout,
                            v.dtype).reshape(b, kv_heads, group, q_len, kv_len)
    if new_kv is None:
      out = jnp.einsum("bhgqk,bhdk->bqhgd", probs, v)
    else:
      out = (jnp.einsum("bhgqk,bhdk->bqhgd", jnp.where(at, jnp.zeros((), probs.dtype), probs), v)
             + jnp.einsum("bhgqk,bhdk->bqhgd", jax.lax.dynamic_slice_in_dim(probs, index, 1, axis=-1), v_new))
    return out.reshape(b, q_len, heads, d)
  if implementation == "plain":
    q = q * jnp.asarray(scale, q.dtype)
    if k.shape[2] != q.shape[2]:
      k, v = (jnp.repeat(t, q.shape[2] // k.shape[2], axis=2) for t in (k, v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    probs = _masked_softmax(logits, mask, bias, dropout, v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  if bias is not None:
    bias = bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=implementation)


def _masked_softmax(logits: Array, mask: Array | None, bias: Array | None, dropout, dtype) -> Array:
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  return probs if dropout is None else dropout(probs)


def _cache_layout(k: Array, v: Array) -> tuple[Array, Array]:
  """`[batch, length, kv_heads, head_dim]` keys and values → the KV cache's layouts: keys `[batch, kv_heads,
  length, head_dim]`, values `[batch, kv_heads, head_dim, length]`, the operands' orders in which XLA's CPU
  compiler multiplies them without copying the cache (`attention`'s `heads_major_kv`)."""
  return jnp.swapaxes(k, 1, 2), jnp.transpose(v, (0, 2, 3, 1))


class Attention(nn.Module):
  """Multi-head attention of `x` over `kv` (itself for self-attention).

  T5 (family encoder_decoder) does not scale the logits by 1/sqrt(head_dim): its initialisation
  accounts for it. With `decode=True`, self-attention writes its keys and values into the "cache"
  collection at `cache_index` and the queries attend over the whole cache (the caller's mask says which
  cache positions are visible); cross-attention (`cross=True`) projects the encoder output `kv` into keys
  and values at the first step only, keeps them in the cache, and reads them there at every later step.
  """

  cfg: ModelConfig
  decode: bool = False
  cross: bool = False
  causal: bool = False  # Only the flash kernels read it: they take `Segments`, not a dense causal mask.
  lora: Lora | None = None

  @nn.compact
  def __call__(self, x: Array, kv: Array, mask: Array | None, bias: Array | None = None,
               positions: Array | None = None, kv_positions: Array | None = None,
               cache_index: Array | None = None, deterministic: bool = True) -> Array:
    cfg = self.cfg
    dense = functools.partial(Dense, use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                              lora=self.lora, deterministic=deterministic, decode=self.decode)
    hk = (cfg.num_heads, cfg.kv_dim)
    inner = cfg.num_heads * cfg.kv_dim
    t5 = cfg.family == "encoder_decoder"
    q_std = kernel_std(cfg, cfg.d_model * cfg.kv_dim) if t5 else cfg.init_std
    qkv_bias = cfg.use_bias or cfg.qkv_bias
    q = constrain(dense(hk, ("embed",), ("heads", "kv"), use_bias=qkv_bias, init_std=q_std, name="query")(x), BTHD)
    if self.decode and self.cross and self.has_variable("cache", "cross_key"):
      k, v = self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")
    else:
      kv_names = ("heads", "kv") if cfg.kv_heads == cfg.num_heads else ("kv_heads", "kv")
      hkv = (cfg.kv_heads, cfg.kv_dim)
      k = dense(hkv, ("embed",), kv_names, use_bias=qkv_bias, init_std=kernel_std(cfg, cfg.d_model), name="key")(kv)
      v = dense(hkv, ("embed",), kv_names, use_bias=qkv_bias, init_std=kernel_std(cfg, cfg.d_model),
                name="value")(kv)
      k, v = (constrain(t, BTHD if cfg.kv_heads == cfg.num_heads else BTKD) for t in (k, v))
      if cfg.qk_norm:  # Qwen3: each head's key normalised over its width.
        k = Norm("rmsnorm", cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, names=("kv",), name="key_norm")(k)
      if self.decode and self.cross:  # The first step: kept for the rest, laid out like the KV cache.
        k, v = _cache_layout(k, v)
        if not self.is_initializing():
          self.put_variable("cache", "cross_key", k)
          self.put_variable("cache", "cross_value", v)
    if cfg.qk_norm:
      q = Norm("rmsnorm", cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, names=("kv",), name="query_norm")(q)
    if cfg.positions == "rotary":  # (T5 has no rotary positions, so no cross-attention key is heads-major here.)
      q = rotary(q, positions, cfg)
      k = rotary(k, positions if kv_positions is None else kv_positions, cfg)
    scale = 1.0 if t5 else cfg.kv_dim ** -0.5
    dropout = cfg.dropout_rate > 0 and not deterministic
    # `Segments` for a mask: the model chose the flash kernels (`attention_implementation`).
    impl = "flash" if isinstance(mask, Segments) else attention_implementation(cfg, dropout=dropout,
                                                                                decode=self.decode)
    new_kv = None
    if self.decode and not self.cross:  # The cache holds the kv_heads only.
      # A one-row decoding step reads the cache as it was before this step's write and takes the new
      # position's key and value from `new_kv` (`attention`): the write then has no reader but the next
      # step, and XLA makes it in place (with `decode.jit_loop`'s copy insertion by regions).
      one_step = x.shape[:2] == (1, 1) and impl == "plain" and cfg.kv_cache_dtype != "int8"
      k, v, new_kv = self._update_cache(k, v, cache_index, read_before_write=one_step)
    # In decode mode keys are [batch, kv_heads, kv_len, head_dim] and values [batch, kv_heads, head_dim,
    # kv_len] (the cache's layout, `_cache_layout`).
    if self.decode and impl != "plain":  # jax.nn's attention takes [batch, kv_len, heads, head_dim].
      k, v = jnp.swapaxes(k, 1, 2), jnp.transpose(v, (0, 3, 1, 2))
    if cfg.kv_heads != cfg.num_heads and impl == "flash":  # jax.nn's and the plain path take fewer heads.
      k, v = (jnp.repeat(t, cfg.num_heads // cfg.kv_heads, axis=2) for t in (k, v))  # Head i reads i // group.
    if impl == "flash":
      out = flash_attention(q, k, v, mask, bias, scale=scale, causal=self.causal, backend=_backend())
    else:
      drop = (lambda p: nn.Dropout(cfg.dropout_rate)(p, deterministic=False)) if dropout else None
      out = attention(q, k, v, mask, bias, scale=scale, implementation=impl, dropout=drop,
                      heads_major_kv=self.decode and impl == "plain", new_kv=new_kv)
    out = constrain(out, BTHD)
    out = dense((cfg.d_model,), ("heads", "kv"), ("embed",),
                init_std=kernel_std(cfg, inner, residual=True), name="out")(out)
    return constrain(out, BTE)

  def _update_cache(self, k: Array, v: Array, index: Array, read_before_write: bool = False):
    """Writes this chunk's `[batch, n, kv_heads, head_dim]` keys/values at position `index` of the cache;
    returns (keys, values, None): the whole cache, keys `[batch, kv_heads, length, head_dim]` and values
    `[batch, kv_heads, head_dim, length]` (`_cache_layout`; see `attention`) — with `read_before_write`, the
    cache as it was before the write and, third, the `(key, value, index)` written (`attention`'s
    `new_kv`). With `model.kv_cache_dtype="int8"` each position's head vector is stored as int8 with its
    float32 absmax scale (`cached_key_scale`, ...) and read back dequantized in the compute dtype: a
    quarter of float32's bytes."""
    k, v = _cache_layout(k, v)
    if self.cfg.kv_cache_dtype == "int8":
      return self._int8_slot("key", k, index, 3), self._int8_slot("value", v, index, 2), None
    ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    if self.is_initializing():  # init(decode=True) only shapes the cache: its length is the input's.
      return k, v, None
    k, v = k.astype(ck.value.dtype), v.astype(cv.value.dtype)
    old_k, old_v = ck.value, cv.value
    ck.value = jax.lax.dynamic_update_slice(old_k, k, (0, 0, index, 0))
    cv.value = jax.lax.dynamic_update_slice(old_v, v, (0, 0, 0, index))
    if read_before_write:
      return old_k, old_v, (k, v, index)
    return ck.value, cv.value, None

  def _int8_slot(self, name: str, x: Array, index: Array, feature_axis: int) -> Array:
    """`x` (one of `_cache_layout`'s) written at `index` of its length axis, the other of axes 2 and 3, as
    int8 with one scale per position (over `feature_axis`); the whole cache back, dequantized."""
    q = self.variable("cache", f"cached_{name}", jnp.zeros, x.shape, jnp.int8)
    scale_shape = tuple(1 if i == feature_axis else n for i, n in enumerate(x.shape))
    s = self.variable("cache", f"cached_{name}_scale", jnp.ones, scale_shape, jnp.float32)
    if self.is_initializing():
      return x
    xf = x.astype(jnp.float32)
    scale = jnp.maximum(jnp.max(jnp.abs(xf), axis=feature_axis, keepdims=True), 1e-30) / 127.0
    start = (0, 0, 0, index) if feature_axis == 2 else (0, 0, index, 0)
    q.value = jax.lax.dynamic_update_slice(q.value, jnp.round(xf / scale).astype(jnp.int8), start)
    s.value = jax.lax.dynamic_update_slice(s.value, scale, start)
    return (q.value.astype(jnp.float32) * s.value).astype(x.dtype)


class Mlp(nn.Module):
  """wo(act(wi x)), or wo(act(wi_0 x) * wi_1 x) when gated (SwiGLU, T5 v1.1's gated GELU)."""

  cfg: ModelConfig
  lora: Lora | None = None
  decode: bool = False  # See Dense.

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    cfg = self.cfg
    dense = functools.partial(Dense, use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                              lora=self.lora, deterministic=deterministic, decode=self.decode)
    act = ACTIVATIONS[cfg.activation]
    std = kernel_std(cfg, cfg.d_model)
    if cfg.gated_mlp:
      h = act(dense((cfg.d_ff,), ("embed",), ("mlp",), init_std=std, name="wi_0")(x))
      h = h * dense((cfg.d_ff,), ("embed",), ("mlp",), init_std=std, name="wi_1")(x)
    else:
      h = act(dense((cfg.d_ff,), ("embed",), ("mlp",), init_std=std, name="wi")(x))
    h = constrain(h, BTM)
    if cfg.family == "encoder_decoder":  # T5 drops out the hidden activations too.
      h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    out = dense((cfg.d_model,), ("mlp",), ("embed",), init_std=kernel_std(cfg, cfg.d_ff, residual=True),
                name="wo")(h)
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

  def attend(self, x: Array, decode: bool = False, defer: bool = False) -> Array | Head:
    """Logits over the table (a tied output layer); `decode`: as in `Dense`, a decoding step's product on CPU
    is `step_product`'s (the table is out-major already: nothing is copied); `defer`: the `Head` instead."""
    dt = dtype_of(self.dtype)
    x = x.astype(dt)
    table = self.embedding.astype(dt)
    if defer:
      return Head(x, table, table=True)
    product = lambda a, w: dot_general(a, w, (((a.ndim - 1,), (1,)), ((), ())))
    if decode and _step_weights(x, table, 1):
      return jax.lax.platform_dependent(x, table, cpu=lambda a, w: step_product(a, w, 1),
                                        default=product).astype(dt)
    return product(x, table).astype(dt)


# ------------------------------------------------------------------------------------------ output layer

class Head(NamedTuple):
  """An output layer not yet applied (a model called with `output="head"`): the logits are
  `round(x · w) (+ bias, rounded)` in the compute dtype, then float32, `w` a tied table `[V, E]` (`table`)
  or a kernel `[E, V]`. The train loss (`head_xent`) computes them a chunk of positions at a time and
  never holds all of them; `logits()` is the model's usual output, for everything else."""
  x: Array  # [batch, length, E], compute dtype.
  w: Array  # [V, E] (table) or [E, V], compute dtype.
  table: bool
  bias: Array | None = None  # [V], param dtype.

  def logits(self) -> Array:
    out = _head_logits(self.x, self.w, self.table, self.bias, product=dot_general)
    return constrain(out, ("activation_batch", "activation_length", "activation_vocab")).astype(jnp.float32)


def _raw_product(a: Array, b: Array, dims) -> Array:
  """`lax.dot_general` with float32 accumulation and result for bfloat16/float16 operands, and no custom
  VJP: inside the chunked loss, whose gradients are written out by hand."""
  f32 = jnp.float32 if a.dtype in LOW_PRECISION else None
  return jax.lax.dot_general(a, b, dims, preferred_element_type=f32)


def _head_logits(x, w, table, bias, product=_raw_product):
  """`x`'s logits over `w` in `x`'s dtype, rounded as the layers round them: the product (float32
  accumulation), then the bias in the compute dtype (an encoder's MLM bias)."""
  z = product(x, w, (((x.ndim - 1,), (1 if table else 0,)), ((), ()))).astype(x.dtype)
  return z if bias is None else z + bias.astype(z.dtype)


def _chunked(x, targets, weights, chunk: int):
  """The positions in chunks of `chunk`: `[k, batch, chunk, ...]` views of x, targets and weights."""
  b, t = targets.shape
  split = lambda a: jnp.swapaxes(a.reshape((b, t // chunk, chunk) + a.shape[2:]), 0, 1)
  return split(x), split(targets), split(weights.astype(jnp.float32))


def _chunk_nll(x, w, table, bias, targets):
  """Float32 logits of one chunk (`x` `[batch, chunk, E]`), their log-sum-exp and the targets' logits."""
  z = _head_logits(x, w, table, bias).astype(jnp.float32)
  lse = jax.nn.logsumexp(z, axis=-1)
  picked = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
  return z, lse, picked


def _scores(x, w, table, bias, targets, weights, chunk, hits: bool):
  """The chunks' weighted sum of cross-entropies and, with `hits`, of positions whose argmax is the target."""
  def body(sums, inp):
    xc, tc, wc = inp
    z, lse, picked = _chunk_nll(xc, w, table, bias, tc)
    total = sums[0] + jnp.sum((lse - picked) * wc)
    return (total, sums[1] + jnp.sum((jnp.argmax(z, axis=-1) == tc) * wc) if hits else sums[1]), None

  zero = jnp.zeros([], jnp.float32)
  return jax.lax.scan(body, (zero, zero), _chunked(x, targets, weights, chunk))[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _head_xent(x, w, bias, targets, weights, table, chunk, dtypes):
  return _scores(x, w, table, bias, targets, weights, chunk, hits=False)[0]


def _head_xent_fwd(x, w, bias, targets, weights, table, chunk, dtypes):
  """The loss and its gradients together, a chunk at a time: each chunk's logits, softmax and cotangent
  live only while its two gradient products run (the loss is a scalar, so its gradients are these times
  the incoming cotangent). Each product is in the row-major form `_dot_materialized_bwd` uses."""
  e, v = x.shape[-1], w.shape[0 if table else 1]

  def body(carry, inp):
    total, dw_t, dbias = carry  # dw_t: the weights' gradient as [E, V], float32.
    xc, tc, wc = inp
    z, lse, picked = _chunk_nll(xc, w, table, bias, tc)
    total = total + jnp.sum((lse - picked) * wc)
    g = (jnp.exp(z - lse[..., None]) - jax.nn.one_hot(tc, v, dtype=jnp.float32)) * wc[..., None]
    rows = g.shape[0] * g.shape[1]
    g = materialize(g.reshape(rows, v).astype(x.dtype))  # Rounded once, as the layers' cotangent is.
    if bias is not None:
      dbias = dbias + jnp.sum(g.astype(jnp.float32), axis=0)
    dx = _raw_product(g, w, (((1,), (0 if table else 1,)), ((), ())))
    x_t = materialize(xc.reshape(rows, e), lambda r: r.T)
    dw_t = dw_t + _raw_product(x_t, g, (((1,), (0,)), ((), ())))
    return (total, dw_t, dbias), dx.reshape(xc.shape)

  zeros = (jnp.zeros([], jnp.float32), jnp.zeros((e, v), jnp.float32),
           jnp.zeros((v,), jnp.float32) if bias is not None else None)
  (total, dw_t, dbias), dxs = jax.lax.scan(body, zeros, _chunked(x, targets, weights, chunk))
  dx = jnp.swapaxes(dxs, 0, 1).reshape(x.shape)
  dw = materialize(dw_t, lambda t: t.T) if table else dw_t
  return total, (dx, dw, dbias)


def _head_xent_bwd(table, chunk, dtypes, res, g):
  # The gradients are kept in float32 and rounded after the scaling, as the layers' would be.
  scaled = [None if a is None else (a * g).astype(dt) for a, dt in zip(res, dtypes)]
  return (*scaled, None, None)


_head_xent.defvjp(_head_xent_fwd, _head_xent_bwd)


def _check_chunk(targets: Array, chunk: int) -> None:
  if targets.shape[1] % chunk:
    raise ValueError(f"chunk {chunk} does not divide the length {targets.shape[1]}")


def head_scores(head: Head, targets: Array, weights: Array, chunk: int) -> tuple[Array, Array]:
  """An eval's figures over `head`, a chunk of `chunk` positions at a time (no gradients): the weighted
  sum of cross-entropies at `targets` and the weighted count of positions whose argmax is the target,
  as `optax` and `jnp.argmax` give them on `head.logits()` (ties go to the first id either way)."""
  _check_chunk(targets, chunk)
  return _scores(head.x, head.w, head.table, head.bias, targets, weights, chunk, hits=True)


def head_xent(head: Head, targets: Array, weights: Array, chunk: int) -> Array:
  """Sum over positions of `weights` × the cross-entropy of `head`'s float32 logits at `targets`
  (`[batch, length]`), in chunks of `chunk` positions (a divisor of `length`): the logits are never all
  held, in the loss or in its gradients. Equal to `optax.softmax_cross_entropy_with_integer_labels` on
  `head.logits()` up to float32 summation order (tests/test_low_precision.py)."""
  _check_chunk(targets, chunk)
  dtypes = (head.x.dtype, head.w.dtype, None if head.bias is None else head.bias.dtype)
  return _head_xent(head.x, head.w, head.bias, targets, weights, head.table, chunk, dtypes)


class Block(nn.Module):
  """One transformer block: self-attention, cross-attention (if `cross`), MLP; pre- or post-norm.

  Pre-norm (GPT, T5): x + drop(f(norm(x))). Post-norm (BERT): norm(x + drop(f(x))). Call arguments are
  positional so that the same block runs in a Python loop or under `nn.scan`.
  """

  cfg: ModelConfig
  cross: bool = False
  decode: bool = False
  deterministic: bool = True
  causal: bool = False
  lora: Lora | None = None

  @nn.compact
  def __call__(self, x, mask, bias, positions, encoded, cross_mask, cache_index):
    cfg = self.cfg
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)

    def sublayer(name: str, fn, x):
      if cfg.norm_position == "post":
        return materialized_grad(norm(cfg, f"ln_{name}")(x + drop(fn(x))))
      return materialized_grad(x + drop(fn(norm(cfg, f"ln_{name}")(x))))

    attn = Attention(cfg, decode=self.decode, causal=self.causal, lora=self.lora, name="attention")
    x = sublayer("attention", lambda h: attn(h, h, mask, bias, positions, None, cache_index,
                                             self.deterministic), x)
    if self.cross:
      cross = Attention(cfg, decode=self.decode, cross=True, lora=self.lora, name="cross_attention")
      x = sublayer("cross_attention", lambda h: cross(h, encoded, cross_mask, None, None, None, None,
                                                      self.deterministic), x)
    mlp = Mlp(cfg, lora=self.lora, decode=self.decode, name="mlp")
    x = sublayer("mlp", lambda h: mlp(h, self.deterministic), x)
    return constrain(x, BTE), None


_REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole block.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Stack(nn.Module):
  """`num_layers` blocks, as `block_0..block_{L-1}` or, with `cfg.scan_layers`, one scanned `blocks`
  whose params carry a leading `layers` axis (see `bigjax.models.scan_params` to convert)."""

  cfg: ModelConfig
  num_layers: int
  cross: bool = False
  decode: bool = False
  deterministic: bool = True
  causal: bool = False  # Causal self-attention (decoders); the flash kernels need to be told.
  lora: Lora | None = None  # Low-rank adapters on the blocks' projections that `lora.targets` names.

  @nn.compact
  def __call__(self, x, mask=None, bias=None, positions=None, encoded=None, cross_mask=None,
               cache_index=None):
    cfg = self.cfg
    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    kw = dict(cfg=cfg, cross=self.cross, decode=self.decode, deterministic=self.deterministic, causal=self.causal,
              lora=self.lora)
    args = (mask, bias, positions, encoded, cross_mask, cache_index)
    if cfg.scan_layers:
      # Cache entries keep rows as their leading axis (beam search reorders rows on axis 0): layers is axis 1.
      scanned = nn.scan(block, variable_axes={"params": 0, "cache": 1},
                        split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * len(args),
                        length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(**kw, name="blocks")(x, *args)
      return x
    for i in range(self.num_layers):
      x, _ = block(**kw, name=f"block_{i}")(x, *args)
    return x
