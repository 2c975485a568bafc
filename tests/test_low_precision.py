"""bigjax.models.layers.dot_general in bfloat16: float32 accumulation and result, the same in both gradients,
against numpy in float64 on the rounded operands; float32 gives lax.dot_general's numbers bit for bit; and
`materialize`, the CPU fusion barrier both use in the backward pass, changes no bit; the train loss over an
unapplied output layer (`head_xent`, in chunks) equals optax's on the whole logits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax.models import layers

CASES = [  # (lhs shape, rhs shape, dimension numbers): Dense's 1- and 2-axis contractions, a batched one.
    ((3, 5, 16), (16, 24), (((2,), (0,)), ((), ()))),
    ((2, 7, 4, 8), (4, 8, 12), (((2, 3), (0, 1)), ((), ()))),
    ((4, 6, 8), (4, 8, 10), (((2,), (1,)), ((0,), (0,)))),
    # One row (a decoding step at batch 1; on CPU computed with a zero row added): Dense and the tied output.
    ((1, 1, 16), (16, 24), (((2,), (0,)), ((), ()))),
    ((1, 1, 16), (24, 16), (((2,), (1,)), ((), ()))),
]


def _einsum_ref(a, b, dims):
  return np.asarray(jax.lax.dot_general(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), dims,
                                        precision=jax.lax.Precision.HIGHEST), np.float64)


@pytest.mark.parametrize("lhs,rhs,dims", CASES)
def test_bf16_dot_accumulates_in_float32_forward_and_backward(lhs, rhs, dims):
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal(lhs), jnp.bfloat16)
  b = jnp.asarray(rng.standard_normal(rhs), jnp.bfloat16)
  out = layers.dot_general(a, b, dims)
  assert out.dtype == jnp.float32
  want = _einsum_ref(np.asarray(a, np.float64), np.asarray(b, np.float64), dims)
  np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=1e-5, atol=1e-5)
  # Gradients: the cotangent rounded to bf16 once, each gradient a float32-accumulated product rounded once.
  g = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  da, db = jax.vjp(lambda x, y: layers.dot_general(x, y, dims), a, b)[1](g)
  assert da.dtype == db.dtype == jnp.bfloat16
  ref_da, ref_db = jax.vjp(lambda x, y: jax.lax.dot_general(x, y, dims, precision=jax.lax.Precision.HIGHEST),
                           jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))[1](
                               g.astype(jnp.bfloat16).astype(jnp.float32))
  for got, ref in ((da, ref_da), (db, ref_db)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref.astype(jnp.bfloat16)))


@pytest.mark.parametrize("lhs,rhs,dims,dense_axes", [c + (n,) for c, n in zip(CASES, (1, 2, 0, 1, 1))])
def test_float32_is_lax_dot_general_with_its_gradients(lhs, rhs, dims, dense_axes):
  """float32 products are `lax.dot_general`'s bit for bit; their gradients are too where JAX's transpose
  computes them, and equal to float32 rounding for `Dense`'s and the tied output layer's products (both
  gradients as row-major 2-D products, the weights' from a materialized `a.T`), under jit and eagerly."""
  rng = np.random.default_rng(1)
  a, b = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (lhs, rhs))
  np.testing.assert_array_equal(layers.dot_general(a, b, dims), jax.lax.dot_general(a, b, dims))
  g = jnp.asarray(rng.standard_normal(jax.lax.dot_general(a, b, dims).shape), jnp.float32)
  want = jax.vjp(lambda x, y: jax.lax.dot_general(x, y, dims), a, b)[1](g)
  dense = layers._dense_form(a, b, dims)
  assert dense == dense_axes  # Dense's 1- and 2-axis products and the tied output's; not batched ones.
  for wrap in (jax.jit, lambda f: f):
    got = wrap(lambda x, y: jax.vjp(lambda u, v: layers.dot_general(u, v, dims), x, y)[1](g))(a, b)
    for x, y in zip(got, want):
      assert x.shape == y.shape and x.dtype == y.dtype == jnp.float32
      if dense:
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6 * float(jnp.abs(y).max()))
      else:
        np.testing.assert_array_equal(x, y)


def test_materialize_is_exact_and_stays_a_buffer_on_cpu():
  """`materialize` returns its input bit for bit (NaN, -0, inf; f32 and bf16), its gradient is the
  identity, and on CPU the compiled program keeps the conditional that stops XLA fusing across it (if XLA
  learned to fold it, the train step would silently lose the speed it buys)."""
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jnp.array([[np.nan, -0.0, 2.5], [np.inf, -np.inf, 1e-30]], dtype)
    y = jax.jit(layers.materialize)(x)
    np.testing.assert_array_equal(np.asarray(y, np.float32).view(np.uint32), np.asarray(x, np.float32).view(np.uint32))
  rng = np.random.default_rng(2)
  a, b = (jnp.asarray(rng.standard_normal((64, 48)), jnp.float32) for _ in range(2))
  chain = lambda a, b: jnp.tanh(a * b + (1 - a))
  f = jax.jit(lambda a, b: layers.materialize(chain(a, b)).T)
  np.testing.assert_array_equal(f(a, b), jax.jit(lambda a, b: chain(a, b).T)(a, b))
  assert "conditional" in f.lower(a, b).compile().as_text()
  g = jax.grad(lambda a: jnp.sum(jnp.sin(layers.materialized_grad(chain(a, b)))))(a)
  np.testing.assert_array_equal(g, jax.grad(lambda a: jnp.sum(jnp.sin(chain(a, b))))(a))


