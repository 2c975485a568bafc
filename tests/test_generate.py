"""Generation from converted Hugging Face models: bigjax's cached decoding against transformers' generate."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bigjax import convert  # noqa: E402
from bigjax import decode  # noqa: E402

PROMPTS = [[5, 6, 7, 8, 9], [40, 41], [3, 30, 31, 32]]  # Different lengths, decoded as one batch.


def converted(tmp_path, model):
  """(cfg, params) of the model, after choosing as its EOS the fourth new token of the most varied greedy
  continuation of PROMPTS, so that stopping at EOS (and running to the length limit) are exercised."""
  skip = 1 if model.config.is_encoder_decoder else None
  best = []
  with torch.no_grad():
    for p in PROMPTS:
      out = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0].tolist()
      new = out[skip or len(p):]
      best = max(best, new, key=lambda x: len(set(x) - {0}))
  model.config.eos_token_id = model.generation_config.eos_token_id = best[3]
  model.save_pretrained(tmp_path / "hf")
  return convert.from_hf(str(tmp_path / "hf"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
      attn_pdrop=0.0, initializer_range=0.3, bos_token_id=1, eos_token_id=1, pad_token_id=0)).eval()
  return model, converted(tmp_path_factory.mktemp("gpt2"), model)


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
  torch.manual_seed(1)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
      dropout_rate=0.0, feed_forward_proj="gated-gelu", eos_token_id=1, pad_token_id=0,
      decoder_start_token_id=0, initializer_factor=10.0)).eval()  # Larger weights: varied continuations.
  return model, converted(tmp_path_factory.mktemp("t5"), model)


def hf_generate(model, prompt, **kw):
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, pad_token_id=0, **kw)[0].tolist()
  eos = model.config.eos_token_id
  if model.config.is_encoder_decoder:
    return out[:out.index(eos) + 1] if eos in out[1:] else out
  new = out[len(prompt):]
  return prompt + (new[:new.index(eos) + 1] if eos in new else new)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
@pytest.mark.parametrize("beams,length_penalty,early_stopping", [(1, 1.0, False), (3, 1.0, False),
                                                                 (4, 0.5, True), (3, 2.0, False)])
def test_greedy_and_beam_search_equal_transformers(request, family, beams, length_penalty, early_stopping):
  model, (cfg, params) = request.getfixturevalue(family)
  eos = model.config.eos_token_id
  ours = decode.for_model(cfg, params, PROMPTS, max_new_tokens=10, eos_id=eos, pad_id=0, num_beams=beams,
                          length_penalty=length_penalty, early_stopping=early_stopping)
  theirs = [hf_generate(model, p, max_new_tokens=10, num_beams=beams, length_penalty=length_penalty,
                        early_stopping=early_stopping) for p in PROMPTS]
  assert ours == theirs
  if length_penalty <= 1.0:  # Some output stopped at EOS (a length penalty of 2 favours running on).
    assert any(o[-1] == eos for o in ours)


def test_sampling_from_a_converted_model_respects_top_k_and_top_p(gpt2):
  _, (cfg, params) = gpt2
  logits_fn = lambda prefix: np.asarray(  # The model's next-token logits after a prefix.
      __import__("bigjax").models.build(cfg).apply({"params": params}, np.asarray([prefix]))[0, -1])
  prompt = [5, 6, 7]
  outs = decode.for_model(cfg, params, [prompt] * 64, max_new_tokens=1, eos_id=-1, pad_id=0, temperature=1.0,
                          top_k=3, seed=1)
  allowed = set(np.argsort(logits_fn(prompt))[-3:].tolist())
  assert {o[-1] for o in outs} <= allowed and len({o[-1] for o in outs}) > 1
  greedy = decode.for_model(cfg, params, [prompt], max_new_tokens=6, eos_id=-1, pad_id=0, temperature=0.0)
  cold = decode.for_model(cfg, params, [prompt], max_new_tokens=6, eos_id=-1, pad_id=0, temperature=1e-4, seed=3)
  assert cold == greedy  # Temperature → 0 is greedy.


def test_cached_decoding_equals_recomputing_the_prefix(gpt2):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bigjax import models  # pylint: disable=g-import-not-at-top
  _, (cfg, params) = gpt2
  prompts = np.zeros((3, 5), np.int32)
  for i, p in enumerate(PROMPTS):
    prompts[i, :len(p)] = p
  lengths = jnp.asarray([len(p) for p in PROMPTS])
  settings = dict(max_new_tokens=12, eos_id=-1, pad_id=0, temperature=0.0, prefill_len=2)
  cached = decode.generate(models.step_fn(cfg, params), models.init_cache(cfg, 3, 17), jnp.asarray(prompts),
                           lengths, jax.random.PRNGKey(0), **settings)
  plain, empty = models.uncached_step_fn(cfg, params, 17)
  recomputed = decode.generate(plain, empty(3), jnp.asarray(prompts), lengths, jax.random.PRNGKey(0), **settings)
  np.testing.assert_array_equal(cached, recomputed)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_scanned_layers_decode_like_unscanned_layers(request, family):
  """With `model.scan_layers` every cache entry still has rows first (the stacked layer axis second), so
  beam search reorders rows, not layers: beam and greedy outputs equal the unscanned model's."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from bigjax import models  # pylint: disable=g-import-not-at-top
  model, (cfg, params) = request.getfixturevalue(family)
  scanned = dataclasses.replace(cfg, scan_layers=True)
  eos = model.config.eos_token_id
  rows = 2
  cache = models.init_cache(scanned, rows, 8, 4)
  assert all(x.ndim == 0 or x.shape[0] == rows for x in __import__("jax").tree.leaves(cache))
  for beams in (1, 3):
    run = lambda c, p: decode.for_model(c, p, PROMPTS, max_new_tokens=8, eos_id=eos, pad_id=0, num_beams=beams)
    assert run(scanned, models.to_layout(scanned, params)) == run(cfg, params)


