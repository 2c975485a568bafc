"""Pure JAX: the train state, the loss, the train and eval steps, and the state by shape.

Nothing here reads files, logs or knows a model family: a family is a linen module (`models.build`) and
a batch its objective made (`inputs`, `targets`, `weights`, and whatever else the module takes). The
trainer, `bigjax plan` and `bigjax eval` share `abstract_state`, so all three see the same shapes and
shardings; none of them needs TensorFlow to reach it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigjax import models
from bigjax.models import layers
from bigjax import partitioning
from bigjax.config import ModelConfig


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ------------------------------------------------------------------------------------------ loss

LOSS_CHUNK_BYTES = 8 << 20  # A chunk of the train loss's float32 logits, per device (see loss_chunk).


def weighted_xent(logits, targets, weights):
  """Sum of token cross-entropies (nats) and of weights. `logits` may be a `layers.Head` (a model called
  with `output="head"`): its logits are then computed, and differentiated, a chunk at a time — unless
  the mesh splits the batch (`partitioning.batch_shards() > 1`): the chunks accumulate the output layer's
  weight gradient, which would then be reduced across devices at every chunk, so there the whole logits
  are computed as usual (`Head.logits()`)."""
  chunk = _chunk_for(logits, targets, weights)
  if chunk:
    return layers.head_xent(logits, targets, weights, chunk), jnp.sum(weights)
  if isinstance(logits, layers.Head):
    logits = logits.logits()
  chex.assert_equal_shape_prefix((logits, targets, weights), targets.ndim)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.sum(nll * weights), jnp.sum(weights)


def _chunk_for(out, targets, weights) -> int:
  """Positions per chunk when `out` is a `layers.Head` whose loss runs in chunks (`loss_chunk`: the mesh in
  force does not split the batch), else 0 (the whole logits)."""
  if not isinstance(out, layers.Head) or partitioning.batch_shards() > 1:
    return 0
  chex.assert_equal_shape_prefix((out.x, targets, weights), targets.ndim)
  return loss_chunk(targets.shape[0], targets.shape[1], out.w.shape[0 if out.table else 1])


def defers_output(mcfg: ModelConfig) -> bool:
  """Whether the train loss takes `mcfg`'s output layer unapplied (`output="head"`): a vocabulary's
  (decoder, encoder MLM, encoder-decoder), not under Qwix's quantization-aware training, which rounds the
  output layer's kernel inside the model's own products. (With a LoRA adapter or a bias on an untied
  output layer, the model returns its logits anyway.)"""
  vocabulary = mcfg.family != "encoder" or mcfg.encoder_head == "mlm"
  return vocabulary and mcfg.quantize == "none"


def loss_chunk(rows: int, length: int, vocab: int) -> int:
  """Positions per chunk of the train loss over `rows` rows of `length` targets: the largest divisor of
  the length whose float32 logits fit LOSS_CHUNK_BYTES (at least one position). 8 MB: in paired runs of the float32 train step
  (README, Speed) 8 MB chunks took 0.91-0.92x the time of the whole logits for GPT-2 at the small and mid
  shapes, 4 and 16 MB 0.94-0.95x at the small, and one chunk of 24-64 MB no gain."""
  fits = [c for c in range(1, length + 1) if length % c == 0 and rows * c * vocab * 4 <= LOSS_CHUNK_BYTES]
  return max(fits, default=1)


def model_inputs(batch) -> dict[str, Any]:
  """The model's call arguments in a batch (everything an objective made beyond targets/weights)."""
  return {k: v for k, v in batch.items() if k not in ("targets", "weights", "inputs")}


def logits(module, params, batch, **kwargs):
  return module.apply({"params": params}, batch["inputs"], **model_inputs(batch), **kwargs)


# ------------------------------------------------------------------------------------------ init

def init_inputs(mcfg: ModelConfig) -> dict[str, jax.Array]:
  """The smallest call a module can be initialised with: parameter shapes never depend on the batch."""
  one = jnp.zeros((1, 1), jnp.int32)
  return {"inputs": one, "decoder_input_ids": one} if mcfg.family == "encoder_decoder" else {"inputs": one}


def init_params(module, rng):
  """The module's params (boxed with their logical axes)."""
  inputs = init_inputs(module.cfg)
  return module.init(rng, inputs["inputs"], **model_inputs(inputs))["params"]


@dataclasses.dataclass(frozen=True)
class Abstract:
  """A train state by shape: what `jax.jit(init, out_shardings=...)` will make, before anything exists."""
  module: nn.Module
  tx: optax.GradientTransformation | None
  boxed: Any  # TrainState of ShapeDtypeStructs in logical-partitioning boxes (what init returns).
  state: TrainState  # Unboxed ShapeDtypeStructs, each carrying its sharding (a restore target).
  shardings: TrainState  # NamedShardings on the mesh.
  param_count: int

  def init_fn(self, seed: int):
    """A jitted `() -> TrainState` that builds the real state straight into its shardings."""
    init = _init_state(self.module, self.tx)
    return jax.jit(lambda: nn.meta.unbox(init(jax.random.PRNGKey(seed))), out_shardings=self.shardings)


