"""BERT parity: random-weight transformers models → bigjax, outputs compared on padded two-segment
batches; round trips back to transformers; named errors for what bigjax cannot load; preset sizes."""

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
from bigjax import models  # noqa: E402
from bigjax import partitioning  # noqa: E402
from bigjax.config import ConfigError  # noqa: E402

# Each case: the transformers class and its BertConfig arguments (widths, heads, activations all differ).
CASES = {
    "mlm_tied_odd_heads": ("BertForMaskedLM", dict(
        hidden_size=36, num_attention_heads=3, intermediate_size=50)),
    "mlm_untied_gelu_tanh": ("BertForMaskedLM", dict(
        hidden_size=32, num_attention_heads=4, intermediate_size=80, hidden_act="gelu_new",
        tie_word_embeddings=False)),
    "classifier_relu": ("BertForSequenceClassification", dict(
        hidden_size=24, num_attention_heads=2, intermediate_size=40, hidden_act="relu", num_labels=3)),
    "model_silu_odd_heads": ("BertModel", dict(
        hidden_size=36, num_attention_heads=3, intermediate_size=64, hidden_act="silu")),
}
HEADS = {"BertForMaskedLM": "mlm", "BertForSequenceClassification": "classifier", "BertModel": "none"}
# initializer_range=0.2 (not 0.02) so that outputs are O(1) and a 1e-4 tolerance notices any wrong tensor.
SMALL = dict(vocab_size=101, num_hidden_layers=2, max_position_embeddings=24, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0, initializer_range=0.2)


def random_model(cls_name, **kw):
  """A transformers BERT with random weights, non-trivial norms and biases (so every tensor matters)."""
  torch.manual_seed(0)
  model = getattr(transformers, cls_name)(transformers.BertConfig(**{**SMALL, **kw})).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return model


def batch(length=16, vocab=101):
  """ids, a right-padded attention mask and token types with both segments."""
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, (3, length))
  mask = np.ones((3, length), np.int64)
  mask[1, length - 5:] = 0
  mask[2, 4:] = 0
  types = np.zeros((3, length), np.int64)
  types[0, length // 2:] = 1
  types[1, 6:] = 1
  types[2, 2:] = 1
  return ids, mask, types


def hf_out(model, ids, mask, types, what="logits"):
  """`what` of the model's output: logits, or BertModel's last_hidden_state / pooler_output."""
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types))
  if isinstance(model, transformers.BertModel) and what == "logits":
    what = "last_hidden_state"
  return getattr(out, what).numpy()


