"""Decoding behind a `tokens_to_logits(tokens) -> logits [batch, length, vocab]` closure.

One implementation serves every family that can score a token buffer. Sampling runs entirely
inside one jitted `lax.fori_loop` over a fixed-size buffer; this version recomputes the prefix at
every step (no KV cache yet).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def sample_logits(rng, logits, *, temperature: float, top_k: int):
  """Draws one id per row from `logits` `[batch, vocab]`; temperature 0 is greedy."""
  if temperature <= 0:
    return jnp.argmax(logits, -1)
  logits = logits / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1)


def sample(tokens_to_logits: Callable, buffer, prompt_lengths, rng, *, eos_id: int, pad_id: int,
           temperature: float = 1.0, top_k: int = 0, start: int = 1):
  """Fills `buffer` `[batch, total]` after each row's prompt (its first `prompt_lengths[i]` ids).

  `start` (static, >= 1) is the first position to generate: the shortest prompt's length.
  Rows stop at EOS (the rest is `pad_id`). Returns the filled buffer.
  """
  total = buffer.shape[1]

  def body(i, carry):
    buf, done, rng = carry
    rng, sub = jax.random.split(rng)
    logits = tokens_to_logits(buf)[:, i - 1]
    nxt = sample_logits(sub, logits, temperature=temperature, top_k=top_k).astype(buf.dtype)
    in_prompt = i < prompt_lengths
    nxt = jnp.where(in_prompt, buf[:, i], jnp.where(done, pad_id, nxt))
    done = done | (~in_prompt & (nxt == eos_id))
    return buf.at[:, i].set(nxt), done, rng

  done = jnp.zeros(buffer.shape[0], jnp.bool_)
  buf, _, _ = jax.lax.fori_loop(max(start, 1), total, body, (buffer, done, rng))
  return buf
