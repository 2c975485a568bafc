"""`bigjax export`: a workdir's model as artifacts that run without bigjax.

  stablehlo    `jax.export` of the scoring function, symbolic in batch and length, lowered for CPU, CUDA and
               TPU (`--platforms`), serialized (`model.stablehlo`), with its params beside it (`params.npz`, flat names "a/b/c"). Reload
               with jax alone:
                   exp = jax.export.deserialize(open("model.stablehlo", "rb").read())
                   params = dict(np.load("params.npz"))
                   logits = exp.call(params, input_ids, attention_mask)          # decoder, encoder
                   logits = exp.call(params, input_ids, attention_mask,          # encoder_decoder
                                     decoder_input_ids, decoder_attention_mask)
  saved_model  a TensorFlow SavedModel (jax2tf, native serialization: the same StableHLO inside), params as
               tf.Variables, signature `serving_default` taking int32 `input_ids`, `attention_mask` (and for
               encoder-decoders `decoder_input_ids`, `decoder_attention_mask`), each [batch, length] of any
               size, returning {"logits": float32}. `tf.saved_model.load(DIR).signatures["serving_default"]`.
  hf           today's `bigjax convert --to_hf`: config.json + model.safetensors for transformers.

Every format writes `export.json` (family, inputs, output, the source workdir and step). What each keeps
and loses: stablehlo and saved_model keep the exact forward pass (float32 logits; the model's dtype) for
scoring, at any batch and length (learned positions: length ≤ model.max_len), and lose training and the KV
cache (no generation signature: decoding runs in bigjax or, via hf, in transformers); hf keeps the weights
for transformers' own code (and so its generation) for the architectures it has.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from bigjax.config import ConfigError, ModelConfig

FORMATS = ("stablehlo", "saved_model", "hf")
PLATFORMS = ("cpu", "cuda", "tpu")  # What the serialized program is lowered for (one module, any of these).


def input_names(cfg: ModelConfig) -> tuple[str, ...]:
  if cfg.family == "encoder_decoder":
    return ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
  return ("input_ids", "attention_mask")


def scoring_fn(cfg: ModelConfig) -> Callable:
  """`(flat_params, *inputs) -> float32 logits`: the model's deterministic forward pass on int32 ids and 1/0
  masks (`input_names(cfg)`), the params a flat dict of "a/b/c" names (what `params.npz` holds)."""
  from bigjax import models  # pylint: disable=g-import-not-at-top
  module = models.build(cfg)

  def score(flat_params, *inputs):
    params = flax.traverse_util.unflatten_dict(flat_params, sep="/")
    if cfg.family == "encoder_decoder":
      ids, mask, dec, dec_mask = inputs
      return module.apply({"params": params}, ids, dec, attention_mask=mask, decoder_attention_mask=dec_mask)
    ids, mask = inputs
    return module.apply({"params": params}, ids, attention_mask=mask).astype(jnp.float32)

  return score


def _flat(params) -> dict[str, np.ndarray]:
  from bigjax import partitioning  # pylint: disable=g-import-not-at-top
  return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(partitioning.unbox(params), sep="/").items()}


def _symbolic_inputs(cfg: ModelConfig):
  """int32 ShapeDtypeStructs with symbolic batch `b`, length `l` (and decoder length `s`)."""
  b, l, s = jax.export.symbolic_shape("b, l, s")
  shapes = [(b, l), (b, l)] + ([(b, s), (b, s)] if cfg.family == "encoder_decoder" else [])
  return [jax.ShapeDtypeStruct(shape, jnp.int32) for shape in shapes]


def to_stablehlo(cfg: ModelConfig, params, out: str, platforms: tuple[str, ...] = PLATFORMS) -> dict[str, Any]:
  """Writes `out/model.stablehlo` and `out/params.npz`; returns what export.json records of it."""
  flat = _flat(params)
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
  exported = jax.export.export(jax.jit(scoring_fn(cfg)), platforms=platforms)(abstract, *_symbolic_inputs(cfg))
  with open(os.path.join(out, "model.stablehlo"), "wb") as f:
    f.write(exported.serialize())
  np.savez(os.path.join(out, "params.npz"), **flat)
  return {"files": ["model.stablehlo", "params.npz"], "platforms": list(exported.platforms),
          "in_shapes": [str(a.shape) for a in exported.in_avals[len(flat):]],
          "out_shape": str(exported.out_avals[0].shape)}


def to_saved_model(cfg: ModelConfig, params, out: str, platforms: tuple[str, ...] = PLATFORMS) -> dict[str, Any]:
  """Writes a SavedModel at `out` with a `serving_default` signature; returns what export.json records."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  flat = _flat(params)
  names = input_names(cfg)
  dims = ["(b, l)", "(b, l)", "(b, s)", "(b, s)"][:len(names)]
  converted = jax2tf.convert(scoring_fn(cfg), polymorphic_shapes=[None] + dims, native_serialization=True,
                             native_serialization_platforms=tuple(platforms), with_gradient=False)
  module = tf.Module()
  module.params = {k.replace("/", "."): tf.Variable(v, trainable=False, name=k.replace("/", ".")) for k, v in flat.items()}

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None], tf.int32, name=n) for n in names])
  def serve(*inputs):
    p = {k.replace(".", "/"): v for k, v in module.params.items()}
    return {"logits": converted(p, *inputs)}

  module.serve = serve
  tf.saved_model.save(module, out, signatures={"serving_default": serve})
  return {"signature": "serving_default", "inputs": list(names), "outputs": ["logits"], "platforms": list(platforms)}


def export(workdir: str, fmt: str, out: str, *, platforms: tuple[str, ...] = PLATFORMS) -> dict[str, Any]:
  """`workdir`'s latest params (LoRA merged) as `fmt` into the new directory `out`; returns export.json."""
  from bigjax import convert  # pylint: disable=g-import-not-at-top
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt!r}: allowed values are {', '.join(FORMATS)}")
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad or not platforms:
    raise ConfigError(f"--platforms={','.join(platforms)}: each must be one of {', '.join(PLATFORMS)}")
  target = workdir_lib.require_new_dir(out, "export")
  restored = workdir_lib.latest_params(workdir)
  cfg, params = restored.model_config, restored.params
  target.mkdir(parents=True, exist_ok=True)
  if fmt == "hf":
    convert.to_hf(cfg, params, out)
    detail = {"files": ["config.json", "model.safetensors"]}
  elif fmt == "stablehlo":
    detail = to_stablehlo(cfg, params, out, platforms)
  else:
    detail = to_saved_model(cfg, params, out, platforms)
  record = {"format": fmt, "family": cfg.family, "inputs": list(input_names(cfg)), "output": "logits (float32)",
            "workdir": str(workdir), "step": restored.step, **detail}
  (target / "export.json").write_text(json.dumps(record, indent=2) + "\n")
  return record
