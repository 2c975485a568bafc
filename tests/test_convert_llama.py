"""Llama parity: random-weight `LlamaForCausalLM` → bigjax (rotary, RMSNorm, SwiGLU), logits compared on a
right-padded batch; the same model scanned, rematerialised and decoded with a KV cache; bad configs named."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bigjax import convert  # noqa: E402
from bigjax import models  # noqa: E402
from bigjax import partitioning  # noqa: E402
from bigjax.config import ConfigError, ModelConfig  # noqa: E402
from bigjax.convert import llama  # noqa: E402
from bigjax.models import layers  # noqa: E402

SMALL = dict(hidden_size=48, num_attention_heads=3, intermediate_size=80, num_hidden_layers=2, vocab_size=97,
             max_position_embeddings=64)
LENGTH = 20


def make_hf(path, **kw):
  """A random LlamaForCausalLM with perturbed norms and biases (so every tensor matters), saved at `path`."""
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**SMALL, **kw})).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path)
  return model


def batch(vocab):
  """Three rows of LENGTH tokens: one full, two right-padded."""
  ids = np.random.default_rng(0).integers(0, vocab, (3, LENGTH))
  mask = np.ones((3, LENGTH), np.int64)
  mask[1, LENGTH - 5:] = 0
  mask[2, 3:] = 0
  return ids, mask


def hf_logits(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  return out.logits.numpy()


def bigjax_logits(cfg, params, ids, mask=None):
  """The non-cached forward, jitted (one compile is faster than running the ops one by one)."""
  apply = jax.jit(models.build(cfg).apply)
  mask = None if mask is None else jnp.asarray(mask)
  return np.asarray(apply({"params": params}, jnp.asarray(ids), attention_mask=mask))


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
  """The default small Llama (untied, no biases), converted: (hf model, cfg, params)."""
  path = tmp_path_factory.mktemp("llama") / "hf"
  model = make_hf(path)
  cfg, params = convert.from_hf(str(path))
  return model, cfg, params


def check_parity(tmp_path, model, cfg, params):
  """bigjax's logits equal HF's at real positions, and to_hf → from_pretrained gives them back."""
  ids, mask = batch(cfg.vocab_size)
  real = mask.astype(bool)
  want = hf_logits(model, ids, mask)
  worst = float(np.max(np.abs(bigjax_logits(cfg, params, ids, mask)[real] - want[real])))
  print(f"worst |Δlogit| vs LlamaForCausalLM: {worst:.3g}")
  assert worst <= 1e-4
  convert.to_hf(cfg, params, str(tmp_path / "back"))
  again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
  np.testing.assert_allclose(hf_logits(again, ids, mask)[real], want[real], atol=1e-4)


def test_untied_logits_match_and_round_trip(tmp_path, untied):
  model, cfg, params = untied
  assert (cfg.positions, cfg.norm, cfg.activation, cfg.gated_mlp, cfg.use_bias, cfg.tie_embeddings) == (
      "rotary", "rmsnorm", "silu", True, False, False)
  assert "lm_head" in params
  check_parity(tmp_path, model, cfg, params)


@pytest.mark.parametrize("kw", [
    # head_dim 8 with hidden 48 and 4 heads (not 48 / 4); biases everywhere; another rotary base; tied.
    dict(num_attention_heads=4, head_dim=8, attention_bias=True, mlp_bias=True,
         rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=True),
    dict(hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True, rms_norm_eps=1e-5),
])
def test_variants_match_and_round_trip(tmp_path, kw):
  model = make_hf(tmp_path / "hf", **kw)
  cfg, params = convert.from_hf(str(tmp_path / "hf"))
  assert cfg.kv_dim == kw.get("head_dim", 16) and cfg.tie_embeddings and "lm_head" not in params
  assert cfg.use_bias == kw.get("attention_bias", False)
  check_parity(tmp_path, model, cfg, params)


def test_scan_and_remat_give_the_same_logits(untied):
  _, cfg, params = untied
  ids, mask = batch(cfg.vocab_size)
  want = bigjax_logits(cfg, params, ids, mask)
  scanned = models.scan_params(params)
  for changes, p in ((dict(scan_layers=True), scanned), (dict(remat_policy="full"), params)):
    got = bigjax_logits(dataclasses.replace(cfg, **changes), p, ids, mask)
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=str(changes))
  back = models.unscan_params(scanned)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(back),
                                                   jax.tree_util.tree_leaves(params)))


def cached_logits(cfg, params, ids, prefill):
  """Logits of `ids` fed through the KV cache: a `prefill`-token chunk, then one token at a time."""
  step = jax.jit(models.step_fn(cfg, params))  # Two compiles (prefill, one token) beat eager steps.
  cache = models.init_cache(cfg, ids.shape[0], ids.shape[1])
  logits, cache = step(jnp.asarray(ids[:, :prefill]), cache)
  out = [logits]
  for t in range(prefill, ids.shape[1]):
    logits, cache = step(jnp.asarray(ids[:, t:t + 1]), cache)
    out.append(logits)
  return np.concatenate([np.asarray(x) for x in out], axis=1)


def test_kv_cache_matches_the_full_forward(untied):
  _, rotary_cfg, rotary_params = untied
  gpt2_cfg = ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=32)
  init = jax.jit(models.build(gpt2_cfg).init)
  gpt2_params = partitioning.unbox(init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  ids = np.random.default_rng(1).integers(0, 97, (2, 12))
  for cfg, params in ((rotary_cfg, rotary_params), (gpt2_cfg, gpt2_params),
                      (dataclasses.replace(rotary_cfg, scan_layers=True), models.scan_params(rotary_params))):
    want = bigjax_logits(cfg, params, ids)
    got = cached_logits(cfg, params, ids, prefill=5)
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"{cfg.positions} scan={cfg.scan_layers}")


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention_matches_and_keeps_a_smaller_cache(tmp_path, kv_heads):
  """num_key_value_heads < num_attention_heads (multi-query with 1): logits equal LlamaForCausalLM's in the
  plain and XLA attention paths, to_hf round-trips, the KV cache holds kv_heads only (its bytes ÷ the group
  size) and cached decoding, scanned too, equals the full forward."""
  model = make_hf(tmp_path / "hf", num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=8)
  cfg, params = convert.from_hf(str(tmp_path / "hf"))
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.kv_heads) == (4, kv_heads, kv_heads)
  assert params["decoder"]["block_0"]["attention"]["key"]["kernel"].shape == (48, kv_heads, 8)
  check_parity(tmp_path, model, cfg, params)
  ids, mask = batch(cfg.vocab_size)
  real = mask.astype(bool)
  want = hf_logits(model, ids, mask)[real]
  np.testing.assert_allclose(bigjax_logits(dataclasses.replace(cfg, attention="xla"), params, ids, mask)[real],
                             want, atol=1e-4)
  full = dataclasses.replace(cfg, num_kv_heads=0)
  nbytes = lambda c: sum(x.nbytes for x in jax.tree_util.tree_leaves(c) if x.ndim > 2)
  assert nbytes(models.init_cache(full, 3, LENGTH)) == nbytes(models.init_cache(cfg, 3, LENGTH)) * 4 // kv_heads
  for c, p in ((cfg, params), (dataclasses.replace(cfg, scan_layers=True), models.scan_params(params))):
    np.testing.assert_allclose(cached_logits(c, p, ids, prefill=5), bigjax_logits(c, p, ids), atol=1e-4)


def test_grouped_query_heads_shard_over_tensor_or_are_replicated_with_a_line():
  cfg = ModelConfig(vocab_size=96, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, d_ff=64,
                    positions="rotary", norm="rmsnorm", gated_mlp=True, activation="silu", use_bias=False)
  for tensor, replicated in ((2, False), (4, True)):
    mesh = jax.sharding.AbstractMesh((8 // tensor, 1, tensor), partitioning.MESH_AXES)
    rules, note = partitioning.fit_kv_heads(partitioning.RULES, cfg, mesh)
    assert (note is not None) == replicated
    if replicated:
      assert note == ("bigjax: model.num_kv_heads=2 does not divide over mesh axes tensor (4): key/value heads "
                      "are replicated there (query heads stay sharded)")
    abstract = __import__("bigjax.steps", fromlist=["x"]).abstract_state(cfg, mesh, rules)
    key = abstract.shardings.params["decoder"]["block_0"]["attention"]["key"]["kernel"].spec
    query = abstract.shardings.params["decoder"]["block_0"]["attention"]["query"]["kernel"].spec
    assert tuple(query)[1] == "tensor" and tuple(key)[1] == (None if replicated else "tensor"), (key, query)
  assert partitioning.fit_kv_heads(partitioning.RULES, dataclasses.replace(cfg, num_kv_heads=0),
                                   mesh)[1] is None  # Without grouping the heads rule decides.
  with pytest.raises(ConfigError, match=r"model.num_kv_heads=3 must divide model.num_heads=4"):
    dataclasses.replace(cfg, num_kv_heads=3)
  with pytest.raises(ConfigError, match=r"grouped-query attention is for model.family='decoder'"):
    ModelConfig(family="encoder", num_heads=4, num_kv_heads=2)


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0},
    # Llama 3.1's bands over head_dim 16 at base 1e4 and an original context of 32: wavelengths below 8
    # kept, above 32 divided by the factor, between them blended; all three kinds occur within 20 tokens.
    {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32},
    # YaRN over head_dim 16: dimensions 0-2 kept, 3-5 blended, 6-7 divided (correction range 2..6 from an
    # original context of 4096), cos/sin times 0.1 ln 4 + 1; then untruncated bounds and DeepSeek's mscale pair.
    {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 4096,
     "beta_fast": 32.0, "beta_slow": 1.0},
    {"rope_type": "yarn", "rope_theta": 500.0, "factor": 8.0, "original_max_position_embeddings": 2048,
     "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False, "mscale": 1.0, "mscale_all_dim": 0.5},
])
def test_scaled_rope_matches_and_round_trips(tmp_path, rope):
  model = make_hf(tmp_path / "hf", rope_parameters=rope)
  cfg, params = convert.from_hf(str(tmp_path / "hf"))
  assert (cfg.rope_type, cfg.rope_factor, cfg.rope_theta) == (rope["rope_type"], rope["factor"], rope["rope_theta"])
  if rope["rope_type"] == "llama3":
    wavelen = 2 * np.pi / np.asarray(layers.rope_inv_freq(dataclasses.replace(cfg, rope_type="default"), 16))
    assert (wavelen < 8).any() and ((wavelen >= 8) & (wavelen <= 32)).any() and (wavelen > 32).any()
  if rope["rope_type"] == "yarn":  # Kept, divided by the factor, and blended frequencies all occur.
    ratio = np.asarray(layers.rope_inv_freq(cfg, 16)) / np.asarray(
        layers.rope_inv_freq(dataclasses.replace(cfg, rope_type="default"), 16))
    f = rope["factor"]
    assert np.isclose(ratio, 1).any() and np.isclose(ratio, 1 / f).any() and ((ratio < 0.99) & (ratio > 1.01 / f)).any()
  check_parity(tmp_path, model, cfg, params)
  ids, mask = batch(cfg.vocab_size)
  unscaled = bigjax_logits(dataclasses.replace(cfg, rope_type="default"), params, ids, mask)
  assert np.abs(unscaled - hf_logits(model, ids, mask))[mask.astype(bool)].max() > 5e-4  # The scaling shows (5x the bound).
  back = json.loads((tmp_path / "back" / "config.json").read_text())["rope_parameters"]
  mscales = ("mscale", "mscale_all_dim")  # Written back as the attention factor they make.
  assert {k: back[k] for k in rope if k not in mscales} == {k: v for k, v in rope.items() if k not in mscales}
  ids = np.random.default_rng(1).integers(0, 97, (2, 12))
  np.testing.assert_allclose(cached_logits(cfg, params, ids, prefill=5), bigjax_logits(cfg, params, ids), atol=1e-4)


def hf_dict(**kw):
  return transformers.LlamaConfig(**{**SMALL, **kw}).to_dict()


@pytest.mark.parametrize("kw, error", [
    (dict(num_key_value_heads=2), r"num_key_value_heads=2 does not divide num_attention_heads=3"),
    (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                           "long_factor": [2.0] * 8, "original_max_position_embeddings": 32}),
     r"rope_type='longrope' is not supported"),
    (dict(attention_bias=True, mlp_bias=False), r"attention_bias=True with mlp_bias=False"),
    (dict(hidden_act="tanh"), r"hidden_act='tanh' is not supported"),
])
def test_unsupported_configs_are_named(kw, error):
  with pytest.raises(ConfigError, match=error):
    llama.config_from_hf(hf_dict(**kw))


def test_older_config_json_layouts():
  """transformers 4.x wrote rope_theta at the top level and scaling as rope_scaling {"type": ...}."""
  hf = {k: v for k, v in hf_dict().items() if k not in ("rope_parameters", "head_dim")}
  cfg = llama.config_from_hf({**hf, "rope_theta": 123.0, "rope_scaling": None, "pretraining_tp": 2})
  assert (cfg.rope_theta, cfg.kv_dim, cfg.head_dim) == (123.0, 16, 0)
  with pytest.raises(ConfigError, match=r"rope_type='dynamic'"):
    llama.config_from_hf({**hf, "rope_scaling": {"type": "dynamic", "factor": 2.0}})


def test_bad_checkpoints_are_named(tmp_path, untied):
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  model, cfg, params = untied
  model.save_pretrained(tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)  # Older checkpoints.
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  assert convert.from_hf(str(tmp_path))[0] == cfg  # The buffer is skipped.
  hf = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(hf, tie_word_embeddings=True)))
  with pytest.raises(ConfigError, match="lm_head.weight differs from embed_tokens.weight"):
    convert.from_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(hf))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ConfigError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
    convert.from_hf(str(tmp_path))


def test_to_hf_refuses_models_that_are_not_llama_shaped(untied):
  _, cfg, params = untied
  with pytest.raises(ConfigError, match=r"not Llama-shaped \(positions != 'rotary', norm != 'rmsnorm'"):
    llama.to_hf(dataclasses.replace(cfg, positions="learned", norm="layernorm"), params)
  with pytest.raises(ConfigError, match=r"not Llama-shaped \(gated_mlp=False\)"):
    llama.to_hf(dataclasses.replace(cfg, gated_mlp=False), params)
