"""The GPT-style decoder: shapes, causality, padding, logical axis names on every param."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import config as config_lib
from bigjax import models

CFG = config_lib.ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, d_ff=48, max_len=16)


@pytest.fixture(scope="module")
def model_and_params():
  module = models.build(CFG)
  boxed = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32))["params"]
  return module, boxed


def test_every_param_has_logical_axis_names(model_and_params):
  _, boxed = model_and_params
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for x in leaves:
    assert len(x.names) == x.value.ndim
  emb = boxed["token_embed"]["embedding"]
  assert emb.names == ("vocab", "embed") and emb.value.shape == (97, 32)
  assert boxed["decoder"]["block_0"]["attention"]["query"]["kernel"].names == ("embed", "heads", "kv")


def test_param_count_matches_gpt2_formula(model_and_params):
  _, boxed = model_and_params
  params = nn.meta.unbox(boxed)
  n = sum(x.size for x in jax.tree_util.tree_leaves(params))
  d, f, v, t, L = 32, 48, 97, 16, 2
  per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
  assert n == v * d + t * d + L * per_layer + 2 * d


def test_causal_and_padding(model_and_params):
  module, boxed = model_and_params
  params = nn.meta.unbox(boxed)
  apply = jax.jit(module.apply)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(3, 97, (2, 10)), jnp.int32)
  logits = apply({"params": params}, ids)
  assert logits.shape == (2, 10, 97) and logits.dtype == jnp.float32
  changed = ids.at[:, 6:].set(5)
  np.testing.assert_allclose(apply({"params": params}, changed)[:, :6], logits[:, :6], atol=1e-6)
  # Right padding: the real prefix's logits do not depend on what sits in padded positions.
  mask = jnp.asarray([[1] * 10, [1] * 7 + [0] * 3])
  a = apply({"params": params}, ids, attention_mask=mask)
  b = apply({"params": params}, ids.at[1, 7:].set(0), attention_mask=mask)
  np.testing.assert_allclose(a[1, :7], b[1, :7], atol=1e-6)
  # Left padding: masked keys are ignored, so a padded prompt scores like the unpadded one
  # given the same positions.
  short = ids[:1, :6]
  padded = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), short], 1)
  pmask = jnp.asarray([[0] * 4 + [1] * 6])
  pos = jnp.asarray([[0] * 4 + list(range(6))])
  c = apply({"params": params}, padded, attention_mask=pmask, positions=pos)
  np.testing.assert_allclose(c[:, 4:], apply({"params": params}, short), atol=1e-5)


def test_untied_head_and_dropout():
  cfg = config_lib.ModelConfig(vocab_size=50, d_model=16, num_layers=1, num_heads=2, d_ff=32, max_len=8,
                               tie_embeddings=False, dropout_rate=0.5)
  module = models.build(cfg)
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  assert params["lm_head"]["kernel"].shape == (16, 50)
  ids = jnp.ones((1, 8), jnp.int32)
  apply = jax.jit(module.apply, static_argnames="deterministic")
  det = apply({"params": params}, ids)
  np.testing.assert_allclose(det, apply({"params": params}, ids), atol=0)
  drop = apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(drop, det)


FAMILY_CFGS = {
    "bert": config_lib.preset("bert_tiny", vocab_size=64, d_model=32, num_layers=2, max_len=16),
    "bert_classifier": config_lib.preset("bert_tiny", vocab_size=64, d_model=32, num_layers=2, max_len=16,
                                         encoder_head="classifier", num_labels=3),
    "llama_style": config_lib.ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=48,
                                          positions="rotary", norm="rmsnorm", activation="silu", gated_mlp=True,
                                          use_bias=False, tie_embeddings=False),
    "t5_v1_1": config_lib.preset("t5_v1_1_small", vocab_size=64, d_model=32, num_layers=2, num_decoder_layers=3,
                                 num_heads=4, head_dim=8, d_ff=48),
}


def _init(cfg, length=8):
  module = models.build(cfg)
  ids = jnp.ones((2, length), jnp.int32)
  args = (ids, ids[:, :5]) if cfg.family == "encoder_decoder" else (ids,)
  return module, jax.jit(module.init)(jax.random.PRNGKey(0), *args)["params"], args


@pytest.mark.parametrize("name", sorted(FAMILY_CFGS))
@pytest.mark.parametrize("scan", [False, True])
def test_every_family_names_every_param_and_padding_never_leaks(name, scan):
  import dataclasses
  cfg = dataclasses.replace(FAMILY_CFGS[name], scan_layers=scan)
  module, boxed, args = _init(cfg)
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim for x in leaves)
  if scan:  # Stacked blocks carry the "layers" axis first.
    stacked = [x for x in leaves if x.names[0] == "layers"]
    assert stacked and all(x.value.shape[0] in (cfg.num_layers, cfg.decoder_layers) for x in stacked)
  params = nn.meta.unbox(boxed)
  # Padded positions never change what real positions see: garbage in the padding, same outputs.
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 64, (2, 8))
  mask = np.ones((2, 8), np.int32)
  mask[1, 5:] = 0
  noisy = np.where(mask == 1, ids, rng.integers(3, 64, (2, 8)))
  if cfg.family == "encoder_decoder":
    dec = rng.integers(3, 64, (2, 5))
    run = lambda x: jax.jit(module.apply)({"params": params}, x, dec, attention_mask=mask)
    a, b = run(ids), run(noisy)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a.shape == (2, 5, 64)
  else:
    run = lambda x: jax.jit(module.apply)({"params": params}, x, attention_mask=mask)
    a, b = np.asarray(run(ids)), np.asarray(run(noisy))
    if cfg.encoder_head == "classifier":
      assert a.shape == (2, 3)
      np.testing.assert_allclose(a, b, atol=1e-5)
    else:
      assert a.shape == (2, 8, 64)
      np.testing.assert_allclose(a[mask == 1], b[mask == 1], atol=1e-5)


HEAD_CFGS = {**FAMILY_CFGS, "gpt2": CFG, "t5_v1_0": config_lib.preset(
    "t5_small", vocab_size=64, d_model=32, num_layers=2, num_heads=4, head_dim=8, d_ff=48)}


@pytest.mark.parametrize("name", sorted(HEAD_CFGS))
def test_the_train_loss_over_the_unapplied_output_layer_equals_the_logits_path(name):
  """`output="head"` (the train step's call) returns the output layer unapplied, tied or untied, with
  BERT's MLM bias and T5 v1.0's rescaling, and the chunked loss over it (`steps.weighted_xent`) gives the
  logits path's loss and gradients of every param, and the eval step its loss and argmax hits; a
  classifier returns its logits either way."""
  from bigjax import steps  # pylint: disable=g-import-not-at-top
  from bigjax.models import layers  # pylint: disable=g-import-not-at-top
  cfg = HEAD_CFGS[name]
  module, boxed, _ = _init(cfg)
  params = nn.meta.unbox(boxed)
  rng = np.random.default_rng(1)
  ids = jnp.asarray(rng.integers(3, 64, (4, 16)), jnp.int32)
  batch = {"inputs": ids}
  if cfg.family == "encoder_decoder":
    batch["decoder_input_ids"] = ids[:, :8]
  shape = (4,) if cfg.encoder_head == "classifier" else batch.get("decoder_input_ids", ids).shape
  targets = jnp.asarray(rng.integers(0, 3 if cfg.encoder_head == "classifier" else 64, shape), jnp.int32)
  weights = jnp.asarray(rng.random(shape) < 0.6, jnp.float32)
  out = steps.logits(module, params, batch, output="head")
  assert isinstance(out, layers.Head) == (cfg.encoder_head != "classifier")
  assert steps.defers_output(cfg) == (cfg.encoder_head != "classifier")

  def loss(p, **kwargs):
    return steps.weighted_xent(steps.logits(module, p, batch, **kwargs), targets, weights)[0]

  want_loss, want = jax.value_and_grad(loss)(params)
  got_loss, got = jax.jit(jax.value_and_grad(lambda p: loss(p, output="head")))(params)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  # The eval step (chunked over the same head) gives the logits path's loss, count and argmax hits.
  full = steps.logits(module, params, batch)
  some_right = jnp.where(jnp.asarray(rng.random(shape) < 0.5), jnp.argmax(full, -1), targets)
  total, count, hits = jax.jit(steps.make_eval_step(module))(params, {**batch, "targets": some_right,
                                                                     "weights": weights})
  np.testing.assert_allclose(total, steps.weighted_xent(full, some_right, weights)[0], rtol=1e-6)
  assert float(count) == float(jnp.sum(weights))
  assert float(hits) == float(jnp.sum((jnp.argmax(full, -1) == some_right) * weights)) > 0
  scale = max(float(jnp.abs(r).max()) for r in jax.tree_util.tree_leaves(want))  # Some are zero (keys' biases).
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6 * scale, err_msg=str(path))


PACK_CFGS = {
    "gpt2": CFG,
    "bert": FAMILY_CFGS["bert"],
    "llama_style_scanned": dataclasses.replace(FAMILY_CFGS["llama_style"], scan_layers=True),
    "t5_v1_1": FAMILY_CFGS["t5_v1_1"],
}


def _pack(rows, length):
  """Examples (1-D arrays) → one packed row: ids, segment ids (1, 2, ...; 0 = padding), positions."""
  ids, seg, pos = np.zeros(length, np.int32), np.zeros(length, np.int32), np.zeros(length, np.int32)
  at = 0
  for k, r in enumerate(rows):
    ids[at:at + len(r)], seg[at:at + len(r)], pos[at:at + len(r)] = r, k + 1, np.arange(len(r))
    at += len(r)
  return ids[None], seg[None], pos[None]


@pytest.mark.parametrize("name", sorted(PACK_CFGS))
def test_packed_rows_give_each_example_its_own_outputs(name):
  """Segments never see each other and positions restart: every example's logits in a packed row equal
  its logits alone (no padding), for every family, with garbage in the row's padding."""
  cfg = PACK_CFGS[name]
  module = models.build(cfg)
  apply = jax.jit(module.apply)
  rng = np.random.default_rng(1)
  lens = [5, 3, 6]
  exs = [rng.integers(3, 64, n) for n in lens]
  ids, seg, pos = _pack(exs, 16)
  ids[0, sum(lens):] = rng.integers(3, 64, 16 - sum(lens))  # Padding (segment 0) holds junk.
  if cfg.family == "encoder_decoder":
    tlens = [2, 4, 3]
    tgts = [rng.integers(3, 64, n) for n in tlens]
    dids, dseg, _ = _pack(tgts, 12)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), ids, dids)["params"])
    packed = apply({"params": params}, ids, dids, segment_ids=seg, decoder_segment_ids=dseg)[0]
    at = 0
    for x, t in zip(exs, tgts):
      alone = apply({"params": params}, x[None], t[None])[0]
      np.testing.assert_allclose(packed[at:at + len(t)], alone, atol=2e-5)
      at += len(t)
    return
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), ids)["params"])
  packed = apply({"params": params}, ids, segment_ids=seg, positions=pos)[0]
  at = 0
  for x in exs:
    alone = apply({"params": params}, x[None])[0]
    np.testing.assert_allclose(packed[at:at + len(x)], alone, atol=2e-5)
    at += len(x)


