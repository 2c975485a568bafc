"""Decoding: the sampling warpers, `generate` and `beam_search`.

The cached entry points are driven by fake step functions: a jnp model whose logits depend on the whole
prefix (checked against plain-Python references that recompute every prefix), and a tiny random torch
GPT-2 called through `jax.pure_callback` (checked against Hugging Face `generate` itself).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import decode

V = 10


def key(seed: int):
  """A PRNG key of the "rbg" kind: XLA compiles its sampler in a fraction of threefry's ~1 s on CPU."""
  return jax.random.key(seed, impl="rbg")


def draws(logits, n, seed=0, **settings):
  """`n` draws of `sample_logits` from the same logits row."""
  rows = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))
  return np.asarray(jax.jit(functools.partial(decode.sample_logits, **settings))(key(seed), rows))


def test_top_k_and_top_p_never_emit_excluded_tokens():
  logits = np.log(np.array([0.05, 0.35, 0.08, 0.25, 0.12, 0.15]))
  assert set(np.unique(draws(logits, 4000, temperature=1.0, top_k=3))) == {1, 3, 5}
  # Nucleus 0.55: ascending probabilities .05 .08 .12 .15 .25 .35 have cumulative sums .05 .13 .25 .40
  # .65 1; HF removes those <= 0.45, so exactly the two most likely tokens remain.
  assert set(np.unique(draws(logits, 4000, temperature=1.0, top_p=0.55))) == {1, 3}
  # top-k first, then top-p over the renormalised survivors .35/.75 .25/.75 .15/.75: only the last
  # (0.2) has a cumulative probability <= 1 - 0.7.
  assert set(np.unique(draws(logits, 4000, temperature=1.0, top_k=3, top_p=0.7))) == {1, 3}


def test_top_p_keeps_the_expected_nucleus_with_its_renormalised_frequencies():
  probs = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
  out = draws(np.log(probs), 6000, seed=1, temperature=1.0, top_p=0.75)
  # Cumulative from the bottom: .08 .20 .40 .65 1 -> remove <= .25: tokens 4 and 3 go, 0 1 2 stay.
  freq = np.bincount(out, minlength=5) / len(out)
  np.testing.assert_allclose(freq, [0.35 / 0.8, 0.25 / 0.8, 0.2 / 0.8, 0, 0], atol=0.03)


def test_top_p_boundary_is_inclusive_and_at_least_one_token_is_kept():
  # Equal logits make the cumulative probabilities exact (.25 .5 .75 1): HF removes those <= 1 - top_p,
  # the boundary included, and always keeps the most likely token (top_p=0 leaves exactly one).
  for top_p, kept in [(0.5, 2), (0.75, 3), (0.0, 1)]:
    warped = decode.warp_logits(jnp.zeros((1, 4)), temperature=1.0, top_p=top_p)
    assert np.isfinite(warped).sum() == kept, top_p


def test_sampling_frequencies_follow_the_tempered_softmax():
  logits = np.array([1.0, 0.0, -0.5, 0.5])
  for temperature in (1.0, 2.0):
    freq = np.bincount(draws(logits, 8000, seed=2, temperature=temperature), minlength=4) / 8000
    np.testing.assert_allclose(freq, np.asarray(jax.nn.softmax(logits / temperature)), atol=0.02)


def test_temperature_towards_zero_is_greedy():
  logits = np.random.RandomState(0).normal(size=(64, 12)).astype(np.float32)
  greedy = np.argmax(logits, -1)
  for temperature in (0.0, -1.0, 1e-4):
    out = decode.sample_logits(key(0), jnp.asarray(logits), temperature=temperature, top_p=0.9)
    np.testing.assert_array_equal(out, greedy)


@pytest.mark.parametrize("temperature,top_k,top_p",
                         [(1.0, 5, 1.0), (0.7, 0, 0.8), (1.3, 8, 0.5), (2.0, 3, 0.9)])
