"""The memory planner: per-device bytes of a training step, from shapes only, before anything is allocated.

`estimate(config, ...)` answers "does this config fit this mesh on these devices?" without the devices:
params, optimizer state and gradients are measured exactly from the abstract train state
(`jax.eval_shape`) and its shardings on an `AbstractMesh`; the batch from the objective's example
shapes; activations from a per-layer model of what the backward pass keeps (below). On this machine's
devices, `compile_memory` also compiles the real train step on abstract inputs and reads XLA's own
`memory_analysis()`, so the two can be compared (MaxText's train_compile.py idea).

The activation model, per device (b rows of the batch = batch / (data x fsdp); heads, MLP units and the
vocabulary split over tensor; a = bytes of model.dtype, f32 = 4):

* saved activations: what autodiff keeps from the forward pass for the backward pass, per layer and
  remat policy (`_layer_saves`), times the layers, plus what each stack keeps outside its blocks
  (final norm, the attention mask, T5's position bias, BERT's MLM head);
* the backward peak: the larger of the loss phase (float32 logits, their softmax and gradient — one
  chunk of them where the batch is not split, `steps.loss_chunk` — plus the gathered output embedding
  under fsdp) and one layer's backward (its cotangents, or with remat its
  recomputed intermediates, whichever is larger, plus its weights gathered over fsdp and their gradient).

Per layer and family, in tensors of b x t x d_model (X), b x t x heads x head_dim (Q), b x heads x t x t
scores (S) and b x t x d_ff hidden units (M), remat none, as autodiff saves them:

  decoder (GPT), encoder (BERT): two norms, 2 x (3 f32 + a) X; attention, a x (q, k, v, context) 4Q and
    the softmax's exp and probabilities (f32 + a) S; MLP, n a M (n = 6 for tanh-GELU, 4 for GELU and
    SiLU, 1.25 for ReLU, +2 when gated). The encoder adds its MLM head (dense, activation, norm).
  encoder_decoder (T5): encoder layers as above over the input length t; decoder layers over the target
    length s have three norms, self-attention over s, cross-attention (q and the context over s, k and
    v over t, scores b x heads x s x t) and the MLP over s. Two stacks, each with its final norm and its
    position bias [1, heads, q, k].
  remat full: only each block's input, a X; dots: every matmul's output (q, k, v, the scores, the
    context, the output projection, wi, wo); dots_no_batch: the same without the scores and the context.

The counts are those of the layers in `bigjax.models.layers`, in two regimes. With `model.scan_layers` the
saved activations are what autodiff saves (the scan stacks each residual as it is); unrolled, XLA sees the
whole step and fuses elementwise chains (norm and activation intermediates) into their consumers, keeping
the matmul inputs and the softmax. tests/test_plan.py checks the totals against XLA's CPU
`memory_analysis()` (within 15%; mostly within 5%). One CPU caveat: XLA's CPU scheduler runs the
recomputation of *unrolled* remat blocks early, so its figure for scan_layers=False with remat looks like
remat none; with scan_layers=True remat takes effect everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh
import numpy as np

from bigjax import config as config_lib
from bigjax import devices
from bigjax import optim
from bigjax import partitioning
from bigjax import lora as lora_lib
from bigjax import steps
from bigjax.config import ConfigError

from bigjax.devices import GiB, KiB, MiB  # noqa: F401  (plan.GiB, as before)
F32 = 4

# Elementwise intermediates autodiff keeps per MLP hidden unit, the pre-activation included: tanh-GELU
# keeps x, x^2, tanh(.) and three products; erf-GELU and SiLU four; ReLU its output and a 1-byte mask.
# A gated MLP keeps the other branch and the product too (+2).
_ACTIVATION_SAVES = {"gelu_tanh": 6.0, "gelu": 4.0, "silu": 4.0, "relu": 1.25}


# ------------------------------------------------------------------------------------------ parsing

def parse_bytes(text: str, setting: str = "--device_memory") -> int:
  """'16GiB', '80 GB', '512MiB', '1e9' → bytes (KiB/MiB/GiB/TiB are powers of 2, KB/MB/GB/TB of 10)."""
  m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?b|b)?\s*", str(text), re.IGNORECASE)
  if not m:
    raise ConfigError(f"{setting}={text!r} is not a size; use a number with a unit, e.g. 16GiB, 80GB or 512MiB")
  unit = (m.group(2) or "b").lower()
  scale = 1 if unit == "b" else (1024 if "i" in unit else 1000) ** ("kmgt".index(unit[0]) + 1)
  return int(float(m.group(1)) * scale)


def parse_topology(name: str) -> tuple[int, int, str]:
  """(devices, bytes per device, description) of a slice or GPU host name such as v5p-128 or 8xH100
  (`bigjax.devices.topology`)."""
  n, acc, what = devices.topology(name)
  each = "HBM each" if acc.name.startswith("TPU") else "each"
  return n, acc.memory, f"{what}, {fmt_bytes(acc.memory)} {each}"


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'1,8,1' (or '(1, 8, 1)', one size may be -1) → the (data, fsdp, tensor) sizes."""
  parts = [p for p in re.split(r"[\s,x()]+", str(text)) if p]
  try:
    shape = tuple(int(p) for p in parts)
  except ValueError:
    shape = ()
  if len(shape) != 3 or any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
    raise ConfigError(f"--mesh={text!r}: must be three sizes for (data, fsdp, tensor), positive or a single -1, "
                      "e.g. 1,8,1 or -1,1,1")
  return shape  # type: ignore[return-value]


