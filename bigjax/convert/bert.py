"""BERT (`BertForMaskedLM`, `BertForSequenceClassification`, `BertModel`) ⇄ bigjax encoder (post-LayerNorm,
learned positions and segments, biases). The architecture picks `encoder_head`: "mlm", "classifier", "none".

Tied or not, transformers' masked-LM output adds `cls.predictions.decoder.bias`; when the embeddings are
tied that bias *is* `cls.predictions.bias` (so a checkpoint may carry only the latter), when untied the two
are separate parameters and `cls.predictions.bias` is not used by the forward pass.

Published BERT checkpoints (Google's, converted to transformers) are BertForPreTraining weights labelled
BertForMaskedLM: they also hold the pooler and the next-sentence head (`cls.seq_relationship`), which
masked LM does not use (transformers drops them too), and may name LayerNorm weights `gamma`/`beta`.
Both are accepted: the next-sentence tensors are the only ones a conversion leaves out.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from bigjax.config import ConfigError, ModelConfig
from bigjax.convert.common import Tensors

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                "silu": "silu", "swish": "silu"}
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
_HEADS = {"BertForMaskedLM": "mlm", "BertForSequenceClassification": "classifier", "BertModel": "none"}
_ARCHITECTURES = {head: arch for arch, head in _HEADS.items()}
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")  # Non-persistent buffers, not weights.
_PROBLEM_TYPES = (None, "single_label_classification")

Get = Callable[[str, tuple[int, ...]], np.ndarray]


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
  head, num_labels = _head_from_hf(hf)
  act = hf.get("hidden_act", "gelu")
  if act not in _ACTIVATIONS:
    raise ConfigError(f"BERT hidden_act={act!r} is not supported; supported: {', '.join(_ACTIVATIONS)}")
  for flag, ok in (("position_embedding_type", "absolute"), ("is_decoder", False),
                   ("add_cross_attention", False)):
    if hf.get(flag, ok) != ok:
      raise ConfigError(f"BERT {flag}={hf.get(flag)!r} is not supported (only {ok!r})")
  return ModelConfig(family="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
                     num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                     d_ff=hf["intermediate_size"], max_len=hf["max_position_embeddings"],
                     type_vocab_size=hf.get("type_vocab_size", 2),
                     layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                     activation=_ACTIVATIONS[act], norm="layernorm", norm_position="post", use_bias=True,
                     positions="learned", tie_embeddings=hf.get("tie_word_embeddings", True),
                     encoder_head=head, num_labels=num_labels, dropout_rate=0.0)


def _head_from_hf(hf: dict[str, Any]) -> tuple[str, int]:
  """(encoder_head, num_labels) from `architectures[0]`; no architectures means a bare BertModel."""
  arch = (hf.get("architectures") or ["BertModel"])[0]
  if arch not in _HEADS:
    raise ConfigError(f"BERT architecture {arch!r} is not supported; supported: {', '.join(_HEADS)}")
  if _HEADS[arch] != "classifier":
    return _HEADS[arch], 2
  if hf.get("problem_type") not in _PROBLEM_TYPES:
    raise ConfigError(f"BertForSequenceClassification problem_type={hf.get('problem_type')!r} is not "
                      "supported (only single_label_classification or unset)")
  return "classifier", len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels", 2)


def params_from_hf(cfg: ModelConfig, t: Tensors, hf: dict[str, Any]) -> dict:
  del hf
  t.ignore_suffixes(*_BUFFERS)
  for name in [k for k in t.tensors if k.endswith((".gamma", ".beta"))]:  # TF-era LayerNorm names.
    t.tensors[name.rsplit(".", 1)[0] + (".weight" if name.endswith(".gamma") else ".bias")] = t.tensors.pop(name)
  if cfg.encoder_head == "mlm":  # BertForPreTraining's pooler and next-sentence head (see above).
    t.ignore_suffixes("pooler.dense.weight", "pooler.dense.bias", "cls.seq_relationship.weight",
                      "cls.seq_relationship.bias")
  prefix = "bert." if t.has_prefix("bert.") else ""  # The *For* classes nest BertModel under "bert.".
  get = lambda name, shape: t.get(prefix + name, shape)
  d = cfg.d_model
  params: dict[str, Any] = {
      "token_embed": {"embedding": get("embeddings.word_embeddings.weight", (cfg.vocab_size, d))},
      "position_embed": {"embedding": get("embeddings.position_embeddings.weight", (cfg.max_len, d))},
      "segment_embed": {"embedding": get("embeddings.token_type_embeddings.weight",
                                         (cfg.type_vocab_size, d))},
      "ln_embed": _ln(get, "embeddings.LayerNorm", d),
      "encoder": {f"block_{i}": _block(cfg, get, f"encoder.layer.{i}") for i in range(cfg.num_layers)},
  }
  if cfg.encoder_head == "mlm":
    params.update(_mlm_head(cfg, t, params["token_embed"]["embedding"]))
  else:
    params["pooler"] = _linear(get, "pooler.dense", d, d)
  if cfg.encoder_head == "classifier":
    params["classifier"] = _linear(t.get, "classifier", d, cfg.num_labels)
  return params


def _ln(get: Get, name: str, d: int) -> dict:
  return {"scale": get(f"{name}.weight", (d,)), "bias": get(f"{name}.bias", (d,))}


def _linear(get: Get, name: str, n_in: int, n_out: int) -> dict:
  """A torch Linear (weight [out, in]) as a bigjax Dense (kernel [in, out])."""
  return {"kernel": get(f"{name}.weight", (n_out, n_in)).T, "bias": get(f"{name}.bias", (n_out,))}


def _block(cfg: ModelConfig, get: Get, p: str) -> dict:
  d, h, hd = cfg.d_model, cfg.num_heads, cfg.kv_dim
  attn = {}
  for name in ("query", "key", "value"):
    lin = _linear(get, f"{p}.attention.self.{name}", d, d)
    attn[name] = {"kernel": lin["kernel"].reshape(d, h, hd), "bias": lin["bias"].reshape(h, hd)}
  out = _linear(get, f"{p}.attention.output.dense", d, d)
  attn["out"] = {"kernel": out["kernel"].reshape(h, hd, d), "bias": out["bias"]}
  return {
      "attention": attn,
      "ln_attention": _ln(get, f"{p}.attention.output.LayerNorm", d),
      "mlp": {"wi": _linear(get, f"{p}.intermediate.dense", d, cfg.d_ff),
              "wo": _linear(get, f"{p}.output.dense", cfg.d_ff, d)},
      "ln_mlp": _ln(get, f"{p}.output.LayerNorm", d),
  }


def _mlm_head(cfg: ModelConfig, t: Tensors, embedding: np.ndarray) -> dict:
  """BertOnlyMLMHead: transform (dense, activation, LayerNorm), then the tied or untied decoder + bias."""
  d, v = cfg.d_model, cfg.vocab_size
  head = {"mlm_dense": _linear(t.get, "cls.predictions.transform.dense", d, d),
          "mlm_ln": _ln(t.get, "cls.predictions.transform.LayerNorm", d)}
  bias = t.get("cls.predictions.bias", (v,))
  if not cfg.tie_embeddings:
    head["lm_head"] = {"kernel": t.get("cls.predictions.decoder.weight", (v, d)).T}
    head["mlm_bias"] = t.get("cls.predictions.decoder.bias", (v,))  # What the untied forward adds.
    return head
  for name, want, what in (("cls.predictions.decoder.weight", embedding, "the word embeddings"),
                           ("cls.predictions.decoder.bias", bias, "cls.predictions.bias")):
    if name in t and not np.array_equal(t.get(name, want.shape), want):
      raise ConfigError(f"BERT config says tie_word_embeddings=True but {name} differs from {what}")
  head["mlm_bias"] = bias
  return head


def to_hf(cfg: ModelConfig, params: dict) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Config and tensors of the transformers class that matches `cfg.encoder_head`."""
  _check_bert_shaped(cfg)
  prefix = "" if cfg.encoder_head == "none" else "bert."
  t: dict[str, np.ndarray] = {}
  put_ln = lambda name, p: t.update({f"{name}.weight": p["scale"], f"{name}.bias": p["bias"]})

  def put_linear(name: str, p: dict, n_in: int) -> None:
    t[f"{name}.weight"] = np.reshape(p["kernel"], (n_in, -1)).T
    t[f"{name}.bias"] = np.reshape(p["bias"], (-1,))

  d = cfg.d_model
  t[prefix + "embeddings.word_embeddings.weight"] = params["token_embed"]["embedding"]
  t[prefix + "embeddings.position_embeddings.weight"] = params["position_embed"]["embedding"]
  t[prefix + "embeddings.token_type_embeddings.weight"] = (
      params["segment_embed"]["embedding"] if cfg.type_vocab_size else np.zeros((1, d), np.float32))
  put_ln(prefix + "embeddings.LayerNorm", params["ln_embed"])
  for i in range(cfg.num_layers):
    b, p = params["encoder"][f"block_{i}"], f"{prefix}encoder.layer.{i}"
    for name in ("query", "key", "value"):
      put_linear(f"{p}.attention.self.{name}", b["attention"][name], d)
    put_linear(f"{p}.attention.output.dense", b["attention"]["out"], d)
    put_ln(f"{p}.attention.output.LayerNorm", b["ln_attention"])
    put_linear(f"{p}.intermediate.dense", b["mlp"]["wi"], d)
    put_linear(f"{p}.output.dense", b["mlp"]["wo"], cfg.d_ff)
    put_ln(f"{p}.output.LayerNorm", b["ln_mlp"])
  if cfg.encoder_head == "mlm":
    put_linear("cls.predictions.transform.dense", params["mlm_dense"], d)
    put_ln("cls.predictions.transform.LayerNorm", params["mlm_ln"])
    t["cls.predictions.bias"] = params["mlm_bias"]
    if not cfg.tie_embeddings:
      t["cls.predictions.decoder.weight"] = np.asarray(params["lm_head"]["kernel"]).T
      t["cls.predictions.decoder.bias"] = params["mlm_bias"]
  else:
    put_linear(prefix + "pooler.dense", params["pooler"], d)
  if cfg.encoder_head == "classifier":
    put_linear("classifier", params["classifier"], d)
  return _hf_config(cfg), t


def _check_bert_shaped(cfg: ModelConfig) -> None:
  """Refuses encoders that no BERT class computes (naming each setting that differs)."""
  wrong = [f"model.{name}={getattr(cfg, name)!r}" for name, ok in (
      ("family", "encoder"), ("norm_position", "post"), ("norm", "layernorm"), ("gated_mlp", False),
      ("use_bias", True), ("positions", "learned")) if getattr(cfg, name) != ok]
  if cfg.kv_dim * cfg.num_heads != cfg.d_model:
    wrong.append(f"model.head_dim={cfg.head_dim} (head_dim * num_heads != d_model)")
  if wrong:
    raise ConfigError(f"to_hf: this model is not BERT-shaped: {', '.join(wrong)} (BERT needs an encoder "
                      "with post-LayerNorm, an ungated MLP, biases, learned positions and "
                      "head_dim = d_model / num_heads)")


def _hf_config(cfg: ModelConfig) -> dict[str, Any]:
  hf = {"model_type": "bert", "architectures": [_ARCHITECTURES[cfg.encoder_head]],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": cfg.type_vocab_size or 1, "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_act": _HF_ACTIVATIONS[cfg.activation], "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_embeddings}
  if cfg.encoder_head == "classifier":
    hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
  return hf
