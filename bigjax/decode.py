"""Decoding for every model family: sampling and beam search behind a cached step function.

The models hand the decoder a closure over their parameters (and, for encoder-decoders, the encoder
output), so decoder-only and encoder-decoder models share one implementation:

  step_fn(tokens, cache) -> (logits, cache)
    tokens: int32 [rows, n], the next n tokens of every row, placed at positions [i, i + n) where i is
            the number of tokens already in `cache` (the cache tracks i; all rows share it).
    logits: float32 [rows, n, vocab], the logits for the token after each of those positions.
    cache:  any pytree. Leaves with ndim >= 1 have `rows` as their leading axis (beam search reorders
            them with a gather on axis 0); scalar leaves (e.g. a position counter) are shared by all rows.

The caller builds the empty cache for the right number of rows (batch, or batch * num_beams for beam
search with the beams of one example adjacent: row = example * num_beams + beam) and wraps `generate`
and `beam_search` in `jax.jit` with the sizes and settings static. Prompts are right-padded; since all
rows share one position, a row still inside its prompt is fed (forced) its own prompt token while longer
prompts are being read, which makes a batch equal to running each row alone without padding.

`beam_search` reproduces Hugging Face transformers 5.24 `_beam_search` (do_sample=False), per example:
  * Scores are sums of log_softmax(logits) over the generated tokens. At the first generated position
    only beam 0 is live (its score is 0, the other beams -1e9), so the beams do not start identical.
  * Each step takes the top 2 * num_beams of the num_beams * vocab candidates (one EOS token). A
    candidate stops if its token is EOS or the sequence reaches max length (prompt + max_new_tokens).
  * The next running beams are the num_beams best candidates that did not stop.
  * A stopping candidate enters the finished set only if it ranks among the first num_beams of the
    2 * num_beams, with score sum_logprobs / generated_length ** length_penalty, where generated_length
    counts the new tokens including the EOS (not the prompt). The set keeps the num_beams best
    hypotheses. Nothing more is added once the example cannot improve (below), nor with
    early_stopping=True once the set is full.
  * "Cannot improve" (sticky): the set is full and the best running score / L ** length_penalty is not
    above the worst finished score, with L = max_new_tokens if early_stopping == "never" and
    length_penalty > 0, else the current generated length.
  * An example is done when it cannot improve, when early_stopping is True and the set is full, or when
    every candidate stopped; at max length that holds, so the num_beams best candidates of the last step
    are added to the set even without EOS: there is always a finished hypothesis to return.
  * The result is the best finished hypothesis and its length-penalised score (HF's sequences_scores).
  Prompt lengths may differ within a batch: each example counts its own generated length and max length,
  and once done it is frozen (HF's batch loop keeps running it, but can no longer change its answer).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Hugging Face's stand-in for -inf in beam scores; kept finite so that sums and sorts stay ordered.
_NEG = -1.0e9


def sample_logits(rng, logits, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """Draws one id per row from `logits` `[batch, vocab]`; temperature <= 0 is greedy (argmax)."""
  if temperature <= 0:
    return jnp.argmax(logits, -1)
  return jax.random.categorical(rng, warp_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p),
                                axis=-1)


def warp_logits(logits, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """float32 logits `[..., vocab]` to sample from, with the dropped tokens at -inf (temperature > 0).

  Hugging Face's warpers in their order (temperature, top-k, top-p), so a setting means the same here as
  in `transformers.generate(do_sample=True)`; top_k=0 and top_p=1 disable their filters.
  """
  logits = logits.astype(jnp.float32) / temperature
  if top_k and top_k < logits.shape[-1]:
    logits = _top_k_filter(logits, top_k)
  if top_p < 1.0:
    logits = _top_p_filter(logits, top_p)
  return logits


def _top_k_filter(logits, top_k: int):
  """HF TopKLogitsWarper: drops the logits below the k-th largest (ties with it are kept)."""
  kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def _top_p_filter(logits, top_p: float):
  """HF TopPLogitsWarper: drops the least likely tokens whose cumulative probability is <= 1 - top_p.

  Sorting ascending and removing from the bottom (rather than keeping from the top until top_p is
  reached) decides the boundary token exactly as HF does; the most likely token is always kept.
  """
  order = jnp.argsort(logits, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(logits, order, -1), -1), -1)
  remove_sorted = (cumulative <= 1 - top_p).at[..., -1].set(False)
  remove = jnp.put_along_axis(jnp.zeros_like(remove_sorted), order, remove_sorted, -1, inplace=False)
  return jnp.where(remove, -jnp.inf, logits)


def _check_prefill(prefill_len: int, prompts, prompt_lengths):
  """Rejects a prefill that would read past a prompt (its tokens after that cannot be forced).

  `prefill_len` must be static, so the caller computes it on the host; the lengths are checked here
  when they are concrete (outside jit, or closed over), and trusted under tracing.
  """
  if not 1 <= prefill_len <= prompts.shape[1]:
    raise ValueError(f"prefill_len={prefill_len} must be in [1, prompt width {prompts.shape[1]}]")
  try:
    lengths = np.asarray(prompt_lengths)
  except jax.errors.TracerArrayConversionError:
    return
  if lengths.size and (lengths.min() < prefill_len or lengths.max() > prompts.shape[1]):
    raise ValueError(f"prompt_lengths {lengths.tolist()} must lie in [prefill_len={prefill_len}, "
                     f"{prompts.shape[1]}]")


def _prompt_buffer(prompts, prompt_lengths, total: int, pad_id: int):
  """`[batch, total]` int32: each prompt, then pad_id (also over any padding inside `prompts`)."""
  width = prompts.shape[1]
  inside = jnp.arange(width)[None, :] < prompt_lengths[:, None]
  buf = jnp.full((prompts.shape[0], total), pad_id, jnp.int32)
  return buf.at[:, :width].set(jnp.where(inside, prompts.astype(jnp.int32), pad_id))


def generate(step_fn: Callable, cache, prompts, prompt_lengths, rng, *, max_new_tokens: int, eos_id: int,
             pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, prefill_len: int = 1):
  """Samples (or, with temperature <= 0, greedily decodes) a continuation of every prompt.

  prompts: int32 `[batch, P]`, right-padded; prompt_lengths: `[batch]`, each in [prefill_len, P].
  One step_fn call reads the first `prefill_len` (static; at most the shortest prompt) tokens of every
  row; then one token per step, forced while a row is inside its prompt. A row generates at most
  `max_new_tokens` tokens and stops after emitting `eos_id` (kept); the loop stops when all rows are done.
  temperature, top_k and top_p mean what they mean in `sample_logits`; position t draws with
  `fold_in(rng, t)`. Returns int32 `[batch, P + max_new_tokens]`: prompt, generated tokens, then pad_id.
  """
  _check_prefill(prefill_len, prompts, prompt_lengths)
  total = prompts.shape[1] + max_new_tokens
  buf = _prompt_buffer(prompts, prompt_lengths, total, pad_id)
  if max_new_tokens == 0:
    return buf

  def choose(t, logits, buf, done):
    """Writes position t: the prompt token, else a draw from `logits`, else pad once the row is done."""
    in_prompt = t < prompt_lengths
    drawn = sample_logits(jax.random.fold_in(rng, t), logits, temperature=temperature, top_k=top_k,
                          top_p=top_p).astype(jnp.int32)
    token = jnp.where(in_prompt, buf[:, t], jnp.where(done, pad_id, drawn))
    done = done | (~in_prompt & (token == eos_id)) | (t + 1 >= prompt_lengths + max_new_tokens)
    return buf.at[:, t].set(token), done

  logits, cache = step_fn(buf[:, :prefill_len], cache)
  buf, done = choose(prefill_len, logits[:, -1], buf, jnp.zeros(buf.shape[0], jnp.bool_))

  # The state is "position t written, not yet fed", so no step_fn call is wasted after the last token.
  def cond(state):
    t, _, done, _ = state
    return (t + 1 < total) & ~jnp.all(done)

  def body(state):
    t, buf, done, cache = state
    logits, cache = step_fn(jax.lax.dynamic_slice_in_dim(buf, t, 1, axis=1), cache)
    buf, done = choose(t + 1, logits[:, -1], buf, done)
    return t + 1, buf, done, cache

  _, buf, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(prefill_len), buf, done, cache))
  return buf


class _Beams(NamedTuple):
  """Beam search state; `[batch, num_beams, ...]` per example, like HF's unflattened tensors."""
  running: jax.Array  # int32 [batch, beams, total]: live hypotheses (pad after their last token).
  running_scores: jax.Array  # float32 [batch, beams]: their summed log-probs, best first.
  finished: jax.Array  # int32 [batch, beams, total]: the best finished hypotheses, best first.
  finished_scores: jax.Array  # float32 [batch, beams]: their length-penalised scores (-1e9 if empty).
  is_finished: jax.Array  # bool [batch, beams]: which slots of `finished` hold a hypothesis.
  can_improve: jax.Array  # bool [batch]: HF's "early stop heuristic unsatisfied" (sticky once False).
  done: jax.Array  # bool [batch]: the example stopped; its state is frozen.


