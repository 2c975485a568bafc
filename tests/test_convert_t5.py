"""T5 ⇄ bigjax: random-weight transformers models → bigjax, logits compared on padded batches; the KV
cache against the full forward; bad checkpoints; preset parameter counts against transformers'."""

import dataclasses
import json
import math
import resource

import jax
from flax import traverse_util
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from bigjax import config as config_lib  # noqa: E402
from bigjax import convert  # noqa: E402
from bigjax import models  # noqa: E402
from bigjax import partitioning  # noqa: E402
from bigjax.config import ConfigError  # noqa: E402
from bigjax.convert import t5  # noqa: E402
from bigjax.convert.common import Tensors  # noqa: E402

TOL = 1e-4
ENC_LEN, DEC_LEN = 40, 24  # Past relative_attention_max_distance=20: the log-spaced buckets all get used.
SMALL = dict(vocab_size=61, d_model=32, d_ff=48, relative_attention_num_buckets=8,
             relative_attention_max_distance=20, dropout_rate=0.0)
CASES = {
    "v1_0_relu_tied": dict(SMALL, d_kv=8, num_heads=4, num_layers=2, feed_forward_proj="relu"),
    # d_kv * num_heads = 36 != d_model; a deeper decoder than encoder.
    "v1_1_gated_gelu_untied": dict(SMALL, d_kv=12, num_heads=3, num_layers=2, num_decoder_layers=3,
                                   feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "gelu_untied_shallow_decoder": dict(SMALL, d_kv=8, num_heads=2, num_layers=3, num_decoder_layers=1,
                                        feed_forward_proj="gelu", tie_word_embeddings=False),
}


def make_hf_model(kw, seed=0):
  """A random T5ForConditionalGeneration in which every tensor matters: perturbed norms, a unit-scale
  relative-position table (so a wrong bucket shows) and, when untied, a separate lm_head."""
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**kw)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.add_(0.2 * torch.randn_like(p))
      elif "relative_attention_bias" in name:
        p.copy_(torch.randn_like(p))
  if kw.get("tie_word_embeddings", True) is False:
    # transformers 5.24 ties lm_head to shared even for this config; a real v1.1 checkpoint has its own.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(kw["vocab_size"], kw["d_model"]))
  return model