def test_prefix_lm_mask_lets_the_prefix_see_both_ways():
  module = models.build(CFG)
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  ids = jnp.asarray(np.random.default_rng(2).integers(3, 97, (1, 8)), jnp.int32)
  prefix = jnp.asarray([[1, 1, 1, 0, 0, 0, 0, 0]])
  run = lambda x: np.asarray(jax.jit(module.apply)({"params": params}, x, prefix_mask=prefix))
  base, changed = run(ids), run(ids.at[0, 2].set(5))
  # Position 0 sees position 2 (both in the prefix); causal LM would not.
  assert not np.allclose(base[0, 0], changed[0, 0])
  # After the prefix everything stays causal: changing token 5 leaves positions < 5 alone.
  later = run(ids.at[0, 5].set(5))
  np.testing.assert_allclose(later[0, :5], base[0, :5], atol=1e-6)
  assert not np.allclose(later[0, 5], base[0, 5])


ATTENTION_CASES = {  # Causal + padding; post-norm encoder; rotary; T5's relative bias, unscaled logits.
    "gpt2": CFG, "bert": FAMILY_CFGS["bert"], "llama_style": FAMILY_CFGS["llama_style"],
    "t5_v1_1": FAMILY_CFGS["t5_v1_1"],
}


@pytest.mark.parametrize("name", sorted(ATTENTION_CASES))
def test_xla_attention_equals_the_plain_path(name):
  """jax.nn.dot_product_attention's XLA path gives the plain path's logits and gradients: padding masks,
  causal masks, packed segments (decoders and BERT), T5's relative-position bias without scaling."""
  plain_cfg = dataclasses.replace(ATTENTION_CASES[name], attention="plain")
  xla_cfg = dataclasses.replace(plain_cfg, attention="xla")
  plain, xla = models.build(plain_cfg), models.build(xla_cfg)
  rng = np.random.default_rng(3)
  ids = jnp.asarray(rng.integers(3, 64, (2, 12)), jnp.int32)
  mask = jnp.asarray([[1] * 12, [1] * 9 + [0] * 3])
  kw = {"attention_mask": mask}
  args = (ids,)
  if plain_cfg.family == "encoder_decoder":
    args = (ids, jnp.asarray(rng.integers(3, 64, (2, 7)), jnp.int32))
    kw["decoder_attention_mask"] = jnp.asarray([[1] * 7, [1] * 5 + [0] * 2])
  params = nn.meta.unbox(jax.jit(plain.init)(jax.random.PRNGKey(0), *args)["params"])
  cases = [kw]
  if plain_cfg.family != "encoder_decoder":  # Three packed examples in the first row, two in the second.
    seg = jnp.asarray([[1] * 5 + [2] * 4 + [3] * 3, [1] * 6 + [2] * 4 + [0] * 2])
    pos = jnp.asarray([list(range(5)) + list(range(4)) + list(range(3)), list(range(6)) + list(range(4)) + [0, 0]])
    cases.append({"segment_ids": seg, "positions": pos})

  for call in cases:
    def loss(p, module):
      out = module.apply({"params": p}, *args, **call)
      return jnp.sum(jnp.sin(out)), out
    (_, want), g_want = jax.jit(jax.value_and_grad(lambda p: loss(p, plain), has_aux=True))(params)
    (_, got), g_got = jax.jit(jax.value_and_grad(lambda p: loss(p, xla), has_aux=True))(params)
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=str(sorted(call)))
    for a, b in zip(jax.tree_util.tree_leaves(g_got), jax.tree_util.tree_leaves(g_want)):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=str(sorted(call)))