def test_warpers_keep_the_same_tokens_as_hugging_face(temperature, top_k, top_p):
  torch = pytest.importorskip("torch")
  hf = pytest.importorskip("transformers.generation.logits_process")
  logits = np.random.RandomState(3).normal(size=(64, 20)).astype(np.float32) * 2
  warpers = [hf.TemperatureLogitsWarper(temperature)]
  warpers += [hf.TopKLogitsWarper(top_k)] if top_k else []
  warpers += [hf.TopPLogitsWarper(top_p)] if top_p < 1 else []
  expected = torch.from_numpy(logits)
  for warper in warpers:
    expected = warper(torch.zeros((64, 1), dtype=torch.long), expected)
  expected = expected.numpy()
  got = np.asarray(decode.warp_logits(jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p))
  kept = np.isfinite(expected)
  assert (kept.sum(-1) < 20).all() and (kept.sum(-1) > 1).any()  # The filters bite, not always down to 1.
  np.testing.assert_array_equal(np.isfinite(got), kept)
  np.testing.assert_allclose(got[kept], expected[kept], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# A fake model with a KV-cache-like state, and plain-Python references.


class PrefixModel:
  """Logits after position q = a random table row picked by a hash of tokens[0..q] and q.

  The cache holds the token history `[rows, total]` and a scalar position, so a wrong cache reorder, a
  wrong position or a wrong fed token changes the logits. `logits(prefix)` recomputes from scratch.
  """

  buckets = 97

  def __init__(self, vocab: int, seed: int = 0):
    self.vocab = vocab
    self.table = np.random.RandomState(seed).normal(size=(self.buckets, vocab)).astype(np.float32) * 2

  def empty_cache(self, rows: int, total: int):
    return {"history": jnp.zeros((rows, total), jnp.int32), "pos": jnp.int32(0)}

  def step(self, tokens, cache):
    history = jax.lax.dynamic_update_slice(cache["history"], tokens, (0, cache["pos"]))
    position = jnp.arange(history.shape[1])
    buckets = (jnp.cumsum((history + 1) * (position + 1) * 7, 1) + position * 3) % self.buckets
    buckets = jax.lax.dynamic_slice_in_dim(buckets, cache["pos"], tokens.shape[1], axis=1)
    return jnp.asarray(self.table)[buckets], {"history": history, "pos": cache["pos"] + tokens.shape[1]}

  def logits(self, prefix):
    bucket = (sum((t + 1) * (j + 1) * 7 for j, t in enumerate(prefix)) + (len(prefix) - 1) * 3) % self.buckets
    return self.table[bucket]


def log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  return logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())


def right_padded(prompts, pad_id):
  """(prompts [batch, P] right-padded with pad_id, lengths [batch])."""
  width = max(map(len, prompts))
  return (jnp.asarray([list(p) + [pad_id] * (width - len(p)) for p in prompts], jnp.int32),
          jnp.asarray([len(p) for p in prompts], jnp.int32))


def padded(seqs, width, pad_id):
  """Sequences as an int array `[len(seqs), width]`, right-padded with pad_id."""
  return np.asarray([list(seq) + [pad_id] * (width - len(seq)) for seq in seqs], np.int32)


def greedy_reference(logits_fn, prompt, max_new_tokens, eos_id):
  """Greedy decoding of one unpadded prompt, recomputing the logits of the whole prefix at every step."""
  seq = list(prompt)
  for _ in range(max_new_tokens):
    seq.append(int(np.argmax(logits_fn(seq))))
    if seq[-1] == eos_id:
      break
  return seq


def beam_reference(logits_fn, prompt, vocab, *, num_beams, max_new_tokens, eos_id, length_penalty,
                   early_stopping):
  """HF 5.24 `_beam_search` for one unpadded prompt, as plain loops over lists.

  Returns (score, tokens, steps): the best finished hypothesis and how many positions were generated
  before the example was done. Candidates are ordered by score, then by flat index beam * vocab + token
  (as `lax.top_k` breaks ties).
  """
  running = [(0.0, list(prompt))] + [(-1e9, list(prompt))] * (num_beams - 1)
  finished = []  # (length-penalised score, tokens), best first, at most num_beams.
  can_improve = True
  for gen_len in range(1, max_new_tokens + 1):
    candidates = []
    for beam, (score, seq) in enumerate(running):
      logp = log_softmax(logits_fn(seq))
      candidates += [(score + logp[v], beam * vocab + v, seq + [v]) for v in range(vocab)]
    candidates = sorted(candidates, key=lambda c: (-c[0], c[1]))[:2 * num_beams]
    stops = [seq[-1] == eos_id or gen_len == max_new_tokens for _, _, seq in candidates]
    if can_improve and not (len(finished) == num_beams and early_stopping is True):
      finished += [(score / gen_len ** length_penalty, seq)
                   for rank, ((score, _, seq), stop) in enumerate(zip(candidates, stops))
                   if stop and rank < num_beams]
      finished = sorted(finished, key=lambda f: -f[0])[:num_beams]
    if all(stops):
      break
    running = [(score, seq) for (score, _, seq), stop in zip(candidates, stops) if not stop][:num_beams]
    if len(finished) == num_beams:
      best_len = max_new_tokens if early_stopping == "never" and length_penalty > 0 else gen_len
      can_improve = can_improve and running[0][0] / best_len ** length_penalty > finished[-1][0]
    if not can_improve or (len(finished) == num_beams and early_stopping is True):
      break
  return finished[0] + (gen_len,)