def padded_batch(vocab, seed=0):
  """Encoder and decoder ids with right padding in both (row 0 unpadded)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, vocab, (3, ENC_LEN))
  dec = rng.integers(2, vocab, (3, DEC_LEN))
  mask, dmask = np.ones_like(ids), np.ones_like(dec)
  mask[1, ENC_LEN - 9:], mask[2, 5:] = 0, 0
  dmask[1, 3:], dmask[2, DEC_LEN - 6:] = 0, 0
  return ids, mask, dec, dmask


def hf_logits(model, ids, mask, dec, dmask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                decoder_input_ids=torch.tensor(dec), decoder_attention_mask=torch.tensor(dmask))
  return out.logits.numpy()


def bigjax_logits(cfg, params, ids, mask, dec, dmask):
  module = models.build(cfg)
  return np.asarray(jax.jit(module.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(dec),
                                          attention_mask=jnp.asarray(mask), decoder_attention_mask=jnp.asarray(dmask)))


def worst(got, want, dmask):
  real = dmask.astype(bool)
  return float(np.max(np.abs(got[real] - want[real])))


@pytest.mark.parametrize("case", CASES)
def test_t5_logits_match_and_round_trip(tmp_path, case):
  kw = CASES[case]
  model = make_hf_model(kw)
  model.save_pretrained(tmp_path / "hf")
  tied = kw.get("tie_word_embeddings", True)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
  assert (reloaded.lm_head.weight is reloaded.shared.weight) == tied  # The HF reference really is untied.
  cfg, params = convert.from_hf(str(tmp_path / "hf"))
  assert cfg.tie_embeddings == tied and ("lm_head" in params) != tied
  depths = (kw["num_layers"], kw.get("num_decoder_layers", kw["num_layers"]))
  assert (cfg.num_layers, cfg.decoder_layers) == depths

  batch = padded_batch(kw["vocab_size"])
  want = hf_logits(reloaded, *batch)
  np.testing.assert_allclose(hf_logits(model, *batch), want, atol=1e-6)
  if not tied:  # HF's logits come from the separate lm_head: the shared embedding would give others.
    with torch.no_grad():
      out = reloaded(input_ids=torch.tensor(batch[0]), attention_mask=torch.tensor(batch[1]),
                     decoder_input_ids=torch.tensor(batch[2]), decoder_attention_mask=torch.tensor(batch[3]),
                     output_hidden_states=True)
      via_shared = (out.decoder_hidden_states[-1] @ reloaded.shared.weight.T).numpy()
    assert worst(via_shared, want, batch[3]) > 1.0
  err = worst(bigjax_logits(cfg, params, *batch), want, batch[3])
  print(f"\n{case}: worst |Δlogit| bigjax vs HF = {err:.2e}")
  assert err <= TOL

  convert.to_hf(cfg, params, str(tmp_path / "back"))
  again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
  assert (again.lm_head.weight is again.shared.weight) == tied
  err_back = worst(hf_logits(again, *batch), want, batch[3])
  print(f"{case}: worst |Δlogit| round trip = {err_back:.2e}")
  assert err_back <= TOL
  assert t5.config_from_hf(json.loads((tmp_path / "back" / "config.json").read_text())) == cfg


def test_t5_untied_config_saved_without_lm_head_uses_shared(tmp_path):
  """transformers 5.24 saves a v1.1-config model whose lm_head is still tied without lm_head.weight:
  the output layer is then the shared embedding, without the v1.0 d_model**-0.5 scaling."""
  kw = dict(CASES["v1_1_gated_gelu_untied"], num_decoder_layers=None)
  torch.manual_seed(1)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**kw)).eval()
  model.save_pretrained(tmp_path / "hf")
  assert "lm_head.weight" not in load_file(tmp_path / "hf" / "model.safetensors")
  cfg, params = convert.from_hf(str(tmp_path / "hf"))
  assert not cfg.tie_embeddings
  batch = padded_batch(kw["vocab_size"], seed=1)
  assert worst(bigjax_logits(cfg, params, *batch), hf_logits(model, *batch), batch[3]) <= TOL


def converted(kw, seed=0):
  """(cfg, params) of `make_hf_model(kw)`, converted in memory (no files)."""
  model = make_hf_model(kw, seed)
  cfg = t5.config_from_hf(model.config.to_dict())
  tensors = Tensors({n: p.detach().numpy() for n, p in model.state_dict().items()}, "t5")
  params = t5.params_from_hf(cfg, tensors, {})
  tensors.check_all_used()
  return cfg, params


@pytest.mark.parametrize("case", ["v1_0_relu_tied", "v1_1_gated_gelu_untied"])
def test_t5_kv_cache_matches_full_forward(case):
  """Decoding token by token (and a prefill chunk, then token by token) with init_cache + step_fn
  gives the full forward's logits, past max_distance so that the decoder's log buckets are used.
  Cross-attention keys and values come from the encoder output at the first step only: the later steps
  are given a zeroed encoder output and must not notice."""
  cfg, params = converted(CASES[case], seed=2)
  module = models.build(cfg)
  ids, mask, dec, _ = padded_batch(cfg.vocab_size, seed=2)
  ids, mask, dec = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec)
  want = np.asarray(module.apply({"params": params}, ids, dec, attention_mask=mask))
  encoded = module.apply({"params": params}, ids, attention_mask=mask, method=module.encode)
  first = jax.jit(models.step_fn(cfg, params, encoded, mask))
  later = jax.jit(models.step_fn(cfg, params, jnp.zeros_like(encoded), mask))
  rows = ids.shape[0]
  for prefill in (1, 7):  # All single tokens; a 7-token chunk then single tokens.
    cache = models.init_cache(cfg, rows, DEC_LEN, ENC_LEN)
    assert not any("cross" in "/".join(map(str, k)) for k in traverse_util.flatten_dict(cache))
    logits, cache = first(dec[:, :prefill], cache)
    cross = {k: v for k, v in traverse_util.flatten_dict(cache).items() if k[-1].startswith("cross_")}
    assert len(cross) == 2 * cfg.decoder_layers
    layout = {"cross_key": (rows, cfg.num_heads, ENC_LEN, cfg.kv_dim),  # The KV cache's (layers._cache_layout).
              "cross_value": (rows, cfg.num_heads, cfg.kv_dim, ENC_LEN)}
    assert all(v.shape == layout[k[-1]] for k, v in cross.items())
    got = [logits]
    for i in range(prefill, DEC_LEN):
      logits, cache = later(dec[:, i:i + 1], cache)
      got.append(logits)
    err = float(np.max(np.abs(np.concatenate(got, 1) - want)))
    print(f"\nkv cache {case} prefill={prefill}: worst |Δlogit| = {err:.2e}")
    assert err <= TOL


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A tiny v1.0 checkpoint: (config.json dict, tensors)."""
  path = tmp_path_factory.mktemp("t5") / "hf"
  kw = dict(SMALL, d_kv=8, num_heads=2, num_layers=2, num_decoder_layers=1)
  transformers.T5ForConditionalGeneration(transformers.T5Config(**kw)).save_pretrained(path)
  return json.loads((path / "config.json").read_text()), load_file(path / "model.safetensors")


