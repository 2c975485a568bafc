"""Llama 3, Mistral, Qwen2, Qwen3 and Gemma parity: random-weight transformers models of several shapes (odd head
counts, grouped and multi-query heads, head_dim x heads != d_model, tied and untied, norms perturbed away
from their init) → bigjax: logits on a right-padded batch in the plain and XLA attention paths, the KV cache,
to_hf → transformers exactly, greedy and beam search against `generate`, a sliding window that changes the
logits as it does in transformers, packed rows, scan and remat; presets with transformers' parameter counts."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bigjax import config as config_lib  # noqa: E402
from bigjax import convert  # noqa: E402
from bigjax import decode  # noqa: E402
from bigjax import models  # noqa: E402
from bigjax import partitioning  # noqa: E402
from bigjax.config import ConfigError  # noqa: E402
from bigjax.convert import llama  # noqa: E402
import test_convert_llama  # noqa: E402  (its forward and KV-cache helpers)

BASE = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, vocab_size=97, max_position_embeddings=64)
LENGTH = 20
CLASSES = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
           "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM)}
CASES = {
    # Llama 3.2's layout: tied, 6 heads over 2, Llama 3.1's RoPE bands inside 20 tokens.
    "llama3-gqa-tied": ("llama", dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                                      rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 32})),
    # A window of 6 over 20 tokens; 6 heads over 2 key/value heads of width 12 (72 != 48); untied.
    "mistral-window": ("mistral", dict(num_attention_heads=6, num_key_value_heads=2, head_dim=12, sliding_window=6)),
    "mistral-mqa-tied": ("mistral", dict(num_attention_heads=3, num_key_value_heads=1, sliding_window=None,
                                         tie_word_embeddings=True)),
    "qwen2-9-heads-tied": ("qwen2", dict(num_attention_heads=9, num_key_value_heads=3, head_dim=8,
                                         tie_word_embeddings=True)),
    "qwen2-window": ("qwen2", dict(num_attention_heads=3, num_key_value_heads=3, use_sliding_window=True,
                                   sliding_window=5, max_window_layers=0)),
    "qwen3-gqa": ("qwen3", dict(num_attention_heads=6, num_key_value_heads=2, head_dim=16)),
    "qwen3-mqa-tied": ("qwen3", dict(num_attention_heads=3, num_key_value_heads=1, head_dim=16,
                                     tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 500.0})),
    "gemma-mqa": ("gemma", dict(num_attention_heads=3, num_key_value_heads=1, head_dim=32)),
    "gemma-untied": ("gemma", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   tie_word_embeddings=False, hidden_act="gelu")),
}


def make_hf(path, kind, kw, seed=0):
  """A random `*ForCausalLM` with perturbed norms and biases (so every tensor matters), saved at `path`."""
  config_cls, model_cls = CLASSES[kind]
  torch.manual_seed(seed)
  model = model_cls(config_cls(**{**BASE, **kw, "initializer_range": 0.1})).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.2 * torch.randn_like(p))
  model.save_pretrained(path)
  return model


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
  """(case name, kind, hf model, cfg, params, directory) of one CASES entry."""
  kind, kw = CASES[request.param]
  root = tmp_path_factory.mktemp(request.param)
  model = make_hf(root / "hf", kind, kw)
  cfg, params = convert.from_hf(str(root / "hf"))
  return request.param, kind, model, cfg, params, root


def batch(vocab):
  ids = np.random.default_rng(0).integers(0, vocab, (3, LENGTH))
  mask = np.ones((3, LENGTH), np.int64)
  mask[1, LENGTH - 5:] = 0
  mask[2, 3:] = 0
  return ids, mask


def hf_logits(model, ids, mask=None):
  with torch.no_grad():
    mask = None if mask is None else torch.tensor(mask)
    return model(input_ids=torch.tensor(ids), attention_mask=mask).logits.numpy()


ours = test_convert_llama.bigjax_logits  # The jitted, non-cached forward.
cached_logits = test_convert_llama.cached_logits  # A prefill chunk, then one token at a time through the KV cache.


def test_logits_match_cache_and_round_trip(case, tmp_path):
  name, kind, model, cfg, params, _ = case
  expect = {"llama": dict(rope_type="llama3"), "mistral": dict(sliding_window=getattr(model.config, "sliding_window", 0) or 0),
            "qwen2": dict(qkv_bias=True, sliding_window=5 if "window" in name else 0), "qwen3": dict(qk_norm=True),
            "gemma": dict(norm_plus_one=True, embed_scale=True)}[kind]
  assert {k: getattr(cfg, k) for k in expect} == expect, cfg
  head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
  assert cfg.kv_heads == model.config.num_key_value_heads and cfg.kv_dim == head_dim
  assert ("lm_head" in params) != cfg.tie_embeddings
  ids, mask = batch(cfg.vocab_size)
  real = mask.astype(bool)
  want = hf_logits(model, ids, mask)
  worst = {}
  for impl in ("plain", "xla"):
    got = ours(dataclasses.replace(cfg, attention=impl), params, ids, mask)
    worst[impl] = float(np.max(np.abs(got[real] - want[real])))
  print(f"{name}: worst |Δlogit| vs {type(model).__name__}: {worst}")
  assert max(worst.values()) <= 1e-4, worst
  # Decoding with the KV cache (the window reaches back into it) equals the full forward.
  np.testing.assert_allclose(cached_logits(cfg, params, ids[:2, :14], prefill=5), ours(cfg, params, ids[:2, :14]),
                             atol=1e-4)
  # to_hf → transformers: the same class (a Mistral without a window is written as the Llama it is), every
  # tensor bitwise, the same logits.
  convert.to_hf(cfg, params, str(tmp_path / "back"))
  written = json.loads((tmp_path / "back" / "config.json").read_text())
  back_kind = "llama" if kind == "mistral" and not cfg.sliding_window else kind
  assert written["model_type"] == back_kind and written["architectures"] == [llama.ARCHITECTURES[back_kind]]
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
  assert type(again).__name__ == llama.ARCHITECTURES[back_kind]
  theirs = {k: v for k, v in model.state_dict().items()}
  for k, v in again.state_dict().items():
    assert torch.equal(v, theirs[k]), k
  np.testing.assert_array_equal(hf_logits(again, ids, mask)[real], want[real])


@pytest.mark.parametrize("name", ["llama3-gqa-tied", "mistral-window", "qwen2-9-heads-tied", "qwen3-gqa", "gemma-mqa"])
def test_greedy_and_beam_search_equal_generate(name, tmp_path):
  kind, kw = CASES[name]
  model = make_hf(tmp_path / "hf", kind, kw, seed=1)
  cfg, params = convert.from_hf(str(tmp_path / "hf"))
  prompts = [[5, 6, 7, 8, 9], [40, 41], [3, 30, 31, 32]]
  for beams in (1, 3):
    got = decode.for_model(cfg, params, prompts, max_new_tokens=10, eos_id=-1, pad_id=0, num_beams=beams)
    want = []
    with torch.no_grad():
      for p in prompts:
        out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             do_sample=False, num_beams=beams, max_new_tokens=10, eos_token_id=None, pad_token_id=0)
        want.append(out[0].tolist())
    assert got == want, (beams, got, want)
    assert len({tuple(g[len(p):]) for g, p in zip(got, prompts)}) == 3  # Varied continuations, not one token.


@pytest.mark.parametrize("case", ["mistral-window", "qwen2-window"], indirect=True)
def test_a_sliding_window_changes_the_logits_as_in_transformers(case):
  """Within the window the logits equal the unwindowed model's; past it they differ, on both sides alike."""
  _, kind, model, cfg, params, _ = case
  assert cfg.sliding_window
  ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, LENGTH))
  window = cfg.sliding_window
  full_cfg = dataclasses.replace(cfg, sliding_window=0)
  hf_full = dict(sliding_window=None) if kind == "mistral" else dict(use_sliding_window=False, layer_types=None)
  config_cls, model_cls = CLASSES[kind]
  full_model = model_cls(config_cls(**{**model.config.to_dict(), **hf_full})).eval()
  full_model.load_state_dict(model.state_dict())
  windowed, full = ours(cfg, params, ids), ours(full_cfg, params, ids)
  np.testing.assert_allclose(windowed[:, :window], full[:, :window], atol=1e-5)
  assert np.abs(windowed[:, window:] - full[:, window:]).min(axis=-1).max() > 0
  assert np.abs(windowed[:, window:] - full[:, window:]).max() > 1e-3
  np.testing.assert_allclose(windowed, hf_logits(model, ids), atol=1e-4)
  np.testing.assert_allclose(full, hf_logits(full_model, ids), atol=1e-4)