def test_xla_attention_decodes_like_the_plain_path():
  """With the KV cache (one query over the whole cache, its mask), both paths pick the same tokens."""
  from bigjax import decode  # pylint: disable=g-import-not-at-top
  for cfg in (CFG, FAMILY_CFGS["t5_v1_1"]):
    plain_cfg = dataclasses.replace(cfg, attention="plain")
    args = (jnp.ones((1, 8), jnp.int32),) * (2 if cfg.family == "encoder_decoder" else 1)
    params = nn.meta.unbox(jax.jit(models.build(plain_cfg).init)(jax.random.PRNGKey(1), *args)["params"])
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    out = {impl: decode.for_model(dataclasses.replace(cfg, attention=impl), params, prompts, max_new_tokens=6,
                                  eos_id=-1, pad_id=0) for impl in ("plain", "xla")}
    assert out["xla"] == out["plain"], out


@pytest.mark.parametrize("features,in_shape", [((24,), (16,)), ((16,), (4, 8))])  # Attention's out: two in axes.
def test_a_decoding_steps_product_reads_the_kernel_out_major_and_equals_the_plain_one(features, in_shape):
  """With decode=True, a product of 2..STEP_ROWS rows with one position each (a decoding step) runs with
  the kernel transposed (materialized: a conditional in the CPU program) and gives the plain product's
  numbers; one row, more rows, several positions (a prefill) and bfloat16 keep the plain product."""
  from bigjax.models import layers  # pylint: disable=g-import-not-at-top
  names = tuple(f"in{i}" for i in range(len(in_shape)))
  for rows, length, dtype in [(2, 1, "float32"), (8, 1, "float32"), (layers.STEP_ROWS, 1, "float32"),
                              (1, 1, "float32"), (layers.STEP_ROWS + 1, 1, "float32"), (4, 3, "float32"),
                              (4, 1, "bfloat16")]:
    x = jax.random.normal(jax.random.PRNGKey(rows), (rows, length) + in_shape, jnp.float32).astype(dtype)
    dense = lambda decode: layers.Dense(features, names, ("out",), dtype=dtype, param_dtype=dtype, decode=decode)
    params = dense(False).init(jax.random.PRNGKey(0), x)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # A nonzero bias.
    want = jax.jit(dense(False).apply)(params, x)
    step = jax.jit(dense(True).apply)
    got = step(params, x)
    assert got.shape == want.shape == (rows, length) + features and got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-5, atol=1e-5)
    out_major = 2 <= rows <= layers.STEP_ROWS and length == 1 and dtype == "float32"
    assert ("conditional(" in step.lower(params, x).compile().as_text()) == out_major, (rows, length, dtype)

  table = layers.Embed(40, 16, ("vocab", "embed"))
  emb = table.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
  for rows in (1, 2, 8):
    x = jax.random.normal(jax.random.PRNGKey(rows), (rows, 1, 16))
    want = table.apply(emb, x, method=table.attend)
    got = jax.jit(lambda e, x: table.apply(e, x, True, method=table.attend))(emb, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_decoding_loop_transposes_each_kernel_once_before_the_loop():
  """XLA hoists the transposed kernels out of generate's while loop: the compiled program has one
  conditional per kernel (2 layers x q, k, v, out, wi, wo) and none in the loop's body; the tied output
  layer reads the embedding table as it is. Greedy tokens equal those of rows decoded one at a time
  (one row: the plain product)."""
  from bigjax import decode  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  params = nn.meta.unbox(jax.jit(models.build(CFG).init)(jax.random.PRNGKey(3), jnp.ones((1, 8), jnp.int32))["params"])
  rows, prompt, new = 4, 3, 5
  prompts = jax.random.randint(jax.random.PRNGKey(4), (rows, prompt), 1, CFG.vocab_size)

  def run(p, ids):
    cache = models.init_cache(CFG, ids.shape[0], prompt + new)
    return decode.generate(models.step_fn(CFG, p), cache, ids, jnp.full((ids.shape[0],), prompt),
                           jax.random.PRNGKey(0), max_new_tokens=new, eos_id=-1, pad_id=0, temperature=0.0,
                           prefill_len=prompt)

  hlo = jax.jit(run).lower(params, prompts).compile().as_text()
  computations = {m.group(1): m.group(0) for m in re.finditer(r"(?ms)^(?:ENTRY )?%?([\w.\-]+) .*?^}", hlo)}
  body = re.search(r"while\(.*?body=%?([\w.\-]+)", hlo).group(1)
  assert hlo.count("conditional(") == CFG.num_layers * 6
  assert "conditional(" not in computations[body]
  together = np.asarray(jax.jit(run)(params, prompts))
  alone = np.concatenate([np.asarray(jax.jit(run)(params, prompts[i:i + 1])) for i in range(rows)])
  np.testing.assert_array_equal(together, alone)


@pytest.mark.parametrize("rows,kv_heads", [(1, 4), (3, 4), (2, 2)])
def test_a_decoding_step_writes_the_kv_cache_in_place(rows, kv_heads):
  """The compiled decoding loop (`decode.jit_loop`) neither copies nor transposes a layer's key or value
  cache: its body writes each of them once (one dynamic-update-slice per cache), and nothing else in it
  makes a cache-sized array. (Before: each step transposed every value cache and wrote every key cache
  twice, each time into a copy.) Tokens equal those of the uncached model."""
  from bigjax import decode  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.replace(CFG, num_kv_heads=kv_heads) if kv_heads != CFG.num_heads else CFG
  params = nn.meta.unbox(jax.jit(models.build(cfg).init)(jax.random.PRNGKey(3), jnp.ones((1, 8), jnp.int32))["params"])
  prompt, new = 3, 6
  prompts = jax.random.randint(jax.random.PRNGKey(rows), (rows, prompt), 1, cfg.vocab_size)
  settings = dict(max_new_tokens=new, eos_id=-1, pad_id=0, temperature=0.0, prefill_len=prompt)
  lengths = jnp.full((rows,), prompt)

  def run(p, ids):
    return decode.generate(models.step_fn(cfg, p), models.init_cache(cfg, rows, prompt + new), ids, lengths,
                           jax.random.PRNGKey(0), **settings)

  looped = decode.jit_loop(run)
  hlo = looped.lower(params, prompts).compile().as_text()
  computations = {m.group(1): m.group(0) for m in re.finditer(r"(?ms)^(?:ENTRY )?%?([\w.\-]+) .*?^}", hlo)}
  body = computations[re.search(r"while\(.*?body=%?([\w.\-]+)", hlo).group(1)]
  cache_size = rows * kv_heads * (prompt + new) * cfg.kv_dim
  made = [(name, op) for name, shape, op in re.findall(r"^\s*(?:ROOT )?%(\S+) = \w+\[([\d,]*)\]\S* (\w[\w-]*)\(", body, re.M)
          if math.prod(int(n) for n in shape.split(",") if n) == cache_size]
  writes = [name for name, op in made if "dynamic-update-slice" in name or op == "dynamic-update-slice"]
  assert len(writes) == 2 * cfg.num_layers, made
  assert not [name for name, op in made if op == "copy" or "copy" in name or "transpose" in name], made
  empty = models.uncached_step_fn(cfg, params, prompt + new)[1]
  plain = jax.jit(lambda p, ids: decode.generate(models.uncached_step_fn(cfg, p, prompt + new)[0], empty(rows), ids,
                                                 lengths, jax.random.PRNGKey(0), **settings))
  np.testing.assert_array_equal(np.asarray(looped(params, prompts)), np.asarray(plain(params, prompts)))


def test_attention_that_cannot_run_here_is_a_one_line_error():
  from bigjax.models import layers  # pylint: disable=g-import-not-at-top
  bf16 = dataclasses.replace(CFG, dtype="bfloat16")
  assert layers.attention_implementation(CFG, dropout=False, backend="cpu") == "plain"
  assert layers.attention_implementation(bf16, dropout=False, backend="gpu") == "cudnn"  # auto on NVIDIA
  assert layers.attention_implementation(bf16, dropout=True, backend="gpu") == "plain"  # cuDNN has no dropout
  assert layers.attention_implementation(CFG, dropout=False, backend="gpu") == "plain"  # float32
  cudnn = dataclasses.replace(bf16, attention="cudnn")
  assert layers.attention_implementation(cudnn, dropout=False, backend="gpu") == "cudnn"
  for cfg, backend, dropout, match in (
      (cudnn, "cpu", False, "model.attention='cudnn' runs on NVIDIA GPUs only; this backend is cpu"),
      (dataclasses.replace(CFG, attention="cudnn"), "gpu", False, "needs model.dtype 'bfloat16' or 'float16'"),
      (dataclasses.replace(CFG, attention="xla"), "cpu", True, "model.attention='xla' has no attention dropout")):
    with pytest.raises(config_lib.ConfigError, match=match):
      layers.attention_implementation(cfg, dropout=dropout, backend=backend)
  flash = dataclasses.replace(CFG, attention="flash")
  assert layers.attention_implementation(flash, dropout=False, backend="tpu") == "flash"
  assert layers.attention_implementation(flash, dropout=False, backend="gpu") == "flash"
  assert layers.attention_implementation(flash, dropout=False, backend="tpu", decode=True) == "plain"
  for cfg, backend, dropout, match in (
      (flash, "cpu", False, "model.attention='flash' runs the Pallas kernels of TPUs and NVIDIA GPUs; this "
                            "backend is cpu"),
      (flash, "tpu", True, "model.attention='flash' has no attention dropout"),
      (dataclasses.replace(FAMILY_CFGS["t5_v1_1"], attention="flash"), "gpu", False,
       "model.attention='flash' on GPUs has no additive bias")):
    with pytest.raises(config_lib.ConfigError, match=match):
      layers.attention_implementation(cfg, dropout=dropout, backend=backend)
  with pytest.raises(config_lib.ConfigError, match="model.attention='splash': allowed values are 'auto', 'plain'"):
    dataclasses.replace(CFG, attention="splash")


@pytest.fixture
def pallas_tpu_interpreted(monkeypatch):
  """The flash path as on a TPU: bigjax sees backend "tpu" and Pallas interprets the TPU kernels on CPU."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  from bigjax.models import layers  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(layers, "_backend", lambda: "tpu")
  calls, kernel = [], layers.flash_attention
  monkeypatch.setattr(layers, "flash_attention", lambda *a, **kw: calls.append(kw["causal"]) or kernel(*a, **kw))
  with pltpu.force_tpu_interpret_mode():
    yield calls  # One entry (its `causal`) for every attention the kernel computed, as traced.


@pytest.mark.parametrize("name", ["bert", "llama_style", "t5_v1_1"])
def test_flash_attention_equals_the_plain_path(name, pallas_tpu_interpreted):
  """Pallas's TPU flash kernel (interpreted) gives the plain path's logits and gradients at every real
  position: causal and bidirectional, padding, packed segments, T5's bias (whose gradient the kernel
  returns) and cross-attention over the encoder's segments. Padding positions, whose outputs no loss reads,
  are left out."""
  n = 128  # The TPU kernel's segment ids need key blocks of 128 (its lanes).
  layers_ = {"num_layers": 1, "num_decoder_layers": 1 if name == "t5_v1_1" else 0}  # Interpreting is slow.
  plain_cfg = dataclasses.replace(ATTENTION_CASES[name], attention="plain", max_len=n, **layers_)
  plain, flash = models.build(plain_cfg), models.build(dataclasses.replace(plain_cfg, attention="flash"))
  rng = np.random.default_rng(4)
  ids = jnp.asarray(rng.integers(3, 64, (2, n)), jnp.int32)
  mask = jnp.asarray([[1] * n, [1] * 100 + [0] * 28])
  seg = jnp.asarray([[1] * 50 + [2] * 60 + [3] * 18, [1] * 70 + [2] * 40 + [0] * 18])
  args, cases = (ids,), [({"attention_mask": mask}, mask)]
  if plain_cfg.family == "encoder_decoder":
    dec = jnp.asarray(rng.integers(3, 64, (2, n)), jnp.int32)
    dec_mask = jnp.asarray([[1] * n, [1] * 90 + [0] * 38])
    dec_seg = jnp.asarray([[1] * 40 + [2] * 70 + [3] * 18, [1] * 60 + [2] * 30 + [0] * 38])
    args = (ids, dec)
    cases = [({"attention_mask": mask, "decoder_attention_mask": dec_mask}, dec_mask),
             ({"segment_ids": seg, "decoder_segment_ids": dec_seg}, dec_seg != 0)]
  else:
    pos = jnp.asarray([list(range(50)) + list(range(60)) + list(range(18)),
                       list(range(70)) + list(range(40)) + [0] * 18])
    cases.append(({"segment_ids": seg, "positions": pos}, seg != 0))
  params = nn.meta.unbox(jax.jit(plain.init)(jax.random.PRNGKey(0), *args)["params"])
  for call, real in cases:
    real = np.asarray(real, bool)
    def loss(p, module):
      out = module.apply({"params": p}, *args, **call)
      w = real[..., None] if out.ndim == 3 else 1.0  # A classifier's pooled logits use the [CLS] row only.
      return jnp.sum(jnp.sin(out) * w), out
    (_, want), g_want = jax.jit(jax.value_and_grad(lambda p: loss(p, plain), has_aux=True))(params)
    pallas_tpu_interpreted.clear()
    (_, got), g_got = jax.jit(jax.value_and_grad(lambda p: loss(p, flash), has_aux=True))(params)
    # Every attention of the model went through the kernel: self-attention (causal in decoders), T5's cross.
    assert sorted(pallas_tpu_interpreted) == {"bert": [False], "llama_style": [True],
                                              "t5_v1_1": [False, False, True]}[name], pallas_tpu_interpreted
    want, got = np.asarray(want), np.asarray(got)
    if want.ndim == 3:
      want, got = want[real], got[real]
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=str(sorted(call)))
    for a, b in zip(jax.tree_util.tree_leaves(g_got), jax.tree_util.tree_leaves(g_want)):  # Sums over 2 x 128
      np.testing.assert_allclose(a, b, atol=2e-6 * np.abs(b).max() + 2e-5, rtol=1e-4, err_msg=str(sorted(call)))


def test_flash_refuses_a_prefix_lm_mask(pallas_tpu_interpreted):
  flash = models.build(dataclasses.replace(CFG, attention="flash"))
  ids = jnp.ones((1, 8), jnp.int32)
  params = jax.eval_shape(flash.init, jax.random.PRNGKey(0), ids)
  with pytest.raises(config_lib.ConfigError, match="model.attention='flash' has causal and segment masks only"):
    jax.eval_shape(lambda p: flash.apply(p, ids, prefix_mask=jnp.ones((1, 8), jnp.int32)), params)


@pytest.mark.parametrize("causal", [True, False])
def test_the_gpu_flash_kernel_interpreted_equals_the_plain_path(causal):
  """Pallas's GPU kernel (Triton on NVIDIA GPUs; interpreted here): self-attention with packed segments,
  forward and gradients, at every position that has a segment."""
  from bigjax.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 32, 2, 16)), jnp.float32) for _ in range(3))
  seg = jnp.asarray([[1] * 10 + [2] * 14 + [3] * 8, [1] * 20 + [2] * 8 + [0] * 4])
  dense = layers.combine_masks(layers.causal_mask(32)[None, None] if causal else None, layers.segment_mask(seg))
  real = np.asarray(seg != 0)
  def loss(fn):
    out = fn(q, k, v)
    return jnp.sum(jnp.sin(out) * real[..., None, None]), out
  plain = lambda q, k, v: layers.attention(q, k, v, dense, None, scale=0.25, implementation="plain")
  kernel = lambda q, k, v: layers.flash_attention(q, k, v, layers.self_segments(None, seg), None, scale=0.25,
                                                  causal=causal, backend="gpu", interpret=True)
  (_, want), g_want = jax.value_and_grad(lambda *a: loss(lambda *_: plain(*a)), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  (_, got), g_got = jax.value_and_grad(lambda *a: loss(lambda *_: kernel(*a)), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