def brute_force_best(logits_fn, prompt, vocab, *, max_new_tokens, eos_id, length_penalty):
  """The best continuation under HF's score: summed log-probs / generated length ** length_penalty.

  Every continuation that ends at its first EOS, or runs to max_new_tokens without one, is scored.
  """
  best = None
  for n in range(1, max_new_tokens + 1):
    for cont in itertools.product(range(vocab), repeat=n):
      if eos_id in cont[:-1] or (n < max_new_tokens and cont[-1] != eos_id):
        continue
      seq = list(prompt) + list(cont)
      logp = sum(log_softmax(logits_fn(seq[:len(prompt) + i]))[t] for i, t in enumerate(cont))
      if best is None or logp / n ** length_penalty > best[0]:
        best = (logp / n ** length_penalty, seq)
  return best


def test_prefix_model_steps_match_a_recomputation_of_every_prefix():
  model = PrefixModel(vocab=8)
  tokens = jnp.asarray([[3, 1, 4, 1, 5, 2], [2, 7, 1, 0, 0, 6]], jnp.int32)

  @jax.jit
  def in_pieces(tokens):
    cache, parts = model.empty_cache(2, 6), []
    for piece in (tokens[:, :2], tokens[:, 2:3], tokens[:, 3:]):
      logits, cache = model.step(piece, cache)
      parts.append(logits)
    return jnp.concatenate(parts, 1)

  expected = [[model.logits(list(row[:q + 1])) for q in range(6)] for row in np.asarray(tokens)]
  np.testing.assert_array_equal(in_pieces(tokens), expected)


# ---------------------------------------------------------------------------------------------------------
# generate.


@pytest.mark.parametrize("prefill_len", [1, 2])
def test_greedy_generate_equals_each_row_decoded_alone(prefill_len):
  model, eos, pad = PrefixModel(vocab=8, seed=1), 3, 0
  # Inside a prompt, EOS (3) does not stop a row and the pad id (0) is an ordinary token.
  prompts = [[3, 1, 4], [5, 0], [2, 6, 5, 3], [7, 7]]
  expected = [greedy_reference(model.logits, p, 5, eos) for p in prompts]
  assert any(e[-1] == eos and len(e) < len(p) + 5 for e, p in zip(expected, prompts))
  assert any(eos not in e[len(p):] and len(e) == len(p) + 5 for e, p in zip(expected, prompts))
  buf, lengths = right_padded(prompts, pad)
  run = jax.jit(functools.partial(decode.generate, model.step, max_new_tokens=5, eos_id=eos, pad_id=pad,
                                  temperature=0.0, prefill_len=prefill_len))
  out = run(model.empty_cache(4, 9), buf, lengths, key(0))
  assert out.shape == (4, 9) and out.dtype == jnp.int32
  np.testing.assert_array_equal(out, padded(expected, 9, pad))


def count_steps(step_fn, counter):
  """`step_fn` that also appends to `counter` on the host at every call, to count loop iterations."""
  def step(tokens, cache):
    jax.debug.callback(lambda: counter.append(1))
    return step_fn(tokens, cache)
  return step