def write(path, hf, tensors):
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(hf))
  save_file(tensors, path / "model.safetensors")
  return str(path)


@pytest.mark.parametrize("change, message", [
    (dict(architectures=["T5EncoderModel"]),
     r"architectures=\['T5EncoderModel'\] is not supported; supported: T5ForConditionalGeneration"),
    (dict(architectures=["T5ForQuestionAnswering"]), r"'T5ForQuestionAnswering'\] is not supported"),
    (dict(feed_forward_proj="gated-tanh"),
     r"feed_forward_proj='gated-tanh' is not supported; supported: .*gated-gelu"),
    (dict(feed_forward_proj="relu-gelu"), r"feed_forward_proj='relu-gelu' is not supported"),
])
def test_t5_bad_configs_are_named(tmp_path, saved, change, message):
  hf, tensors = saved
  with pytest.raises(ConfigError, match=message):
    convert.from_hf(write(tmp_path, {**hf, **change}, tensors))


def _missing(t):
  del t["decoder.block.0.layer.2.DenseReluDense.wo.weight"]


def _wrong_shape(t):
  t["encoder.block.1.layer.0.SelfAttention.q.weight"] = np.zeros((16, 33), np.float32)


def _extra(t):
  t["encoder.block.2.layer.0.SelfAttention.q.weight"] = np.zeros((16, 32), np.float32)


def _embed_differs(t):
  t["encoder.embed_tokens.weight"] = t["shared.weight"] + 1


def _tied_head_differs(t):
  t["lm_head.weight"] = t["shared.weight"] + 1


@pytest.mark.parametrize("change, message", [
    (_missing, r"missing tensor 'decoder\.block\.0\.layer\.2\.DenseReluDense\.wo\.weight'"),
    (_wrong_shape, r"'encoder\.block\.1\.layer\.0\.SelfAttention\.q\.weight' has shape \(16, 33\), "
                   r"expected \(16, 32\)"),
    (_extra, r"does not use: encoder\.block\.2\.layer\.0\.SelfAttention\.q\.weight"),
    (_embed_differs, r"'encoder\.embed_tokens\.weight' differs from 'shared\.weight'"),
    (_tied_head_differs, r"'lm_head\.weight' differs from 'shared\.weight'.*tie_word_embeddings=false"),
])
def test_t5_bad_checkpoints_are_named(tmp_path, saved, change, message):
  hf, tensors = saved
  tensors = dict(tensors)
  change(tensors)
  with pytest.raises(ConfigError, match=message):
    convert.from_hf(write(tmp_path, hf, tensors))