def _rows(x, index):
  """`x[e, index[e, j]]` for every example e: picks beams or candidates per example."""
  return x[jnp.arange(x.shape[0])[:, None], index]


def _beam_update(t, logits, beams: _Beams, prompt_lengths, *, max_new_tokens: int, eos_id: int,
                 length_penalty: float, early_stopping):
  """One HF beam search step for the examples generating position t; returns (beams, parents).

  `parents` `[batch, beams]` names, for each new running beam, the old beam it extends (the cache rows
  to gather). Examples still reading their prompt, or done, keep their state and their beam order.
  """
  batch, num_beams, _ = beams.running.shape
  vocab = logits.shape[-1]
  gen_len = t + 1 - prompt_lengths  # Generated tokens including the one at t; <= 0 while forcing.

  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), -1).reshape(batch, num_beams, vocab)
  accumulated = (log_probs + beams.running_scores[..., None]).reshape(batch, num_beams * vocab)
  # 2 * num_beams candidates leave num_beams non-EOS ones to continue even if num_beams pick EOS.
  top_scores, top_index = jax.lax.top_k(accumulated, 2 * num_beams)
  top_parent, top_token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
  candidates = _rows(beams.running, top_parent).at[:, :, t].set(top_token)
  stops = (top_token == eos_id) | (gen_len >= max_new_tokens)[:, None]

  # The next running beams: the best candidates that did not stop.
  running_scores, keep = jax.lax.top_k(top_scores + stops * _NEG, num_beams)
  running, parents = _rows(candidates, keep), _rows(top_parent, keep)

  # Finished hypotheses: stopped candidates among the first num_beams, merged with the old set.
  just_finished = stops & (jnp.arange(2 * num_beams) < num_beams)
  penalty = jnp.maximum(gen_len, 1).astype(jnp.float32) ** length_penalty
  scores = top_scores / penalty[:, None]
  full = jnp.all(beams.is_finished, -1) & (early_stopping is True)
  scores = scores + (full * _NEG)[:, None]
  scores = scores + (~beams.can_improve * _NEG)[:, None]
  scores = scores + ~just_finished * _NEG
  merged_scores = jnp.concatenate([beams.finished_scores, scores], 1)
  finished_scores, best = jax.lax.top_k(merged_scores, num_beams)
  finished = _rows(jnp.concatenate([beams.finished, candidates], 1), best)
  is_finished = _rows(jnp.concatenate([beams.is_finished, just_finished], 1), best)

  # Could a running beam still beat the worst finished one? (HF's early stop heuristic.)
  if early_stopping == "never" and length_penalty > 0:
    hypothetical_len = jnp.full_like(gen_len, max_new_tokens)
  else:
    hypothetical_len = jnp.maximum(gen_len, 1)
  best_possible = running_scores[:, 0] / hypothetical_len.astype(jnp.float32) ** length_penalty
  worst_finished = jnp.where(is_finished, jnp.min(finished_scores, -1, keepdims=True), _NEG)
  can_improve = beams.can_improve & jnp.any(best_possible[:, None] > worst_finished, -1)
  done = (~can_improve | (jnp.all(is_finished, -1) & (early_stopping is True)) | jnp.all(stops, -1))

  updated = _Beams(running, running_scores, finished, finished_scores, is_finished, can_improve, done)
  active = (gen_len >= 1) & ~beams.done
  pick = lambda new, old: jnp.where(active.reshape((batch,) + (1,) * (new.ndim - 1)), new, old)
  identity = jnp.broadcast_to(jnp.arange(num_beams), (batch, num_beams))
  return jax.tree.map(pick, updated, beams), pick(parents, identity)


