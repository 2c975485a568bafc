"""Post-training int8 quantization with Qwix (google/qwix, the JAX library AQT is retired in favour of).

`model.quantize`:
  "int8_weight"   the targeted matmul weights are stored as int8 with one float32 scale per output channel
                  (absmax) and dequantized in the matmul; activations stay in the compute dtype.
  "int8_dynamic"  the same weights, and each matmul's input quantized to int8 on the fly (absmax per row):
                  an int8 × int8 matmul.
  "int8_qat"      quantization-aware training (Qwix's QtProvider): the same weights rounded to int8 in the
                  forward pass with straight-through gradients while the float params train; `bigjax
                  quantize` of that workdir then loses less than quantizing a float-trained one.
`model.quantize_targets` is a regular expression over module paths (default: every projection of the
attention and MLP blocks, and an untied output layer; embeddings, norms, T5's position bias and a tied
output layer stay float).

`bigjax quantize --workdir W --mode int8_weight|int8_dynamic --out NEW` writes NEW as a workdir: W's config
with `model.quantize` set and `quantized_from`, and a params-only checkpoint of the quantized params at W's
step; `bigjax eval`, `decode`, `export --format stablehlo|saved_model` read it like any workdir (`train`
refuses it: train the float model). `models.build` wraps a quantized config's module with Qwix's
`PtqProvider` (`QuantizedModule`): params travel as plain nested dicts of arrays ("kernel/array/qvalue"
int8, "kernel/array/scale" float32), so checkpoints, restores and exports handle them like any params.
Written on Qwix rather than by hand: it intercepts bigjax's own `dot_general`s, per-channel scales and
int8 matmuls included, so the model code is unchanged (one cast in `layers.Dense` is skipped when the dtype
already matches, so that a quantized kernel reaches the matmul whole).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp

from bigjax.config import ConfigError, ModelConfig

MODES = ("int8_weight", "int8_dynamic")


def qat_module(module, cfg: ModelConfig):
  """`module` under Qwix's QtProvider: the targeted weights are rounded to int8 (per channel, absmax) in the
  forward pass and get straight-through gradients; the params stay float, so training, checkpoints and
  resume are unchanged, and `bigjax quantize` turns the trained workdir into int8."""
  import qwix  # pylint: disable=g-import-not-at-top
  return qwix.quantize_model(module, qwix.QtProvider([qwix.QtRule(module_path=cfg.quantize_targets,
                                                                 weight_qtype=jnp.int8)]))


def _key(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def to_plain(tree) -> dict:
  """Qwix's quantized param tree (WithAux / QArray nodes) as nested dicts of arrays."""
  import flax  # pylint: disable=g-import-not-at-top
  from bigjax import partitioning  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(partitioning.unbox(tree))[0]
  return flax.traverse_util.unflatten_dict({"/".join(_key(k) for k in path): v for path, v in leaves}, sep="/")


def from_plain(abstract, plain) -> Any:
  """`to_plain`'s dicts back in the structure of `abstract` (Qwix's tree, unboxed)."""
  import flax  # pylint: disable=g-import-not-at-top
  flat = flax.traverse_util.flatten_dict(plain, sep="/")
  paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  try:
    leaves = [flat["/".join(_key(k) for k in path)] for path, _ in paths]
  except KeyError as e:
    raise ConfigError(f"quantized params lack {e.args[0]}: not params of this quantized model") from None
  return treedef.unflatten(leaves)