def test_generate_stops_once_every_row_is_done():
  # EOS (token 1) is always the argmax: each row ends at its first generated token.
  table = jnp.asarray([0.0, 5.0, 1.0, 2.0])
  step = lambda tokens, cache: (jnp.broadcast_to(table, tokens.shape + (4,)), cache)
  calls = []
  out = jax.jit(functools.partial(decode.generate, count_steps(step, calls), max_new_tokens=8, eos_id=1,
                                  pad_id=0, temperature=0.0, prefill_len=2))(
                                      {}, jnp.asarray([[3, 2, 2], [2, 3, 0]]), jnp.asarray([3, 2]),
                                      key(0))
  jax.effects_barrier()
  np.testing.assert_array_equal(out, [[3, 2, 2, 1] + [0] * 7, [2, 3, 1] + [0] * 8])
  assert len(calls) == 2  # The prefill (positions 0-1), then position 2; the final EOS is not fed.


def test_sampled_rows_keep_to_the_filters_and_stop_at_eos_or_max_new_tokens():
  # Fixed logits: top_k=3 leaves tokens {1, 3, 5}; top_p=0.9 then drops none of them (see below).
  logits = jnp.log(jnp.asarray([0.05, 0.35, 0.08, 0.25, 0.12, 0.15]))
  step = lambda tokens, cache: (jnp.broadcast_to(logits, tokens.shape + (6,)), cache)
  prompts, lengths = jnp.zeros((256, 2), jnp.int32) + 4, jnp.full((256,), 2)
  out = np.asarray(jax.jit(functools.partial(
      decode.generate, step, max_new_tokens=6, eos_id=5, pad_id=0, temperature=1.0, top_k=3, top_p=0.9))(
          {}, prompts, lengths, key(5)))
  for row in out:
    new = list(row[2:])
    end = new.index(5) + 1 if 5 in new else 6
    assert set(new[:end]) <= {1, 3, 5} and all(t == 0 for t in new[end:])
  ended = (out[:, 2:] == 5).any(1)
  assert 0 < ended.sum() < 256  # Both ways of stopping happen.
  # P(EOS) per step is .15 / .75 = .2 after renormalising; P(no EOS in 6 steps) = .8 ** 6.
  np.testing.assert_allclose(1 - ended.mean(), 0.8 ** 6, atol=0.07)


def test_prefill_longer_than_a_prompt_is_rejected():
  model = PrefixModel(vocab=8)
  buf, lengths = right_padded([[1, 2, 3], [4]], 0)
  with pytest.raises(ValueError, match="prompt_lengths"):
    decode.generate(model.step, model.empty_cache(2, 5), buf, lengths, key(0), max_new_tokens=2,
                    eos_id=1, pad_id=0, prefill_len=2)


# ---------------------------------------------------------------------------------------------------------
# beam_search against references.


def run_beam_search(step_fn, cache, prompts, pad_id, **settings):
  """beam_search under jit on right-padded `prompts`; returns (tokens, scores) as numpy arrays."""
  buf, lengths = right_padded(prompts, pad_id)
  tokens, scores = jax.jit(functools.partial(decode.beam_search, step_fn, pad_id=pad_id, **settings))(
      cache, buf, lengths)
  assert tokens.shape == (len(prompts), buf.shape[1] + settings["max_new_tokens"])
  return np.asarray(tokens), np.asarray(scores)


def test_beam_search_with_enough_beams_finds_the_brute_force_best():
  # With a vocab of 4 (one EOS) there are 3 live prefixes after one new token and 9 after two: 16 beams
  # (32 candidates) keep them all, and with early_stopping="never" HF's bound on what a running beam can
  # still reach is exact, so beam search becomes exhaustive.
  model, vocab, eos, pad = PrefixModel(vocab=4, seed=2), 4, 1, 0
  prompts = [[2, 3], [0], [3, 3, 2]]
  results = {}
  for length_penalty in (0.0, 1.0, 2.0):
    expected = [brute_force_best(model.logits, p, vocab, max_new_tokens=3, eos_id=eos,
                                 length_penalty=length_penalty) for p in prompts]
    tokens, scores = run_beam_search(model.step, model.empty_cache(3 * 16, 6), prompts, pad, num_beams=16,
                                     max_new_tokens=3, eos_id=eos, length_penalty=length_penalty,
                                     early_stopping="never")
    np.testing.assert_array_equal(tokens, padded([e[1] for e in expected], 6, pad))
    np.testing.assert_allclose(scores, [e[0] for e in expected], rtol=1e-5, atol=1e-6)
    results[length_penalty] = [e[1] for e in expected]
  # The cases are not degenerate: the length penalty changes some answers, EOS ends some early.
  assert results[0.0] != results[2.0]
  assert any(t[-1] == eos and len(t) < len(p) + 3 for t, p in zip(results[0.0], prompts))