def trained(module, params):
  """The params the optimizer updates: all of them, or with LoRA (`module.lora`) the adapters only."""
  if getattr(module, "lora", None) is None:
    return params
  from bigjax import lora  # pylint: disable=g-import-not-at-top
  return lora.split(params)[0]


def _init_state(module, tx):
  def init(rng):
    params = init_params(module, rng)
    return TrainState(jnp.zeros([], jnp.int32), params, tx.init(trained(module, params)) if tx is not None else ())
  return init


def abstract_state(mcfg: ModelConfig, mesh, rules, tx: optax.GradientTransformation | None = None,
                   lora=None) -> Abstract:
  """The state by shape on `mesh` (a Mesh or an AbstractMesh): eval_shape → every logical axis has a rule →
  logical shardings → every sharded dimension divides. Without `tx`, params only (opt_state is `()`); with
  `lora` (a `layers.Lora`) the params include its adapters and the optimizer state covers those only.
  Raises ConfigError naming the parameter when a rule or a size does not fit."""
  module = models.build(mcfg, lora=lora)
  boxed = jax.eval_shape(_init_state(module, tx), jax.random.PRNGKey(0))
  partitioning.check_rules(boxed, rules)
  shardings = partitioning.logical_shardings(boxed, mesh, rules)
  partitioning.check_divisible(boxed, shardings)
  unboxed = partitioning.unbox(boxed)
  state = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unboxed, shardings)
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(unboxed.params))
  return Abstract(module, tx, boxed, state, shardings, count)


def abstract_params(mcfg: ModelConfig, lora=None):
  """The params of `mcfg` (with `lora`'s adapters) by shape (ShapeDtypeStructs, unboxed, no shardings): what a
  checkpoint must hold."""
  module = models.build(mcfg, lora=lora)
  return partitioning.unbox(jax.eval_shape(lambda r: init_params(module, r), jax.random.PRNGKey(0)))


# ------------------------------------------------------------------------------------------ steps

def split_microbatches(batch, k: int):
  """[B, ...] → [k, B/k, ...], microbatch i holding rows i, i+k, i+2k, ...: each device's contiguous
  block of rows then splits into its own k pieces, so no microbatch moves between devices."""
  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "activation_batch") + (None,) * (x.ndim - 2))
  return jax.tree_util.tree_map(split, batch)


def make_train_step(module, tx, schedule, seed: int, grad_accum_steps: int = 1, on_nonfinite: str = "error",
                    sparsity=None, teacher=None):
  """One optimizer step on a batch. The loss is the mean cross-entropy over the batch's weighted tokens;
  with `grad_accum_steps = k` the batch runs as k microbatches whose gradients are summed, each
  microbatch's loss divided by the whole batch's token count, so the update is the whole batch's (up to
  float summation order) while activations are those of one microbatch. A step whose loss or gradient
  is not finite has `metrics["nonfinite"] = 1`; with `on_nonfinite="skip"` it leaves params and
  optimizer state unchanged (the step counter, data and schedule still advance).

  Not `optax.apply_if_finite`: it wraps the optimizer state in counters of its own, so a checkpoint of
  an `error` run (or of any run before) could not be resumed with `skip` — the very recovery the
  non-finite error suggests — and it looks at the gradients only, not at the loss.

  With LoRA (`module.lora`) the gradients are the adapters' only: the frozen weights enter the loss as
  constants and leave the step as they came (bitwise). `sparsity` (params -> scalar; pruning) adds
  `metrics["sparsity"]`. With a `teacher` (`bigjax.distill.Teacher`: its module, alpha and temperature
  are read here) the step is `(state, batch, teacher_params)` and its loss is distillation's (see
  bigjax.distill), `metrics["xent"]` and `metrics["kl"]` its parts."""
  lora_on = getattr(module, "lora", None) is not None
  head = {"output": "head"} if teacher is None and defers_output(module.cfg) else {}

  def train_step(state: TrainState, batch, teacher_params=None):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
    count = jnp.maximum(jnp.sum(batch["weights"]), 1.0)
    if lora_on:
      from bigjax import lora  # pylint: disable=g-import-not-at-top
      train_params, frozen = lora.split(state.params)
      whole = lambda p: lora.combine(p, frozen)
    else:
      train_params, whole = state.params, lambda p: p

    def loss_fn(params, b, r):
      # `head`: the output layer unapplied, its logits computed (and differentiated) a chunk at a time.
      out = logits(module, whole(params), b, deterministic=False, rngs={"dropout": r}, **head)
      if teacher is None:
        total, _ = weighted_xent(out, b["targets"], b["weights"])
        return total / count, {}
      from bigjax import distill  # pylint: disable=g-import-not-at-top
      soft = logits(teacher.module, teacher_params, b, deterministic=True)
      kl, xent = distill.kl_and_xent(out, soft, b["targets"], b["weights"], teacher.temperature)
      kl, xent = kl / count, xent / count
      loss = teacher.alpha * teacher.temperature ** 2 * kl + (1 - teacher.alpha) * xent
      return loss, {"xent": xent, "kl": kl}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
      (loss, parts), grads = grad_fn(train_params, batch, rng)
    else:
      def micro(carry, xs):
        i, b = xs
        (l, p), g = grad_fn(train_params, b, jax.random.fold_in(rng, i))
        return jax.tree_util.tree_map(jnp.add, carry, (l, p, g)), None
      zero_parts = {} if teacher is None else {"xent": jnp.zeros([], jnp.float32), "kl": jnp.zeros([], jnp.float32)}
      zeros = (jnp.zeros([], jnp.float32), zero_parts, jax.tree_util.tree_map(jnp.zeros_like, train_params))
      (loss, parts, grads), _ = jax.lax.scan(
          micro, zeros, (jnp.arange(grad_accum_steps), split_microbatches(batch, grad_accum_steps)))
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, train_params)
    params = whole(optax.apply_updates(train_params, updates))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if on_nonfinite == "skip":
      params, opt_state = optax.tree.where(finite, (params, opt_state), (state.params, state.opt_state))
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
               "nonfinite": (~finite).astype(jnp.int32)}
    if sparsity is not None:
      metrics["sparsity"] = sparsity(params)
    metrics.update(parts)
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def make_eval_step(module):
  """(sum of cross-entropies, sum of weights, weighted count of argmax == target). Over a vocabulary
  (`defers_output`) with the batch on one device, the logits are computed a chunk of positions at a time
  as in the train step (`layers.head_scores`), so an eval needs no more memory than the step it follows."""
  head = {"output": "head"} if defers_output(module.cfg) else {}

  def eval_step(params, batch):
    out = logits(module, params, batch, deterministic=True, **head)
    targets, weights = batch["targets"], batch["weights"]
    chunk = _chunk_for(out, targets, weights)
    if chunk:
      total, hits = layers.head_scores(out, targets, weights, chunk)
      return total, jnp.sum(weights), hits
    if isinstance(out, layers.Head):
      out = out.logits()
    total, count = weighted_xent(out, targets, weights)
    hits = jnp.sum((jnp.argmax(out, -1) == targets) * weights)
    return total, count, hits
  return eval_step