class QuantizedModule:
  """A model module under Qwix's PTQ provider, taking and giving params as plain nested dicts."""

  def __init__(self, module, cfg: ModelConfig):
    import qwix  # pylint: disable=g-import-not-at-top
    from bigjax import partitioning, steps  # pylint: disable=g-import-not-at-top
    act = jnp.int8 if cfg.quantize == "int8_dynamic" else None
    rules = [qwix.QuantizationRule(module_path=cfg.quantize_targets, weight_qtype=jnp.int8, act_qtype=act)]
    self.module = qwix.quantize_model(module, qwix.PtqProvider(rules))
    self.cfg, self.lora = cfg, None  # Read like a model module's (no LoRA on a quantized model).
    plain = dataclasses.replace(cfg, quantize="none")
    inputs = steps.init_inputs(plain)
    quantized = qwix.quantize_model(type(module)(plain), qwix.PtqProvider(rules))
    self.abstract = partitioning.unbox(jax.eval_shape(
        lambda r: quantized.init(r, inputs["inputs"], **steps.model_inputs(inputs))["params"], jax.random.PRNGKey(0)))

  def init(self, rng, *args, **kwargs):
    variables = dict(self.module.init(rng, *args, **kwargs))
    variables["params"] = to_plain(variables["params"])
    return variables

  def apply(self, variables, *args, **kwargs):
    variables = dict(variables)
    variables["params"] = from_plain(self.abstract, variables["params"])
    return self.module.apply(variables, *args, **kwargs)


def quantize_params(cfg: ModelConfig, params) -> dict:
  """Float `params` of `cfg` (unboxed) → the plain quantized params of `cfg` with `quantize` set."""
  import qwix  # pylint: disable=g-import-not-at-top
  from bigjax import models  # pylint: disable=g-import-not-at-top
  if cfg.quantize == "none":
    raise ConfigError("quantize_params needs a config with model.quantize set")
  module = models.build(cfg)
  return to_plain(qwix.quantize_params(params, module.abstract))


def stored_bytes(tree) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def quantize_workdir(workdir: str, mode: str, out: str, targets: str | None = None) -> dict[str, Any]:
  """`bigjax quantize`: W's latest params quantized into the new workdir `out`; returns what it wrote."""
  from bigjax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if mode not in MODES:
    raise ConfigError(f"--mode={mode!r}: allowed values are {', '.join(MODES)}")
  target = workdir_lib.require_new_dir(out, "quantize")
  restored = workdir_lib.latest_params(workdir)
  cfg = restored.model_config
  if cfg.quantize in MODES:
    raise ConfigError(f"--workdir={workdir} is already quantized (model.quantize={cfg.quantize!r}); quantize the "
                      "float model it came from")
  from bigjax import models  # pylint: disable=g-import-not-at-top
  qcfg = dataclasses.replace(cfg, quantize=mode, scan_layers=False, **({"quantize_targets": targets} if targets else {}))
  params = jax.tree_util.tree_map(jnp.asarray, models.unscan_params(restored.params) if cfg.scan_layers
                                  else restored.params)
  qparams = quantize_params(qcfg, params)
  record = json.loads(json.dumps(restored.saved))
  record.setdefault("model", {}).update(quantize=mode, quantize_targets=qcfg.quantize_targets, scan_layers=False)
  record["quantized_from"] = str(workdir)
  target.mkdir(parents=True, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(str(target), async_save=False)
  ckpt.save(restored.step, {"params": qparams}, {"step": restored.step, "quantized_from": str(workdir)})
  ckpt.wait()
  ckpt.close()
  workdir_lib.write_json(target / workdir_lib.CONFIG, record)
  import flax  # pylint: disable=g-import-not-at-top
  flat_q, flat_f = (flax.traverse_util.flatten_dict(t, sep="/") for t in (qparams, params))
  quantized = {k.rsplit("/kernel/", 1)[0] for k in flat_q if "/kernel/array/" in k}
  before = sum(stored_bytes(v) for k, v in flat_f.items() if k.endswith("/kernel") and k[:-7] in quantized)
  after = sum(stored_bytes(v) for k, v in flat_q.items() if "/kernel/array/" in k)
  return {"mode": mode, "step": restored.step, "layers": len(quantized), "float_bytes": before, "int8_bytes": after,
          "total_float_bytes": stored_bytes(params), "total_bytes": stored_bytes(qparams)}
