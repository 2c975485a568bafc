"""Hugging Face parity: random-weight transformers models → bigjax, logits compared on padded batches."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bigjax import convert  # noqa: E402
from bigjax import models  # noqa: E402
from bigjax.config import ConfigError  # noqa: E402


def hf_logits(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(np.asarray(ids)), attention_mask=torch.tensor(np.asarray(mask)))
  return out.logits.numpy()


def bigjax_logits(cfg, params, ids, mask):
  return np.asarray(jax.jit(models.build(cfg).apply)({"params": params}, jnp.asarray(ids),
                                                    attention_mask=jnp.asarray(mask)))


@pytest.mark.parametrize("kw", [
    dict(n_embd=48, n_head=3, n_layer=2, vocab_size=101, n_positions=24),  # Odd head count.
    dict(n_embd=32, n_head=4, n_layer=3, n_inner=80, vocab_size=64, n_positions=16,
         activation_function="relu", tie_word_embeddings=False),
])
def test_gpt2_logits_match_and_round_trip(tmp_path, kw):
  torch.manual_seed(0)
  hf_cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)
  model = transformers.GPT2LMHeadModel(hf_cfg).eval()
  with torch.no_grad():  # Non-trivial norms and biases, so every tensor matters.
    for name, p in model.named_parameters():
      if "ln" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(tmp_path / "hf")
  cfg, params = convert.from_hf(str(tmp_path / "hf"))
  assert cfg.num_heads == kw["n_head"] and cfg.tie_embeddings == kw.get("tie_word_embeddings", True)

  rng = np.random.default_rng(0)
  length = kw["n_positions"]
  ids = rng.integers(0, kw["vocab_size"], (3, length))
  mask = np.ones((3, length), np.int64)
  mask[1, length - 5:] = 0  # Right padding.
  mask[2, 3:] = 0
  want = hf_logits(model, ids, mask)
  got = bigjax_logits(cfg, params, ids, mask)
  real = mask.astype(bool)
  assert np.max(np.abs(got[real] - want[real])) <= 1e-4

  convert.to_hf(cfg, params, str(tmp_path / "back"))
  again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
  np.testing.assert_allclose(hf_logits(again, ids, mask)[real], want[real], atol=1e-4)


def test_gpt2_bad_checkpoints_are_named(tmp_path):
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=30,
                                                               n_positions=8))
  model.save_pretrained(tmp_path / "ok")
  hf = json.loads((tmp_path / "ok" / "config.json").read_text())
  hf["model_type"] = "rnn"
  (tmp_path / "ok" / "config.json").write_text(json.dumps(hf))
  with pytest.raises(ConfigError, match=r"model_type=.rnn. is not supported; supported:"):
    convert.from_hf(str(tmp_path / "ok"))
  hf["model_type"], hf["n_layer"] = "gpt2", 2  # The checkpoint has one block, the config says two.
  (tmp_path / "ok" / "config.json").write_text(json.dumps(hf))
  with pytest.raises(ConfigError, match=r"missing tensor 'transformer\.h\.1\."):
    convert.from_hf(str(tmp_path / "ok"))
  with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
    convert.from_hf(str(tmp_path / "nothing"))


@pytest.mark.parametrize("name", ["gpt2_small", "gpt2_medium", "gpt2_large", "gpt2_xl"])
def test_gpt2_presets_have_the_hugging_face_parameter_counts(name):
  import math
  import jax
  from bigjax import config as config_lib
  from bigjax import partitioning
  cfg = config_lib.preset(name)
  module = models.build(cfg)
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  ours = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(partitioning.unbox(abstract)))
  hf_cfg = transformers.GPT2Config(n_embd=cfg.d_model, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                                   n_positions=cfg.max_len, vocab_size=cfg.vocab_size)
  with torch.device("meta"):  # Nothing is allocated, even for GPT-2 XL.
    theirs = sum(p.numel() for p in transformers.GPT2LMHeadModel(hf_cfg).parameters())
  assert ours == theirs