def _reorder_cache(cache, parents):
  """Gathers every per-row cache leaf by `parents` `[batch, beams]` (beam indices within the example)."""
  num_beams = parents.shape[1]
  rows = (parents + jnp.arange(parents.shape[0])[:, None] * num_beams).reshape(-1)
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else jnp.take(x, rows, axis=0), cache)


def beam_search(step_fn: Callable, cache, prompts, prompt_lengths, *, num_beams: int, max_new_tokens: int,
                eos_id: int, pad_id: int, length_penalty: float = 1.0, early_stopping=False,
                prefill_len: int = 1):
  """Hugging Face's beam search (see the module docstring for its rules) over a cached step function.

  prompts: int32 `[batch, P]`, right-padded; prompt_lengths: `[batch]`, each in [prefill_len, P]. The
  cache has batch * num_beams rows (row = example * num_beams + beam). early_stopping: True, False or
  "never", as in HF. Returns `(tokens [batch, P + max_new_tokens], scores [batch])`: each example's best
  finished hypothesis (prompt, generated tokens, then pad_id) and its length-penalised log-probability.
  """
  if early_stopping not in (True, False, "never"):
    raise ValueError(f"early_stopping must be True, False or 'never', not {early_stopping!r}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  _check_prefill(prefill_len, prompts, prompt_lengths)
  batch = prompts.shape[0]
  total = prompts.shape[1] + max_new_tokens
  buf = jnp.repeat(_prompt_buffer(prompts, prompt_lengths, total, pad_id)[:, None], num_beams, 1)
  beams = _Beams(
      running=buf,
      running_scores=jnp.zeros((batch, num_beams), jnp.float32).at[:, 1:].set(_NEG),
      finished=buf,
      finished_scores=jnp.full((batch, num_beams), _NEG, jnp.float32),
      is_finished=jnp.zeros((batch, num_beams), jnp.bool_),
      can_improve=jnp.ones(batch, jnp.bool_),
      done=jnp.zeros(batch, jnp.bool_))
  update = lambda t, logits, beams: _beam_update(
      t, logits, beams, prompt_lengths, max_new_tokens=max_new_tokens, eos_id=eos_id,
      length_penalty=length_penalty, early_stopping=early_stopping)

  logits, cache = step_fn(buf.reshape(batch * num_beams, total)[:, :prefill_len], cache)
  beams, parents = update(prefill_len, logits[:, -1], beams)

  # As in `generate`, the state is "position t chosen, not yet fed": the cache is reordered to the
  # chosen parents just before their new tokens go in.
  def cond(state):
    t, beams, _, _ = state
    return (t + 1 < total) & ~jnp.all(beams.done)

  def body(state):
    t, beams, parents, cache = state
    cache = _reorder_cache(cache, parents)
    tokens = jnp.where(beams.done[:, None], pad_id, beams.running[:, :, t])
    logits, cache = step_fn(tokens.reshape(batch * num_beams, 1), cache)
    beams, parents = update(t + 1, logits[:, -1], beams)
    return t + 1, beams, parents, cache

  _, beams, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(prefill_len), beams, parents, cache))
  return beams.finished[:, 0], beams.finished_scores[:, 0]