def fmt_bytes(n: float) -> str:
  """GiB down to 1 GiB, MiB below (KiB and bytes for small things)."""
  for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
    if abs(n) >= size:
      return f"{n / size:.2f} {unit}"
  return f"{int(n)} B"


# ------------------------------------------------------------------------- the state by shape

def abstract_batch(config, mcfg) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch's shapes, from one example the objective makes of made-up ids: no dataset and no
  tokenizer file is read (a paper config plans before its tokenizer is trained), and no TensorFlow loads.

  Window objectives cut `objective.window` tokens; record objectives pad (or pack) each row to fixed
  lengths, so one made-up record gives the row shapes (see bigjax.data.pipeline). The shapes never depend
  on the tokenizer, so a stand-in with the model's vocabulary gives exactly the real pipeline's.
  """
  from bigjax.data import objectives  # pylint: disable=g-import-not-at-top
  name = config.data.objective or objectives.default_for(mcfg.family)
  objectives.check_family(name, mcfg.family)
  tok = objectives.ShapeTokenizer(mcfg.vocab_size)
  objective = objectives.make(name, config.data.seq_len, tok, family=mcfg.family,
                              target_len=config.data.target_len, num_labels=mcfg.num_labels)
  ids = np.ones(1, np.int32)
  if objective.kind == "windows":
    row = objective.example(np.ones(objective.window, np.int32), np.random.default_rng(0))
  elif name == "classification":
    row = objective.example(ids, 0)
  else:
    row = objective.row([(ids, ids)])
  rows = config.data.batch_size
  return {k: jax.ShapeDtypeStruct((rows,) + np.shape(v), np.asarray(v).dtype) for k, v in row.items()}


def shard_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree` (abstract arrays) under `shardings` (exact shard shapes)."""
  leaves = jax.tree_util.tree_leaves(tree)
  shards = jax.tree_util.tree_leaves(shardings)
  return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in zip(leaves, shards))


# ------------------------------------------------------------------------- the activation model

@dataclasses.dataclass(frozen=True)
class Dims:
  """Per-device sizes the activation model is written in."""

  b: int  # Rows of the batch on one device: batch / (data x fsdp).
  d: int  # d_model: the residual stream is not split over tensor.
  h: int  # Attention heads on one device: num_heads / tensor.
  k: int  # Head width.
  m: int  # MLP hidden units on one device: d_ff / tensor.
  a: int  # Bytes of the compute dtype (model.dtype).


def _norm_saves(dm: Dims, t: int, fused: bool) -> float:
  """A norm keeps its float32 input, centred input and normalised output and its output in the compute
  dtype; fused into its neighbours, only the float32 input and the normalised output."""
  return (2 * F32 if fused else 3 * F32 + dm.a) * dm.b * t * dm.d