def bigjax_out(cfg, params, ids, mask, types):
  module = models.build(cfg)
  types = None if types is None else jnp.asarray(types)
  return np.asarray(jax.jit(module.apply)({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                          token_type_ids=types))


def max_diff(got, want, mask):
  """Max |Δ| over real positions (per-token outputs) or over the whole output (pooled classifier logits)."""
  if got.ndim == 2:
    return float(np.max(np.abs(got - want)))
  return float(np.max(np.abs(got - want)[mask.astype(bool)]))


@pytest.mark.parametrize("case", list(CASES))
def test_bert_outputs_match_and_round_trip(tmp_path, case):
  cls_name, kw = CASES[case]
  model = random_model(cls_name, **kw)
  model.save_pretrained(tmp_path / "hf")
  cfg, params = convert.from_hf(str(tmp_path / "hf"))
  assert (cfg.encoder_head, cfg.num_heads, cfg.d_ff) == (HEADS[cls_name], kw["num_attention_heads"],
                                                         kw["intermediate_size"])
  assert cfg.tie_embeddings == kw.get("tie_word_embeddings", True)

  ids, mask, types = batch()
  want = hf_out(model, ids, mask, types)
  got = bigjax_out(cfg, params, ids, mask, types)
  assert got.shape == want.shape
  assert max_diff(got, want, mask) <= 1e-4
  if cls_name == "BertModel":  # bigjax returns the hidden states; its pooler weights must still be right.
    pooled = np.tanh(got[:, 0] @ params["pooler"]["kernel"] + params["pooler"]["bias"])
    assert max_diff(pooled, hf_out(model, ids, mask, types, "pooler_output"), mask) <= 1e-4

  convert.to_hf(cfg, params, str(tmp_path / "back"))
  again, info = getattr(transformers, cls_name).from_pretrained(tmp_path / "back", output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  assert max_diff(hf_out(again.eval(), ids, mask, types), want, mask) <= 1e-4


def save(path, hf, tensors):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(hf))
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  return path


@pytest.fixture(name="tiny_mlm")
def fixture_tiny_mlm(tmp_path):
  """(config.json dict, tensors) of a one-layer BertForMaskedLM."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  model = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
      max_position_embeddings=8))
  model.save_pretrained(tmp_path / "ok")
  hf = json.loads((tmp_path / "ok" / "config.json").read_text())
  return hf, load_file(tmp_path / "ok" / "model.safetensors")


@pytest.mark.parametrize("change,match", [
    (dict(architectures=["BertForQuestionAnswering"]),
     r"architecture 'BertForQuestionAnswering' is not supported; supported: BertForMaskedLM"),
    (dict(position_embedding_type="relative_key"),
     r"position_embedding_type='relative_key' is not supported \(only 'absolute'\)"),
    (dict(is_decoder=True), r"is_decoder=True is not supported"),
    (dict(hidden_act="mish"), r"hidden_act='mish' is not supported; supported: gelu, "),
    (dict(architectures=["BertForSequenceClassification"], problem_type="multi_label_classification"),
     r"problem_type='multi_label_classification' is not supported"),
])
def test_bert_unsupported_configs_are_named(tmp_path, tiny_mlm, change, match):
  hf, tensors = tiny_mlm
  save(tmp_path / "bad", {**hf, **change}, tensors)
  with pytest.raises(ConfigError, match=match):
    convert.from_hf(str(tmp_path / "bad"))


KEY_BIAS = "bert.encoder.layer.0.attention.self.key.bias"


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.pop(KEY_BIAS), r"missing tensor 'bert\.encoder\.layer\.0\.attention\.self\.key\.bias'"),
    (lambda t: t.update({KEY_BIAS: np.zeros(17, np.float32)}),
     r"'bert\.encoder\.layer\.0\.attention\.self\.key\.bias' has shape \(17,\), expected \(16,\)"),
    (lambda t: t.update({"bert.encoder.layer.0.adapter.weight": np.zeros(4, np.float32)}),
     r"does not use: bert\.encoder\.layer\.0\.adapter\.weight"),
    (lambda t: t.update({"cls.predictions.decoder.weight": np.ones((30, 16), np.float32)}),
     r"tie_word_embeddings=True but cls\.predictions\.decoder\.weight differs"),
])
def test_bert_bad_checkpoints_are_named(tmp_path, tiny_mlm, edit, match):
  hf, tensors = tiny_mlm
  edit(tensors)
  save(tmp_path / "bad", hf, tensors)
  with pytest.raises(ConfigError, match=match):
    convert.from_hf(str(tmp_path / "bad"))


def test_bert_tied_decoder_copies_are_accepted(tmp_path, tiny_mlm):
  """Older checkpoints also store the tied decoder weight and bias; equal copies load, none left unused."""
  hf, tensors = tiny_mlm
  tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
  tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
  save(tmp_path / "copies", hf, tensors)
  cfg, _ = convert.from_hf(str(tmp_path / "copies"))
  assert cfg.tie_embeddings and cfg.encoder_head == "mlm"


def test_published_pretraining_checkpoints_load(tmp_path, tiny_mlm):
  """Google's BERT checkpoints: BertForPreTraining weights (pooler, next-sentence head) labelled
  BertForMaskedLM, LayerNorm weights named gamma/beta. They load; the MLM logits are unchanged."""
  hf, tensors = tiny_mlm
  cfg, want = convert.from_hf(str(save(tmp_path / "plain", hf, tensors)))
  d = hf["hidden_size"]
  old = dict(tensors)
  for name, shape in (("bert.pooler.dense.weight", (d, d)), ("bert.pooler.dense.bias", (d,)),
                      ("cls.seq_relationship.weight", (2, d)), ("cls.seq_relationship.bias", (2,))):
    old[name] = np.ones(shape, np.float32)
  for name in [k for k in old if k.endswith("LayerNorm.weight")]:
    old[name.replace(".weight", ".gamma")] = old.pop(name)
    old[name.replace(".weight", ".beta")] = old.pop(name.replace(".weight", ".bias"))
  cfg2, got = convert.from_hf(str(save(tmp_path / "published", hf, old)))
  assert cfg2 == cfg
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


def test_bigjax_encoder_exports_to_bert(tmp_path):
  """A model made in bigjax (no segments, tanh GELU) → BertForMaskedLM that computes the same logits."""
  cfg = config_lib.ModelConfig(family="encoder", vocab_size=50, d_model=16, num_layers=2, num_heads=2,
                               d_ff=24, max_len=16, norm_position="post", activation="gelu_tanh",
                               type_vocab_size=0, encoder_head="mlm", init_std=0.2)
  ids, mask, types = batch(vocab=50)
  rng = np.random.default_rng(1)  # Every param random (norms and biases too); no init to compile.
  params = jax.tree_util.tree_map(lambda x: 0.2 * rng.standard_normal(x.shape, np.float32),
                                  abstract_params(cfg))
  convert.to_hf(cfg, params, str(tmp_path / "out"))
  model, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "out", output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  want = bigjax_out(cfg, params, ids, mask, None)
  assert max_diff(hf_out(model.eval(), ids, mask, 0 * types), want, mask) <= 1e-4


@pytest.mark.parametrize("change,match", [
    (dict(norm_position="pre"), r"model\.norm_position='pre'"),
    (dict(norm="rmsnorm"), r"model\.norm='rmsnorm'"),
    (dict(gated_mlp=True), r"model\.gated_mlp=True"),
    (dict(use_bias=False), r"model\.use_bias=False"),
    (dict(positions="rotary"), r"model\.positions='rotary'"),
    (dict(head_dim=32), r"model\.head_dim=32"),
])
def test_bert_to_hf_refuses_other_shapes(tmp_path, change, match):
  cfg = config_lib.preset("bert_tiny", **change)
  with pytest.raises(ConfigError, match=match):
    convert.to_hf(cfg, {}, str(tmp_path / "out"))


def abstract_params(cfg):
  """The unboxed param tree of `cfg`'s model as shapes (nothing computed)."""
  module = models.build(cfg)
  init = lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return partitioning.unbox(jax.eval_shape(init))


def param_count(cfg):
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract_params(cfg)))


BERT_PRESETS = ("bert_tiny", "bert_mini", "bert_small", "bert_medium", "bert_base", "bert_large")


@pytest.mark.parametrize("name,head", [(n, "mlm") for n in BERT_PRESETS] + [("bert_base", "classifier")])
def test_bert_presets_have_the_hugging_face_parameter_counts(name, head):
  cfg = config_lib.preset(name, encoder_head=head, num_labels=2)
  hf_cfg = transformers.BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                                   num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                                   intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_len,
                                   type_vocab_size=cfg.type_vocab_size, num_labels=2)
  cls = transformers.BertForMaskedLM if head == "mlm" else transformers.BertForSequenceClassification
  with torch.device("meta"):  # Nothing is allocated, even for BERT-large.
    theirs = sum(p.numel() for p in cls(hf_cfg).parameters())
  assert param_count(cfg) == theirs