def test_bfloat16_decoding_halves_the_weights_and_the_cache(gpt2):
  """`in_dtype` (`bigjax decode --dtype bfloat16`): weights and KV cache in bfloat16 (half the bytes a step
  reads), next-token logits close to float32's, and decoding runs on it."""
  import jax  # pylint: disable=g-import-not-at-top
  from bigjax import models  # pylint: disable=g-import-not-at-top
  _, (cfg, params) = gpt2
  bf_cfg, bf_params = decode.in_dtype(cfg, params, "bfloat16")
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
  assert nbytes(bf_params) * 2 == nbytes(params)
  float_cache = lambda c: {k: v for k, v in __import__("flax").traverse_util.flatten_dict(c).items()
                           if v.dtype.kind == "f" or str(v.dtype) == "bfloat16"}
  cache, bf_cache = models.init_cache(cfg, 3, 17), models.init_cache(bf_cfg, 3, 17)
  assert float_cache(bf_cache) and all(str(v.dtype) == "bfloat16" for v in float_cache(bf_cache).values())
  assert nbytes(float_cache(bf_cache)) * 2 == nbytes(float_cache(cache))
  ids = np.asarray([PROMPTS[0]])
  want = np.asarray(models.build(cfg).apply({"params": params}, ids))
  got = np.asarray(models.build(bf_cfg).apply({"params": bf_params}, ids))
  assert got.dtype == np.float32 and np.abs(got - want).max() <= 0.05 * np.abs(want).max()
  out = decode.for_model(bf_cfg, bf_params, PROMPTS, max_new_tokens=6, eos_id=-1, pad_id=0)
  assert [o[:len(p)] for o, p in zip(out, PROMPTS)] == PROMPTS and all(len(o) == len(p) + 6 for o, p in zip(out, PROMPTS))