def _attention_saves(dm: Dims, q: int, kv: int, policy: str, fused: bool = False, masked: bool = False) -> float:
  """Self- (q = kv) or cross-attention of q queries over kv keys."""
  qkv_ctx = dm.a * dm.b * dm.h * dm.k * (2 * q + 2 * kv)  # q and the context over queries, k and v over keys.
  scores = dm.b * dm.h * q * kv  # [b, h, q, k]
  out = dm.a * dm.b * q * dm.d  # The output projection's result.
  if policy == "none":  # Matmul inputs, and the softmax's float32 exp and its probabilities (compute dtype);
    # fused, the float32 masked scores are a buffer of their own too.
    return qkv_ctx + (F32 * (1 + (fused and masked)) + dm.a) * scores
  if policy == "dots":  # Every matmul's output: q, k, v, the scores, the context, the output projection.
    return qkv_ctx + dm.a * scores + out
  if policy == "dots_no_batch":  # Only the projections (the two einsums have a batch dimension).
    return dm.a * dm.b * dm.h * dm.k * (q + 2 * kv) + out
  return 0.0


def _mlp_saves(dm: Dims, t: int, mcfg, policy: str, fused: bool = False) -> float:
  hidden = dm.a * dm.b * t * dm.m
  gated = 1 if mcfg.gated_mlp else 0
  if policy == "none":  # Fused, the activation's intermediates are recomputed from its input.
    per_unit = min(_ACTIVATION_SAVES[mcfg.activation], 2.0) if fused else _ACTIVATION_SAVES[mcfg.activation]
    return (per_unit + 2 * gated) * hidden
  if policy in ("dots", "dots_no_batch"):  # wi (wi_0 and wi_1 when gated) and wo outputs.
    return (1 + gated) * hidden + dm.a * dm.b * t * dm.d
  return 0.0


def _layer_saves(mcfg, dm: Dims, t: int, cross: int, policy: str, fused: bool = False,
                 masked: bool = True) -> float:
  """Bytes one block of length t (with cross-attention over `cross` encoder positions) keeps for backward.

  `fused`: what XLA keeps of a block it sees whole (unrolled layers, or a block recomputed inside its
  backward pass): the matmul inputs and the softmax, while elementwise chains (norm and activation
  intermediates) are fused into their consumers. Unfused: what autodiff saves, which a scan stacks as is.
  """
  if policy == "full":  # Only the block's input; everything else is recomputed.
    return dm.a * dm.b * t * dm.d
  saved = _attention_saves(dm, t, t, policy, fused, masked) + _mlp_saves(dm, t, mcfg, policy, fused)
  if cross:
    saved += _attention_saves(dm, t, cross, policy, fused, masked)
  if policy == "none":
    sublayers = 3 if cross else 2
    saved += sublayers * _norm_saves(dm, t, fused)
    if mcfg.dropout_rate:  # 1-byte masks: attention probabilities, each sublayer's output (T5: MLP hidden).
      saved += dm.b * dm.h * t * (t + cross) + sublayers * dm.b * t * dm.d
      saved += dm.b * t * dm.m if mcfg.family == "encoder_decoder" else 0
  return saved


def _layer_workspace(mcfg, dm: Dims, t: int, cross: int, masked: bool) -> float:
  """Memory live while one block is differentiated: its cotangents (the float32 gradient of its attention
  scores, two MLP-hidden-sized and about eight residual-stream-sized gradients), or under remat its
  recomputed intermediates when those are larger. XLA sees a recomputed block whole and fuses part of its
  elementwise intermediates: they are counted midway between the fused and the unfused count (measured:
  within about 12% of XLA's CPU figures for full, dots and dots_no_batch). Unrolled layers without remat
  reuse the buffers the layers above them freed: only the gradient of the scores is new."""
  policy = mcfg.remat_policy
  scores = F32 * dm.b * dm.h * t * (t + cross)
  if policy == "none" and not mcfg.scan_layers:
    return scores
  cotangents = scores + 2 * dm.a * dm.b * t * dm.m + 8 * F32 * dm.b * t * dm.d
  layer = lambda fused: _layer_saves(mcfg, dm, t, cross, "none", fused, masked)
  recomputed = (layer(True) + layer(False)) / 2 - _layer_saves(mcfg, dm, t, cross, policy)
  return max(cotangents, recomputed)