@pytest.mark.parametrize("name", ["mistral-window", "qwen3-gqa", "gemma-mqa"])
def test_packed_rows_scan_and_remat(name, tmp_path):
  """Two sequences packed in a row (segment ids, positions restarting) score as each alone; the scanned and
  rematerialised models give the same logits."""
  kind, kw = CASES[name]
  make_hf(tmp_path / "hf", kind, kw)
  cfg, params = convert.from_hf(str(tmp_path / "hf"))
  rng = np.random.default_rng(3)
  a, b = rng.integers(0, cfg.vocab_size, 12), rng.integers(0, cfg.vocab_size, 8)
  packed = np.concatenate([a, b])[None]
  segments = np.array([[1] * 12 + [2] * 8])
  positions = np.array([list(range(12)) + list(range(8))])
  apply = jax.jit(models.build(cfg).apply)
  got = np.asarray(apply({"params": params}, jnp.asarray(packed), segment_ids=jnp.asarray(segments),
                         positions=jnp.asarray(positions)))
  np.testing.assert_allclose(got[0, :12], ours(cfg, params, a[None])[0], atol=1e-5)
  np.testing.assert_allclose(got[0, 12:], ours(cfg, params, b[None])[0], atol=1e-5)
  want = ours(cfg, params, packed)
  for changes, p in ((dict(scan_layers=True), models.scan_params(params)), (dict(remat_policy="full"), params)):
    np.testing.assert_allclose(ours(dataclasses.replace(cfg, **changes), p, packed), want, atol=1e-5)