def test_t5_equal_copies_of_shared_are_accepted(tmp_path, saved):
  """Checkpoints that store the tied tensors (embed_tokens, lm_head) equal to shared.weight load."""
  hf, tensors = saved
  extra = {n: tensors["shared.weight"] for n in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                                 "lm_head.weight")}
  extra[t5._UNUSED[0]] = np.zeros((8, 2), np.float32)  # pylint: disable=protected-access
  cfg, params = convert.from_hf(write(tmp_path, hf, {**tensors, **extra}))
  assert cfg.tie_embeddings and "lm_head" not in params


@pytest.mark.parametrize("cfg", [config_lib.preset("gpt2_small"), config_lib.preset("bert_tiny"),
                                 config_lib.preset("t5_small", use_bias=True),
                                 config_lib.preset("t5_small", norm="layernorm")])
def test_t5_to_hf_refuses_other_shapes(cfg):
  with pytest.raises(ConfigError, match="not T5-shaped"):
    t5.to_hf(cfg, {})


def test_t5_feed_forward_names_round_trip():
  for (act, gated), proj in t5._FEED_FORWARD.items():  # pylint: disable=protected-access
    assert t5.activation_from_hf(proj) == (act, gated)
    hf_cfg = transformers.T5Config(feed_forward_proj=proj)  # transformers accepts the name ...
    assert (hf_cfg.dense_act_fn in t5._ACTIVATIONS) and hf_cfg.is_gated_act == gated  # ... and reads it so.
    assert t5._ACTIVATIONS[hf_cfg.dense_act_fn] == act  # pylint: disable=protected-access


T5_PRESETS = [n for n in config_lib.PRESETS if n.startswith("t5_")]


@pytest.mark.parametrize("name", T5_PRESETS)
def test_t5_presets_have_the_hugging_face_parameter_counts(name):
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB.
  cfg = config_lib.preset(name)
  module = models.build(config_lib.preset(name, scan_layers=True))  # Same count; traces one block, not 48.
  ids = jnp.zeros((1, 8), jnp.int32)
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, ids)["params"])
  ours = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(partitioning.unbox(abstract)))
  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff,
      num_layers=cfg.num_layers, num_heads=cfg.num_heads, tie_word_embeddings=cfg.tie_embeddings,
      feed_forward_proj="gated-gelu" if cfg.gated_mlp else "relu")
  # The same model; the preset scans 24+ layers, from_hf gives the unscanned layout its params come in.
  assert t5.config_from_hf(hf_cfg.to_dict()) == dataclasses.replace(cfg, scan_layers=False)
  with torch.device("meta"):  # Nothing is allocated, even for T5-11B.
    model = transformers.T5ForConditionalGeneration(hf_cfg)
    if not cfg.tie_embeddings:
      # transformers 5.24 ties lm_head to shared even for a v1.1 config; the real v1.1 architecture (and
      # the bigjax preset) has its own output layer, so the reference count includes one.
      model.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
    theirs = sum(p.numel() for p in model.parameters())
  assert ours == theirs
  grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2 ** 20
  assert grown_gib < 1.0, f"{name}: counting parameters grew peak memory by {grown_gib:.1f} GiB"


def test_t5_tied_or_not_from_either_config_key():
  """Old checkpoints say tie_word_embeddings=false for v1.1; transformers 5 writes true and keeps the
  choice in scale_decoder_outputs=false. Either means: separate lm_head, no d_model**-0.5 scaling."""
  assert t5.is_tied({}) and t5.is_tied({"tie_word_embeddings": True, "scale_decoder_outputs": True})
  assert not t5.is_tied({"tie_word_embeddings": False})
  assert not t5.is_tied({"tie_word_embeddings": True, "scale_decoder_outputs": False})