def _layer_params(mcfg, cross: bool) -> int:
  """Weights of one block (the matrices: norms and biases are negligible)."""
  attention = 2 * mcfg.d_model * (mcfg.num_heads + mcfg.kv_heads) * mcfg.kv_dim  # q and out; k and v.
  return attention * (2 if cross else 1) + (3 if mcfg.gated_mlp else 2) * mcfg.d_model * mcfg.d_ff


def _stacks(mcfg, batch) -> list[tuple[str, int, int, int, bool]]:
  """(name, layers, length, cross-attention length, masked self-attention) of each stack of blocks."""
  t = batch["inputs"].shape[1]
  masked = "attention_mask" in batch or "segment_ids" in batch
  if mcfg.family == "decoder":
    return [("decoder", mcfg.num_layers, t, 0, True)]
  if mcfg.family == "encoder":
    return [("encoder", mcfg.num_layers, t, 0, masked)]
  s = batch["decoder_input_ids"].shape[1]
  return [("encoder", mcfg.num_layers, t, 0, masked), ("decoder", mcfg.decoder_layers, s, t, True)]


def _outside_blocks(mcfg, dm: Dims, t: int, masked: bool, fused: bool) -> float:
  """What a stack keeps outside its blocks: the final norm; with remat none under a scan, the attention
  mask broadcast to [b, h, q, k] (boolean, and the float32 fill it selects); T5's position bias [1, h, q, k]."""
  extra = _norm_saves(dm, t, fused)
  if mcfg.remat_policy == "none" and masked and mcfg.scan_layers:
    extra += (F32 + 1) * dm.b * dm.h * t * t
  if mcfg.positions == "relative":
    extra += F32 * dm.h * t * t
  return extra


def _kept_weights(mcfg, layers: int, cross: bool, mesh_shape, fused: bool) -> float:
  """Weights kept for the backward pass beyond the params: the compute-dtype copies when model.dtype is
  not model.param_dtype, and, unrolled, the weights gathered over fsdp in the forward pass."""
  _, fsdp, tensor = mesh_shape
  a, pbytes = jnp.dtype(mcfg.dtype).itemsize, jnp.dtype(mcfg.param_dtype).itemsize
  per_layer = _layer_params(mcfg, cross) / tensor
  return layers * per_layer * ((a if a != pbytes else 0) + (pbytes if fused and fsdp > 1 else 0))


def _loss_bytes(mcfg, dm: Dims, batch, mesh_shape, fused: bool) -> float:
  """The loss phase. Over a vocabulary with the batch on one device (`steps.weighted_xent` of a
  `layers.Head`): one chunk's float32 logits and their cotangent (`steps.loss_chunk`; the softmax is
  fused into the cotangent), with the float32 gradients of the output layer's input and weights. A
  classifier's, and a vocabulary's on a mesh that splits the batch: the float32 logits (and a
  compute-dtype copy before the cast), their softmax and its gradient (unrolled, XLA fuses the loss into
  the top of the backward pass and keeps the logits too). Under fsdp, the output embedding gathered and
  its gradient before the reduce-scatter."""
  _, fsdp, tensor = mesh_shape
  out_len = batch["targets"].shape[1] if len(batch["targets"].shape) > 1 else 1
  if mcfg.family == "encoder" and mcfg.encoder_head == "classifier":
    vocab = mcfg.num_labels
  elif mcfg.family == "encoder" and mcfg.encoder_head == "none":
    vocab = mcfg.d_model
  else:
    vocab = mcfg.vocab_size // tensor
  extra = dm.a if dm.a != F32 else 0
  if steps.defers_output(mcfg) and len(batch["targets"].shape) > 1 and mesh_shape[0] * fsdp == 1:
    chunk = steps.loss_chunk(dm.b, out_len, vocab)
    logits = (2 * F32 + extra) * dm.b * chunk * vocab + F32 * (dm.b * out_len * mcfg.d_model + mcfg.d_model * vocab)
  else:
    logits = ((3 if fused else 2) * F32 + extra) * dm.b * out_len * vocab
  gathered = 2 * vocab * mcfg.d_model * jnp.dtype(mcfg.param_dtype).itemsize if fsdp > 1 else 0
  return logits + gathered


