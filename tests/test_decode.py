"""The sampler, driven by fake logits functions."""

import jax
import jax.numpy as jnp
import numpy as np

from bigjax import decode

V = 10


def fixed_logits(table):
  """tokens_to_logits that ignores the tokens and returns `table` [V] at every position."""
  table = jnp.asarray(table, jnp.float32)
  return lambda tokens: jnp.broadcast_to(table, tokens.shape + (V,))


def test_greedy_follows_the_argmax_of_the_previous_token():
  # Next token = previous token + 1 (mod V): a logits function that reads the buffer.
  fn = lambda tokens: jax.nn.one_hot((tokens + 1) % V, V) * 10.0
  buf = jnp.zeros((2, 8), jnp.int32).at[:, :2].set(jnp.asarray([[3, 4], [7, 8]]))
  out = decode.sample(fn, buf, jnp.asarray([2, 2]), jax.random.PRNGKey(0), eos_id=-1, pad_id=0,
                      temperature=0.0, start=2)
  np.testing.assert_array_equal(out, [[3, 4, 5, 6, 7, 8, 9, 0], [7, 8, 9, 0, 1, 2, 3, 4]])


def test_top_k_never_emits_excluded_tokens_and_temperature_zero_is_greedy():
  table = np.linspace(0.0, 1.0, V)  # Token 9 best, token 8 second.
  buf = jnp.zeros((64, 12), jnp.int32)
  out = decode.sample(fixed_logits(table), buf, jnp.ones(64, jnp.int32), jax.random.PRNGKey(0), eos_id=-1,
                      pad_id=0, temperature=1.0, top_k=2)
  assert set(np.unique(np.asarray(out)[:, 1:])) == {8, 9}
  greedy = decode.sample(fixed_logits(table), buf, jnp.ones(64, jnp.int32), jax.random.PRNGKey(0), eos_id=-1,
                         pad_id=0, temperature=0.0)
  assert np.all(np.asarray(greedy)[:, 1:] == 9)


def test_sampling_matches_the_softmax_distribution():
  table = np.log(np.array([0.5, 0.3, 0.2] + [1e-9] * (V - 3)))
  buf = jnp.zeros((2000, 2), jnp.int32)
  out = np.asarray(decode.sample(fixed_logits(table), buf, jnp.ones(2000, jnp.int32), jax.random.PRNGKey(3),
                                 eos_id=-1, pad_id=0, temperature=1.0))[:, 1]
  freq = np.bincount(out, minlength=V)[:3] / len(out)
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.04)


def test_eos_stops_a_row_and_prompts_are_kept():
  fn = lambda tokens: jax.nn.one_hot(jnp.where(tokens == 4, 1, tokens + 1) % V, V) * 10.0
  buf = jnp.asarray([[2, 0, 0, 0, 0, 0], [6, 7, 7, 0, 0, 0]], jnp.int32)
  out = decode.sample(fn, buf, jnp.asarray([1, 3]), jax.random.PRNGKey(0), eos_id=1, pad_id=0,
                      temperature=0.0, start=1)
  # Row 0: 2 → 3 → 4 → EOS(1) → pad. Row 1 keeps its 3-token prompt, then 8, 9, 0.
  np.testing.assert_array_equal(out, [[2, 3, 4, 1, 0, 0], [6, 7, 7, 8, 9, 0]])