def check_against_reference(num_beams, length_penalty, early_stopping):
  """Runs beam_search on BEAM_PROMPTS as one right-padded batch and checks it against `beam_reference`.

  Checks the tokens, the scores and the loop length (so the stopping rules are checked even where they
  do not change the answer). Returns the expected answers.
  """
  model, pad = PrefixModel(vocab=6, seed=5), 0
  settings = dict(num_beams=num_beams, max_new_tokens=5, eos_id=BEAM_EOS, length_penalty=length_penalty,
                  early_stopping=early_stopping)
  expected = [beam_reference(model.logits, p, 6, **settings) for p in BEAM_PROMPTS]
  calls = []
  tokens, scores = run_beam_search(count_steps(model.step, calls), model.empty_cache(4 * num_beams, 9),
                                   BEAM_PROMPTS, pad, **settings)
  jax.effects_barrier()
  np.testing.assert_array_equal(tokens, padded([e[1] for e in expected], 9, pad))
  np.testing.assert_allclose(scores, [e[0] for e in expected], rtol=1e-5, atol=1e-6)
  # One call for the 1-token prefill, then one per position until the slowest example is done.
  assert len(calls) == max(len(p) + e[2] for p, e in zip(BEAM_PROMPTS, expected)) - 1
  return [e[1] for e in expected]


BEAM_PROMPTS, BEAM_EOS = [[1], [2, 5, 3], [0, 3], [5, 1, 2, 2]], 4


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping", [
    (2, 1.0, False), (3, 0.0, True), (2, -0.5, False), (3, 1.0, True)])
def test_beam_search_matches_a_plain_reimplementation_of_hf_rules(num_beams, length_penalty, early_stopping):
  answers = check_against_reference(num_beams, length_penalty, early_stopping)
  assert any(a[-1] == BEAM_EOS for a in answers)  # EOS decides some of the answers.


def test_early_stopping_settings_follow_hf_rules():
  # length_penalty=2 favours long hypotheses, so when to stop matters: on these prompts each of HF's
  # three settings gives a different answer from False somewhere.
  answers = {es: check_against_reference(2, 2.0, es) for es in (False, True, "never")}
  assert answers[False] != answers[True] and answers[False] != answers["never"]


def test_beam_search_stops_when_every_beam_has_finished():
  # EOS (token 1) is always the best token: the first step finishes one hypothesis, the second fills the
  # set of 2, and with early_stopping=True the example is done after 2 of its 6 possible steps.
  table = jnp.asarray([0.0, 5.0, 1.0, 2.0])
  step = lambda tokens, cache: (jnp.broadcast_to(table, tokens.shape + (4,)), cache)
  calls = []
  tokens, _ = run_beam_search(count_steps(step, calls), {}, [[2, 3]], 0, num_beams=2, max_new_tokens=6,
                              eos_id=1, early_stopping=True, prefill_len=2)
  jax.effects_barrier()
  np.testing.assert_array_equal(tokens, [[2, 3, 1, 0, 0, 0, 0, 0]])
  assert len(calls) == 2


# ---------------------------------------------------------------------------------------------------------
# generate and beam_search against Hugging Face, on a tiny random GPT-2.


@pytest.fixture(scope="module")
def gpt2():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  # initializer_range=0.3 (not 0.02) makes the random model's next-token distributions uneven enough that
  # EOS and the stopping rules change some answers (with 0.02 it mostly repeats one token).
  config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=64,
                                   bos_token_id=0, eos_token_id=0, initializer_range=0.3)
  # One torch thread: its intra-op threads fight JAX's for 2 cores and make each tiny forward ~15x slower.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield transformers.GPT2LMHeadModel(config).eval()
  torch.set_num_threads(threads)