def activations(mcfg, batch, mesh_shape) -> dict:
  """Per-device activation bytes of one train step: `saved` (kept for the backward pass) and `peak` (the
  larger transient of the backward pass), with `detail` lines saying where they come from."""
  data, fsdp, tensor = mesh_shape
  rows = batch["inputs"].shape[0] // (data * fsdp)
  dm = Dims(b=rows, d=mcfg.d_model, h=mcfg.num_heads // tensor, k=mcfg.kv_dim, m=mcfg.d_ff // tensor,
            a=jnp.dtype(mcfg.dtype).itemsize)
  fused = mcfg.remat_policy == "none" and not mcfg.scan_layers
  saved, layer_peak, detail = 0.0, 0.0, []
  for name, layers, t, cross, masked in _stacks(mcfg, batch):
    per_layer = _layer_saves(mcfg, dm, t, cross, mcfg.remat_policy, fused, masked)
    extra = _outside_blocks(mcfg, dm, t, masked, fused)
    weights = _kept_weights(mcfg, layers, bool(cross), mesh_shape, fused)
    saved += layers * per_layer + extra + weights
    detail.append(f"{name}: {layers} layers x {fmt_bytes(per_layer)} ({rows} row{'s' * (rows != 1)} x {t} "
                  f"positions{f', cross-attending {cross}' if cross else ''}) + {fmt_bytes(extra)} outside the "
                  f"blocks" + (f" + {fmt_bytes(weights)} of weights kept" if weights else ""))
    gathered = 2 * _layer_params(mcfg, bool(cross)) * jnp.dtype(mcfg.param_dtype).itemsize / tensor
    layer_peak = max(layer_peak, _layer_workspace(mcfg, dm, t, cross, masked) + (gathered if fsdp > 1 else 0))
  if mcfg.family == "encoder" and mcfg.encoder_head == "mlm":  # Dense + activation + norm before the logits.
    t = batch["inputs"].shape[1]
    saved += _ACTIVATION_SAVES[mcfg.activation] * dm.a * rows * t * dm.d + _norm_saves(dm, t, fused)
  loss = _loss_bytes(mcfg, dm, batch, mesh_shape, fused)
  return {"saved": int(saved), "peak": int(max(layer_peak, loss)), "loss_phase": int(loss),
          "layer_phase": int(layer_peak), "detail": detail, "rows": rows}


# ------------------------------------------------------------------------------------ the plan

@dataclasses.dataclass
class Plan:
  """Per-device bytes of one train step, and how they compare with the device's memory."""

  family: str
  param_count: int
  mesh: tuple[int, int, int]
  devices: int
  device_memory: int
  memory_source: str
  params: int
  optimizer: int
  gradients: int
  batch: int
  activations: int
  peak: int
  detail: dict
  xla: dict | None = None

  @property
  def total(self) -> int:
    return self.params + self.optimizer + self.gradients + self.batch + self.activations + self.peak

  @property
  def margin(self) -> int:
    return self.device_memory - self.total

  @property
  def fits(self) -> bool:
    return self.margin >= 0

  def figures(self) -> dict:
    """The numbers, for the JSON line that scripts and tests read."""
    out = {k: getattr(self, k) for k in ("family", "param_count", "devices", "device_memory", "params",
                                         "optimizer", "gradients", "batch", "activations", "peak", "total",
                                         "margin", "fits")}
    out["mesh"] = list(self.mesh)
    out["xla"] = self.xla
    return out