# ------------------------------------------------------------------------------ models and the CLI

def for_model(cfg, params, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int, pad_id: int,
              temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, num_beams: int = 1,
              length_penalty: float = 1.0, early_stopping=False, seed: int = 0, pad_to: int = 0) -> list[list[int]]:
  """Decodes a bigjax model with its KV cache: the output ids for each prompt, as transformers'
  `generate` returns them (decoders: prompt + continuation; encoder-decoders, which read the prompt
  with the encoder: the decoder start id `pad_id` + the answer), cut after EOS.

  Sampling with `temperature > 0` (top-k, top-p), greedy with 0, or beam search with `num_beams > 1`.
  `pad_to` pads the prompts to at least that width: batches of one shape share one compiled program
  (the compiled decoders are cached by their settings and shapes).
  """
  from bigjax import models  # pylint: disable=g-import-not-at-top
  from bigjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  if cfg.family == "encoder":
    raise ConfigError("model.family='encoder' does not generate text; decode a decoder or encoder_decoder")
  if not prompts or min(len(p) for p in prompts) < 1:
    raise ConfigError("every prompt needs at least one token")
  b, longest = len(prompts), max(max(len(p) for p in prompts), pad_to)
  ids = np.full((b, longest), pad_id, np.int32)
  for i, p in enumerate(prompts):
    ids[i, :len(p)] = p
  lengths = np.asarray([len(p) for p in prompts], np.int32)
  rows = b * num_beams
  if cfg.family == "decoder":
    total = longest + max_new_tokens
    if cfg.positions == "learned" and total > cfg.max_len:
      raise ConfigError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = {total} is more "
                        f"than the model's {cfg.max_len} learned positions; shorten one of them")
    cache = models.init_cache(cfg, rows, total)
    dec_prompts, dec_lengths, prefill = ids, lengths, int(lengths.min())
    encoded = mask = None
  else:
    mask = (np.arange(longest)[None] < lengths[:, None]).astype(np.int32)
    encoded = _encoder(cfg)({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    encoded, mask = jnp.repeat(encoded, num_beams, axis=0), jnp.repeat(jnp.asarray(mask), num_beams, axis=0)
    cache = models.init_cache(cfg, rows, 1 + max_new_tokens, longest)
    dec_prompts, dec_lengths, prefill = np.full((b, 1), pad_id, np.int32), np.ones(b, np.int32), 1

  run = _compiled(cfg, num_beams, max_new_tokens, eos_id, pad_id, length_penalty, early_stopping, prefill,
                  temperature, top_k, top_p)
  out = run(params, encoded, mask, cache, jnp.asarray(dec_prompts), jnp.asarray(dec_lengths), jax.random.PRNGKey(seed))
  result = []
  for row, n in zip(np.asarray(out), dec_lengths):
    new = list(row[n:n + max_new_tokens])
    if eos_id in new:
      new = new[:new.index(eos_id) + 1]
    result.append([int(t) for t in row[:n]] + [int(t) for t in new])
  return result


# XLA's CPU compiler, for the decoding loops: copy insertion by regions. A decoding step reads each layer's
# KV cache and then writes one position of it in place (`layers.Attention`); without region analysis XLA
# copied every layer's key and value caches once a step to keep that read safe (GPT-2 small: 24 copies a
# step; their cost grows with the cache's length).
_LOOP_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def jit_loop(fn):
  """`jax.jit(fn)` for a function that runs a decoding loop, compiled with `_LOOP_OPTIONS` on CPU."""
  return jax.jit(fn, compiler_options=_LOOP_OPTIONS if jax.default_backend() == "cpu" else None)


def make_sampler(mcfg, sample_len: int, temperature: float, top_k: int, eos_id: int, pad_id: int):
  """A jitted `(params, prompts [n, P], rng) -> [n, P + sample_len]` continuing each prompt (KV cache)."""
  from bigjax import models  # pylint: disable=g-import-not-at-top

  def run(params, prompts, rng):
    rows, length = prompts.shape
    cache = models.init_cache(mcfg, rows, length + sample_len)
    return generate(models.step_fn(mcfg, params), cache, prompts, jnp.full((rows,), length), rng,
                    max_new_tokens=sample_len, eos_id=eos_id, pad_id=pad_id, temperature=temperature,
                    top_k=top_k, prefill_len=length)
  return jit_loop(run)


def in_dtype(cfg, params, dtype: str):
  """`(cfg, params)` computing in `dtype` with its weights stored in it: a decoding step then reads half the
  bytes in bfloat16, and the KV cache (in the compute dtype) is half as large. Logits stay float32."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return dataclasses.replace(cfg, dtype=dtype, param_dtype=dtype), jax.tree_util.tree_map(cast, params)


@functools.lru_cache(maxsize=4)
def _encoder(cfg):
  from bigjax import models  # pylint: disable=g-import-not-at-top
  module = models.build(cfg)
  return jax.jit(functools.partial(module.apply, method=module.encode))


@functools.lru_cache(maxsize=16)
def _compiled(cfg, num_beams, max_new_tokens, eos_id, pad_id, length_penalty, early_stopping, prefill, temperature,
              top_k, top_p):
  """The jitted decode loop for these settings (jax.jit then caches one executable per input shape)."""
  from bigjax import models  # pylint: disable=g-import-not-at-top

  # Params and encoder outputs are arguments of the jitted function, never constants folded into it.
  def run(params, encoded, mask, cache, prompts, prompt_lengths, rng):
    step = models.step_fn(cfg, params, encoded, mask)
    if num_beams > 1:
      return beam_search(step, cache, prompts, prompt_lengths, num_beams=num_beams, max_new_tokens=max_new_tokens,
                         eos_id=eos_id, pad_id=pad_id, length_penalty=length_penalty,
                         early_stopping=early_stopping, prefill_len=prefill)[0]
    return generate(step, cache, prompts, prompt_lengths, rng, max_new_tokens=max_new_tokens, eos_id=eos_id,
                    pad_id=pad_id, temperature=temperature, top_k=top_k, top_p=top_p, prefill_len=prefill)

  return jit_loop(run)


def main(*, workdir: str | None, hf: str | None, prompts: list[str], prompt_ids: list[str], tokenizer: str | None,
         max_new_tokens: int, temperature: float, top_k: int, top_p: float, num_beams: int,
         length_penalty: float, seed: int, dtype: str | None = None, kv_cache_dtype: str | None = None) -> None:
  """`bigjax decode`: prints, for each prompt, the prompt, the generated text and the ids; `dtype` casts
  the model (weights, activations, KV cache) first (`in_dtype`); `kv_cache_dtype="int8"` stores the KV cache
  as int8 with per-position scales."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from bigjax import convert  # pylint: disable=g-import-not-at-top
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from bigjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  from bigjax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  if workdir:
    params, _, cfg, saved, _, _ = workdir_lib.latest_params(workdir)
    tok_name = tokenizer or workdir_lib.tokenizer_name(saved)
    special = saved.get("special_ids", {})
  else:
    cfg, params = convert.from_hf(hf)
    spiece = [p for p in ("spiece.model", "tokenizer.model") if (epath.Path(hf) / p).exists()]
    tok_name = tokenizer or (str(epath.Path(hf) / spiece[0]) if spiece else "")
    special = convert.hf_special_ids(hf)
  if dtype:
    cfg, params = in_dtype(cfg, params, dtype)
  if kv_cache_dtype:
    import dataclasses  # pylint: disable=g-import-not-at-top
    cfg = dataclasses.replace(cfg, kv_cache_dtype=kv_cache_dtype)
  tok = tokenizer_lib.load(tok_name) if tok_name else None
  if prompts and tok is None:
    raise ConfigError("--prompt text needs a tokenizer: pass --tokenizer (a SentencePiece .model or 'byte') "
                      "or give --prompt_ids")
  try:
    ids = [[int(t) for t in p.split(",")] for p in prompt_ids]
  except ValueError:
    raise ConfigError(f"--prompt_ids={prompt_ids}: give comma-separated integers such as 5,6,7") from None
  ids += tok.encode(list(prompts)) if prompts else []
  bad = [t for p in ids for t in p if not 0 <= t < cfg.vocab_size]
  if bad:
    raise ConfigError(f"prompt id {bad[0]} is outside the model's vocabulary (0..{cfg.vocab_size - 1})")
  # Without a tokenizer, the ids the Hugging Face config names (T5: pad 0 starts the decoder, EOS 1).
  eos_id = tok.eos_id if tok else special.get("eos", -1)
  pad_id = tok.pad_id if tok else special.get("pad") or 0
  eos_id = -1 if eos_id is None or eos_id >= cfg.vocab_size else eos_id
  outputs = for_model(cfg, params, ids, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                      temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                      length_penalty=length_penalty, seed=seed)
  text = lambda t: tok.decode([i for i in t if i < tok.vocab_size]) if tok else ""
  for prompt, out in zip(ids, outputs):
    new = out[len(prompt):] if cfg.family == "decoder" else out[1:]
    if tok:
      print(f"[prompt] {text(prompt)}")
      print(f"[output] {text(new)}")
    print(f"[ids] {','.join(map(str, out))}")