def gpt2_step(model, group: int):
  """A step function that reruns the torch model on the whole prefix (kept in the cache) on the host.

  The rows go through the model `group` at a time (the beams of one example), as HF batches them, so
  that both sides compute the same float32 logits.
  """
  import torch  # pylint: disable=g-import-not-at-top

  def host(history, pos, n):
    outs = []
    with torch.no_grad():
      for part in np.split(np.array(history)[:, :int(pos) + n], history.shape[0] // group):
        ids = torch.as_tensor(part, dtype=torch.long)
        outs.append(model(ids, attention_mask=torch.ones_like(ids)).logits[:, int(pos):].float().numpy())
    return np.concatenate(outs)

  def step(tokens, cache):
    history = jax.lax.dynamic_update_slice(cache["history"], tokens, (0, cache["pos"]))
    out = jax.ShapeDtypeStruct(tokens.shape + (model.config.vocab_size,), jnp.float32)
    logits = jax.pure_callback(functools.partial(host, n=tokens.shape[1]), out, history, cache["pos"])
    return logits, {"history": history, "pos": cache["pos"] + tokens.shape[1]}

  return step


GPT2_PROMPTS = [[45, 39, 24], [18, 13, 13, 41, 41], [9, 32, 48, 49], [16, 43]]


def hf_generate(model, prompt, **settings):
  """HF `generate` on one unpadded prompt: (tokens as a list, the sequence score or None if greedy)."""
  import torch  # pylint: disable=g-import-not-at-top
  ids = torch.tensor([prompt])
  # use_cache=False: HF recomputes the prefix each step, exactly as the test's step function does.
  out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                       pad_token_id=0, use_cache=False, return_dict_in_generate=True, output_scores=True,
                       **settings)
  score = out.sequences_scores[0].item() if "sequences_scores" in out else None
  return out.sequences[0].tolist(), score


def test_greedy_generate_matches_hugging_face(gpt2):
  eos = 30
  expected = [hf_generate(gpt2, p, eos_token_id=eos)[0] for p in GPT2_PROMPTS]
  assert any(e[-1] == eos and len(e) < len(p) + 8 for e, p in zip(expected, GPT2_PROMPTS))
  buf, lengths = right_padded(GPT2_PROMPTS, 0)
  cache = {"history": jnp.zeros((4, buf.shape[1] + 8), jnp.int32), "pos": jnp.int32(0)}
  out = jax.jit(functools.partial(decode.generate, gpt2_step(gpt2, 1), max_new_tokens=8, eos_id=eos, pad_id=0,
                                  temperature=0.0, prefill_len=2))(cache, buf, lengths, key(0))
  np.testing.assert_array_equal(out, padded(expected, 13, 0))


def test_beam_search_matches_hugging_face(gpt2):
  eos = 21
  configs = [(3, 1.0, False), (3, 1.0, "never"), (4, 2.0, False), (4, 2.0, True), (4, 0.0, True)]
  outputs = {}
  for num_beams, length_penalty, early_stopping in configs:
    expected, expected_scores = zip(*[hf_generate(gpt2, p, num_beams=num_beams, length_penalty=length_penalty,
                                                  early_stopping=early_stopping, eos_token_id=eos)
                                      for p in GPT2_PROMPTS])
    cache = {"history": jnp.zeros((4 * num_beams, 13), jnp.int32), "pos": jnp.int32(0)}
    tokens, scores = run_beam_search(gpt2_step(gpt2, num_beams), cache, GPT2_PROMPTS, 0, num_beams=num_beams,
                                     max_new_tokens=8, eos_id=eos, length_penalty=length_penalty,
                                     early_stopping=early_stopping, prefill_len=2)
    setting = str((num_beams, length_penalty, early_stopping))
    np.testing.assert_array_equal(tokens, padded(expected, 13, 0), err_msg=setting)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, err_msg=setting)
    outputs[num_beams, length_penalty, early_stopping] = list(expected)
  # The cases are not degenerate: EOS ends some hypotheses early, and "never" and True each change an
  # answer of early_stopping=False, so the stopping rules are compared, not only the scoring.
  ended = [t for out in outputs.values() for t, p in zip(out, GPT2_PROMPTS)
           if t[-1] == eos and len(t) < len(p) + 8]
  assert len(ended) >= 3
  assert outputs[3, 1.0, False] != outputs[3, 1.0, "never"]
  assert outputs[4, 2.0, False] != outputs[4, 2.0, True]