def estimate(config, mesh_shape=None, num_devices: int | None = None, device_memory: int = 0,
             memory_source: str = "") -> Plan:
  """The plan of `config` on `num_devices` devices of `device_memory` bytes, from shapes only.

  `mesh_shape` defaults to `config.mesh.shape` (-1 resolved against the device count). Nothing is
  allocated and no device is needed: the mesh is an AbstractMesh.
  """
  mcfg = config_lib.validate(config)
  num_devices = num_devices or config.mesh.num_devices or jax.device_count()
  shape = partitioning.resolve_shape(tuple(mesh_shape or config.mesh.shape), num_devices)
  mesh = AbstractMesh(shape, partitioning.MESH_AXES)
  partitioning.check_batch(config.data.batch_size, mesh)
  batch = abstract_batch(config, mcfg)
  rules = partitioning.fit_kv_heads(partitioning.rules_for(config.mesh.rules), mcfg, mesh)[0]
  adapters = lora_lib.spec(config)
  abstract = steps.abstract_state(mcfg, mesh, rules, optim.make(config), lora=adapters)
  state, shardings = abstract.state, abstract.shardings
  params = shard_bytes(state.params, shardings.params)
  trained = params  # The gradients: param-sized, or with LoRA the adapters' only.
  if adapters is not None:
    trained = shard_bytes(lora_lib.split(state.params)[0], lora_lib.split(shardings.params)[0])
  batch_sh = {k: partitioning.batch_sharding(mesh) for k in batch}
  # Gradient accumulation: activations of one microbatch, and a second gradient buffer (the running sum).
  k = config.train.grad_accum_steps
  micro = {n: jax.ShapeDtypeStruct((v.shape[0] // k,) + v.shape[1:], v.dtype) for n, v in batch.items()}
  act = activations(mcfg, micro, shape)
  opt_leaves = len(jax.tree_util.tree_leaves(state.opt_state))
  return Plan(
      family=mcfg.family, param_count=abstract.param_count,
      mesh=shape, devices=num_devices, device_memory=int(device_memory), memory_source=memory_source,
      params=params, optimizer=shard_bytes(state.opt_state, shardings.opt_state),
      gradients=trained * (2 if k > 1 else 1),
      batch=shard_bytes(batch, batch_sh), activations=act["saved"], peak=act["peak"],
      detail={**act, "optimizer_arrays": opt_leaves, "remat_policy": mcfg.remat_policy,
              "scan_layers": mcfg.scan_layers, "grad_accum_steps": k, "lora": adapters is not None, "batch_shapes": {k: list(v.shape) for k, v in batch.items()}})


def compile_memory(config, mesh_shape=None) -> dict:
  """XLA's memory_analysis() of the train step compiled on this machine's devices for abstract inputs
  (nothing allocated): per-device argument, output, alias, temp and generated-code bytes, and the total."""
  mcfg = config_lib.validate(config)
  mesh = partitioning.make_mesh(tuple(mesh_shape or config.mesh.shape), config.mesh.num_devices)
  partitioning.check_batch(config.data.batch_size, mesh)
  rules = partitioning.fit_kv_heads(partitioning.rules_for(config.mesh.rules), mcfg, mesh)[0]
  abstract = steps.abstract_state(mcfg, mesh, rules, optim.make(config), lora=lora_lib.spec(config))
  state_sh = abstract.shardings
  batch_sh = partitioning.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh) for k, v in abstract_batch(config, mcfg).items()}
  # The executable never runs: on CPU, skip LLVM's optimisations (half the compile time, same buffers).
  options = {"xla_backend_optimization_level": 0} if jax.devices()[0].platform == "cpu" else None
  with partitioning.activate(mesh, rules):
    step = jax.jit(steps.make_train_step(abstract.module, abstract.tx, optim.schedule(config), config.train.seed,
                                         config.train.grad_accum_steps),
                   in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, partitioning.replicated(mesh)),
                   donate_argnums=0)
    analysis = step.lower(abstract.state, batch).compile(compiler_options=options).memory_analysis()
  out = {k: int(getattr(analysis, f"{k}_size_in_bytes")) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  out["total"] = out["argument"] + out["temp"] + out["output"] - out["alias"]
  return out


def local_memory() -> tuple[int, str]:
  """(bytes per device, where that figure comes from) for this machine's first device."""
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} memory limit"
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  n = jax.local_device_count()
  return host // n, f"host RAM {fmt_bytes(host)} shared by {n} {device.platform} device(s)"


# ---------------------------------------------------------------------------------- reporting

_OPTIMIZER_STATE = {"adamw": "AdamW: two moments per param", "lion": "Lion: one moment per param",
                    "sgd": "SGD: one momentum per param, none without momentum",
                    "adafactor": "Adafactor: factored second moments, sharded like their params"}