def all_finite(tree) -> jax.Array:
  """True when every float in `tree` is finite (a scalar; checked before each checkpoint is written)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# ------------------------------------------------------------------------------------------ eval

class Evaluator:
  """The eval of a run: the eval step over fixed eval batches, summed on the host, and the metrics the
  trainer logs (and `bigjax eval` reports): `loss` (nats per target), `unigram_loss` (the floor from
  `constants`, see `pipeline.eval_constants`), `accuracy`, and for text targets `bits_per_byte` and
  `perplexity`. `keep_logits` also returns each batch's logits (classification's probabilities)."""

  def __init__(self, module, mesh, rules, param_shardings, batches, constants: dict[str, float], *,
               labels: bool = False, keep_logits: bool = False):
    self.mesh, self.rules, self.batches, self.constants = mesh, rules, batches, constants
    self.labels, self.keep_logits = labels, keep_logits
    eval_step = make_eval_step(module)

    def fn(params, batch):
      if not keep_logits:
        return eval_step(params, batch)
      return eval_step(params, batch), logits(module, params, batch, deterministic=True)

    self._fn = jax.jit(fn, in_shardings=(param_shardings, partitioning.batch_sharding(mesh)),
                       out_shardings=partitioning.replicated(mesh))

  def compile(self, params) -> None:
    """Compiles ahead of time (on the first batch's shapes); eval batches all share them."""
    with partitioning.activate(self.mesh, self.rules):
      self._fn = self._fn.lower(params, partitioning.global_batch(self.batches[0], self.mesh)).compile()

  def sums(self, params):
    """(sum of target nats, of target weights, of weighted hits), and the logits of each batch."""
    tot = cnt = hits = 0.0
    kept = []
    with partitioning.activate(self.mesh, self.rules):
      for b in self.batches:
        out = self._fn(params, partitioning.global_batch(b, self.mesh))
        (s, c, h), lg = out if self.keep_logits else (out, None)
        tot, cnt, hits = tot + float(s), cnt + float(c), hits + float(h)
        if lg is not None:
          kept.append(jax.device_get(lg))
    return (tot, cnt, hits), kept

  def metrics(self, tot: float, cnt: float, hits: float) -> dict[str, float]:
    ref = self.constants
    loss = tot / cnt
    m = {"loss": loss, "unigram_loss": ref["unigram_nats"] / max(ref["tokens"], 1.0), "accuracy": hits / cnt}
    if not self.labels:
      m.update(bits_per_byte=tot / math.log(2) / max(ref["bytes"], 1.0), perplexity=math.exp(min(loss, 80.0)))
    return m

  def __call__(self, params) -> dict[str, float]:
    (tot, cnt, hits), _ = self.sums(params)
    return self.metrics(tot, cnt, hits)