@pytest.mark.parametrize("x_shape,vocab", [((3, 5, 16), 37), ((2, 7, 1, 24), 50), ((11, 8), 9)])
def test_tied_output_layer_is_dot_general_with_its_gradients(x_shape, vocab):
  """The float32 tied output layer's product (`Embed.attend`: `[..., E]` by a `[V, E]` table, whose backward
  computes the table's gradient as `(x.T @ g).T`) gives `lax.dot_general`'s logits bit for bit and its gradients to float32 rounding, under
  jit and eagerly, at batch ranks 1 to 3."""
  rng = np.random.default_rng(3)
  x, table, g = (jnp.asarray(rng.standard_normal(s), jnp.float32)
                 for s in (x_shape, (vocab, x_shape[-1]), x_shape[:-1] + (vocab,)))
  dims = (((x.ndim - 1,), (1,)), ((), ()))
  ref = lambda a, t: jax.lax.dot_general(a, t, dims)
  tied = lambda a, t: layers.dot_general(a, t, dims)
  assert layers._dense_form(x, table, dims) == 1
  np.testing.assert_array_equal(tied(x, table), ref(x, table))
  for wrap in (jax.jit, lambda f: f):
    got = wrap(lambda a, t: jax.vjp(tied, a, t)[1](g))(x, table)
    want = jax.vjp(ref, x, table)[1](g)
    for a, b in zip(got, want):
      assert a.shape == b.shape and a.dtype == b.dtype == jnp.float32
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6 * float(jnp.abs(b).max()))


HEADS = [  # (compute dtype, tied table, an MLM bias, positions per chunk of 6)
    ("float32", True, False, 1), ("float32", True, True, 2), ("float32", False, False, 3),
    ("float32", False, True, 6), ("bfloat16", True, True, 2), ("bfloat16", False, False, 3),
]


@pytest.mark.parametrize("dtype,table,bias,chunk", HEADS)
def test_chunked_output_loss_equals_optax_on_the_whole_logits(dtype, table, bias, chunk):
  """`layers.head_xent` (the train loss over an unapplied output layer, a chunk of positions at a time,
  its gradients computed with the loss) gives optax's weighted cross-entropy of `Head.logits()` and the
  gradients of the input, the weights and the bias: in float32 to rounding; in bfloat16 to its rounding
  of the cotangent (one bf16 ulp, ~2^-8: it rounds before the loss's cotangent scales it). The value
  is the same undifferentiated. Both under jit, as in a train step: eagerly, bf16 logits plus a bias are
  rounded twice; compiled, XLA keeps the sum in float32 (its excess precision), on both paths alike.
  `head_scores` (the eval's chunks) gives the same loss and the argmax hits of the whole logits."""
  rng = np.random.default_rng(5)
  b, t, e, v = 3, 6, 16, 41
  x = jnp.asarray(rng.standard_normal((b, t, e)), dtype)
  w = jnp.asarray(rng.standard_normal((v, e) if table else (e, v)) * 0.5, jnp.float32)
  mlm_bias = jnp.asarray(rng.standard_normal(v), jnp.float32) if bias else None
  targets = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  weights = jnp.asarray(rng.random((b, t)) < 0.7, jnp.float32)
  head = lambda x, w, c: layers.Head(x, w.astype(dtype), table, c)

  def ref(x, w, c):
    nll = optax.softmax_cross_entropy_with_integer_labels(head(x, w, c).logits(), targets)
    return jnp.sum(nll * weights) / 3.0

  new = lambda x, w, c: layers.head_xent(head(x, w, c), targets, weights, chunk) / 3.0
  argnums = (0, 1, 2) if bias else (0, 1)
  want_loss, want = jax.jit(jax.value_and_grad(ref, argnums))(x, w, mlm_bias)
  got_loss, got = jax.jit(jax.value_and_grad(new, argnums))(x, w, mlm_bias)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(new)(x, w, mlm_bias), want_loss, rtol=1e-6)
  rtol = 1e-5 if dtype == "float32" else 2 ** -7
  for g, r in zip(got, want):
    assert g.shape == r.shape and g.dtype == r.dtype
    g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
    np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * np.abs(r).max())
  total, _ = jax.jit(lambda x, w, c: layers.head_scores(head(x, w, c), targets, weights, chunk))(x, w, mlm_bias)
  np.testing.assert_allclose(total / 3.0, want_loss, rtol=1e-6)
  logits = jax.jit(lambda x, w, c: head(x, w, c).logits())(x, w, mlm_bias)
  some_right = jnp.where(jnp.asarray(rng.random((b, t)) < 0.5), jnp.argmax(logits, -1), targets)
  _, hits = jax.jit(lambda x, w, c: layers.head_scores(head(x, w, c), some_right, weights, chunk))(x, w, mlm_bias)
  want_hits = float(jnp.sum((jnp.argmax(logits, -1) == some_right) * weights))
  assert float(hits) == want_hits > 0
  with pytest.raises(ValueError, match="chunk 4 does not divide the length 6"):
    layers.head_xent(head(x, w, mlm_bias), targets, weights, 4)