def report(plan: Plan, config) -> str:
  """A readable table, one line per item, ending with one JSON line of the figures."""
  d = plan.detail
  data, fsdp, tensor = plan.mesh
  batch_shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in d["batch_shapes"].items())
  est_args = plan.params + plan.optimizer + plan.batch
  est_temp = plan.gradients + plan.activations + plan.peak
  xla = plan.xla
  rows = [
      ("params", plan.params, f"{plan.param_count:,} x {config.model.param_dtype}, sharded by the rules"),
      ("optimizer state", plan.optimizer, f"{d['optimizer_arrays']} arrays ({_OPTIMIZER_STATE[config.optim.get('name', 'adamw')]})"),
      ("gradients", plan.gradients, ("the LoRA adapters' only" if d.get("lora") else "param-sized") +
       ", sharded like the params (twice: the running sum, with train.grad_accum_steps > 1)"),
      ("batch", plan.batch, f"{d['rows']} row{'s' * (d['rows'] != 1)} per device of {batch_shapes}"),
      ("activations saved", plan.activations, f"remat {d['remat_policy']}, scan_layers {d['scan_layers']}: "
       + "; ".join(d["detail"])),
      ("backward peak", plan.peak, f"max(the loss {fmt_bytes(d['loss_phase'])}, "
       f"one layer's backward {fmt_bytes(d['layer_phase'])})"),
  ]
  lines = [f"bigjax plan: {plan.family}, {plan.param_count:,} params; mesh (data {data}, fsdp {fsdp}, tensor "
           f"{tensor}) on {plan.devices} devices of {fmt_bytes(plan.device_memory)} ({plan.memory_source})",
           f"  {'per device':20s} {'estimate':>11s}"]
  lines += [f"  {name:20s} {fmt_bytes(n):>11s}   {why}" for name, n, why in rows]
  lines.append(f"  {'total':20s} {fmt_bytes(plan.total):>11s}   of {fmt_bytes(plan.device_memory)}")
  if xla:
    dev = lambda est, got: f"{round(100 * (est - got) / max(got, 1)):+d}%"
    lines += [
        "  XLA memory_analysis() of the train step compiled here (per device):",
        f"    arguments {fmt_bytes(xla['argument'])} (estimate params + optimizer + batch {fmt_bytes(est_args)}, "
        f"{dev(est_args, xla['argument'])}); temp {fmt_bytes(xla['temp'])} (estimate gradients + activations + "
        f"peak {fmt_bytes(est_temp)}, {dev(est_temp, xla['temp'])})",
        f"    output {fmt_bytes(xla['output'])}, aliased {fmt_bytes(xla['alias'])}, generated code "
        f"{fmt_bytes(xla['generated_code'])}",
        f"    XLA total = argument + temp + output - alias = {fmt_bytes(xla['total'])}; estimate "
        f"{fmt_bytes(plan.total)} ({dev(plan.total, xla['total'])})"]
  share = 100 * abs(plan.margin) / max(plan.device_memory, 1)
  verdict = (f"fits: {fmt_bytes(plan.margin)} to spare ({share:.0f}% of the device)" if plan.fits else
             f"does not fit: {fmt_bytes(-plan.margin)} over ({share:.0f}% more than the device has)")
  lines.append(f"  {verdict}")
  lines.append(json.dumps(plan.figures(), sort_keys=True))
  return "\n".join(lines)


def main(config, *, mesh: str | None = None, devices: int = 0, device_memory: str | None = None,
         topology: str | None = None, compile_here: bool = True) -> Plan:
  """The `bigjax plan` command: estimate (and, on this machine's devices, compile), then print."""
  if topology and (devices or device_memory):
    raise ConfigError(f"--topology={topology} gives the devices and their memory; leave out --devices and "
                      "--device_memory")
  if devices and not device_memory:
    raise ConfigError(f"--devices={devices} needs --device_memory (e.g. 16GiB), or use --topology")
  if devices < 0:
    raise ConfigError(f"--devices={devices}: must be positive")
  shape = parse_mesh(mesh) if mesh else None
  local = not (topology or devices)
  if topology:
    n, memory, source = parse_topology(topology)
  elif devices:
    n, memory, source = devices, parse_bytes(device_memory), f"--device_memory={device_memory}"
  else:
    n = config.mesh.num_devices or jax.device_count()
    memory, source = local_memory()
    if device_memory:
      memory, source = parse_bytes(device_memory), f"--device_memory={device_memory}"
  plan = estimate(config, shape, n, memory, source)
  if local and compile_here:
    plan.xla = compile_memory(config, plan.mesh)
  print(report(plan, config), flush=True)
  return plan