PRESETS = {"llama2_7b": 6_738_415_616, "llama3_8b": 8_030_261_248, "llama3_2_1b": 1_235_814_400, "llama3_2_3b": 3_212_749_824,
           "llama3_1_8b": 8_030_261_248, "llama3_1_70b": 70_553_706_496, "mistral_7b": 7_241_732_096,
           "qwen2_5_0_5b": 494_032_768, "qwen2_5_7b": 7_615_616_512, "qwen3_0_6b": 596_049_920,
           "qwen3_8b": 8_190_735_360, "gemma_2b": 2_506_172_416, "gemma_7b": 8_537_680_896}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_transformers_parameter_counts(name):
  """Each preset written as its Hugging Face config and built by transformers on the meta device has the
  model card's parameter count, and so has bigjax's model of it."""
  cfg = config_lib.preset(name)
  module = models.build(cfg)
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(partitioning.unbox(abstract)))
  kind = llama.model_type(cfg)
  hf = llama._hf_config(cfg, kind)  # pylint: disable=protected-access
  hf_config = transformers.AutoConfig.for_model(**hf)
  with torch.device("meta"):
    theirs = transformers.AutoModelForCausalLM.from_config(hf_config)
  assert type(theirs).__name__ == llama.ARCHITECTURES[kind]
  assert count == sum(p.numel() for p in theirs.parameters()) == PRESETS[name]
  implied = cfg.kv_dim * cfg.num_heads == cfg.d_model  # head_dim 0 means d_model // num_heads.
  assert llama.config_from_hf(hf_config.to_dict()) == dataclasses.replace(cfg, scan_layers=False,
                                                                          head_dim=0 if implied else cfg.head_dim)


@pytest.mark.parametrize("kind, kw, error", [
    ("qwen2", dict(num_hidden_layers=4, use_sliding_window=True, sliding_window=8, max_window_layers=2),
     r"sliding window on some layers only"),
    ("qwen3", dict(attention_bias=True), r"qwen3 attention_bias=True is not supported"),
    ("gemma", dict(attention_bias=True), r"gemma attention_bias=True is not supported"),
])
def test_unsupported_configs_are_named(kind, kw, error):
  config_cls, _ = CLASSES[kind]
  with pytest.raises(ConfigError, match=error):
    llama.config_from_hf(config_cls(**{**BASE, "num_attention_heads": 3, "num_key_value_heads": 3, **kw}).to_dict())


def test_combinations_no_hugging_face_model_has_are_refused(monkeypatch):
  from bigjax.models import layers  # pylint: disable=g-import-not-at-top
  cfg = config_lib.preset("qwen3_0_6b", num_layers=1, d_model=64, num_heads=4, num_kv_heads=2, head_dim=16,
                          d_ff=64, vocab_size=32)
  with pytest.raises(ConfigError, match=r"no Hugging Face model has this combination \(qk_norm, qkv_bias;"):
    llama.model_type(dataclasses.replace(cfg, qkv_bias=True))
  with pytest.raises(ConfigError, match=r"norm_plus_one=True, embed_scale=False"):
    llama.model_type(dataclasses.replace(cfg, qk_norm=False, norm_plus_one=True))
  with pytest.raises(ConfigError, match=r"model.sliding_window, model.qk_norm: for model.family='decoder'"):
    config_lib.ModelConfig(family="encoder", sliding_window=4, qk_norm=True)
  monkeypatch.setattr(layers, "_backend", lambda: "tpu")  # Where the flash kernels would run.
  flash = dataclasses.replace(cfg, sliding_window=4, attention="flash")
  with pytest.raises(ConfigError, match=r"model.attention='flash' has no sliding window \(model.sliding_window=4\)"):
    models.build(flash).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
