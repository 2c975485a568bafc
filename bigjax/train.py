"""The trainer: one linear loop for every model family.

Sections, top to bottom: setup (validate, workdir), mesh, data, model and optimizer (state by
shape), restore (this workdir → init_from → scratch), step functions, loop (log, eval, samples,
checkpoint). A family is a linen module plus an objective that turns a batch into `inputs`,
`targets` and `weights`; nothing here depends on which family it trains.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from etils import epath
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigjax import checkpoint as ckpt_lib
from bigjax import config as config_lib
from bigjax import decode
from bigjax import models
from bigjax import optim
from bigjax import partitioning
from bigjax import throughput
from bigjax.config import ConfigError
from bigjax.data import pipeline

# Settings that fix what a workdir holds: a resumed run must not change them.
_PINNED = ("model", "data.tokenizer", "data.source", "data.text_key", "data.target_key", "data.labels",
           "data.objective", "data.seq_len", "data.target_len", "data.pack", "data.batch_size", "train.seed")
_PROMPT_LEN = 16


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------- setup

def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def check_workdir(workdir: epath.Path, config: ml_collections.ConfigDict) -> dict | None:
  """Refuses a workdir whose run has another shape. Returns its saved config, if any."""
  path = workdir / "config.json"
  if not path.exists():
    return None
  try:
    old = json.loads(path.read_text())
  except (json.JSONDecodeError, OSError) as e:
    raise ConfigError(f"--workdir={workdir}: config.json is unreadable ({e}); use a new workdir") from None
  if "converted_from" in old:
    raise ConfigError(f"--workdir={workdir} holds a model converted from {old['converted_from']}, not a run; "
                      f"train in a new --workdir with --config.train.init_from={workdir}")
  new_flat, old_flat = _flat(json.loads(config.to_json_best_effort())), _flat(old)
  # A setting the saved config predates had its default then.
  defaults = _flat(json.loads(config_lib.default_config().to_json_best_effort()))
  for key in sorted(set(new_flat) | set(old_flat)):
    if any(key == p or key.startswith(p + ".") for p in _PINNED):
      if new_flat.get(key) != old_flat.get(key, defaults.get(key)):
        raise ConfigError(
            f"--workdir={workdir} holds a run with {key}={old_flat.get(key)!r}, but this config has "
            f"{key}={new_flat.get(key)!r}; use a new --workdir (or start from it with train.init_from)")
  return old


def write_json_atomic(path: epath.Path, obj) -> None:
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def _logged_step(line: str) -> float:
  """The step of a metrics.jsonl line; inf for a line cut short by a kill (dropped on resume)."""
  try:
    return json.loads(line)["step"]
  except (json.JSONDecodeError, KeyError, TypeError):
    return math.inf


class MetricsWriter:
  """metrics.jsonl (one JSON object a line) and TensorBoard events; only process 0 writes.

  A run resumed at step k first drops the lines of steps after k (logged by a run that stopped before
  it checkpointed them), so each step has one line, from the run whose state went on."""

  def __init__(self, workdir: epath.Path, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._tf = tf
      path = workdir / "metrics.jsonl"
      if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        kept = [l for l in lines if _logged_step(l) <= resume_step]
        if len(kept) != len(lines):
          tmp = workdir / "metrics.jsonl.tmp"
          tmp.write_text("".join(kept))
          tmp.replace(path)
      self._file = (workdir / "metrics.jsonl").open("a")
      self._tb = tf.summary.create_file_writer(str(workdir / "tensorboard"))

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    self._file.flush()
    with self._tb.as_default(step=step):
      for k, v in values.items():
        self._tf.summary.scalar(f"{split}/{k}", v)
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()


def _fmt_time(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ---------------------------------------------------------------------------------- steps

def weighted_xent(logits, targets, weights):
  """Sum of token cross-entropies (nats) and of weights."""
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.sum(nll * weights), jnp.sum(weights)


def model_inputs(batch) -> dict[str, Any]:
  """The model's call arguments in a batch (everything an objective made beyond targets/weights)."""
  return {k: v for k, v in batch.items() if k not in ("targets", "weights", "inputs")}


def split_microbatches(batch, k: int):
  """[B, ...] → [k, B/k, ...], microbatch i holding rows i, i+k, i+2k, ...: each device's contiguous
  block of rows then splits into its own k pieces, so no microbatch moves between devices."""
  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "activation_batch") + (None,) * (x.ndim - 2))
  return jax.tree_util.tree_map(split, batch)


def make_train_step(module, tx, schedule, seed: int, grad_accum_steps: int = 1, on_nonfinite: str = "error"):
  """One optimizer step on a batch. The loss is the mean cross-entropy over the batch's weighted tokens;
  with `grad_accum_steps = k` the batch runs as k microbatches whose gradients are summed, each
  microbatch's loss divided by the whole batch's token count, so the update is the whole batch's (up to
  float summation order) while activations are those of one microbatch. A step whose loss or gradient
  is not finite has `metrics["nonfinite"] = 1`; with `on_nonfinite="skip"` it leaves params and
  optimizer state unchanged (the step counter, data and schedule still advance)."""
  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
    count = jnp.maximum(jnp.sum(batch["weights"]), 1.0)

    def loss_fn(params, b, r):
      logits = module.apply({"params": params}, b["inputs"], **model_inputs(b),
                            deterministic=False, rngs={"dropout": r})
      total, _ = weighted_xent(logits, b["targets"], b["weights"])
      return total / count

    if grad_accum_steps == 1:
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
    else:
      def micro(carry, xs):
        i, b = xs
        l, g = jax.value_and_grad(loss_fn)(state.params, b, jax.random.fold_in(rng, i))
        return jax.tree_util.tree_map(jnp.add, carry, (l, g)), None
      zeros = (jnp.zeros([], jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(
          micro, zeros, (jnp.arange(grad_accum_steps), split_microbatches(batch, grad_accum_steps)))
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if on_nonfinite == "skip":
      keep = lambda new, old: jnp.where(finite, new, old)
      params = jax.tree_util.tree_map(keep, params, state.params)
      opt_state = jax.tree_util.tree_map(keep, opt_state, state.opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
               "nonfinite": (~finite).astype(jnp.int32)}
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def all_finite(tree) -> jax.Array:
  """True when every float in `tree` is finite (a scalar; checked before each checkpoint is written)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_eval_step(module):
  """(sum of cross-entropies, sum of weights, weighted count of argmax == target)."""
  def eval_step(params, batch):
    logits = module.apply({"params": params}, batch["inputs"], **model_inputs(batch), deterministic=True)
    total, count = weighted_xent(logits, batch["targets"], batch["weights"])
    hits = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * batch["weights"])
    return total, count, hits
  return eval_step


# ----------------------------------------------------------------------------------------- run

def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains to `config.train.steps`, resuming from the workdir if it holds a run. Returns last metrics.

  SIGTERM / SIGINT during the run (a preemption notice) ends it early but cleanly: the step in flight
  finishes, is checkpointed, the save completes, and this returns (`preempted` true in the result)."""
  with ckpt_lib.Preemption() as preemption:
    return _train(config, workdir, preemption)


def _train(config: ml_collections.ConfigDict, workdir: str, preemption: ckpt_lib.Preemption) -> dict[str, float]:
  # Setup: everything that can be wrong with the config is found before anything is written.
  mcfg = config_lib.validate(config)
  # Orbax needs absolute paths; a relative local workdir is relative to where the command runs.
  workdir = epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))
  old_config = check_workdir(workdir, config) if workdir.exists() else None
  ckpt_lib.check_writable(workdir)
  pc, pi = jax.process_count(), jax.process_index()

  # Mesh.
  mesh = partitioning.make_mesh(config.mesh.shape, config.mesh.num_devices)
  partitioning.check_batch(config.data.batch_size, mesh, pc)
  k = config.train.grad_accum_steps
  if (config.data.batch_size // k) % partitioning.batch_divisor(mesh):
    raise ConfigError(f"train.grad_accum_steps={k}: microbatches of {config.data.batch_size // k} rows "
                      f"(data.batch_size={config.data.batch_size} / {k}) do not divide over the mesh's "
                      f"data x fsdp = {partitioning.batch_divisor(mesh)} devices; use a divisor of "
                      f"{config.data.batch_size // partitioning.batch_divisor(mesh)}")
  rules = partitioning.rules_for(config.mesh.rules)

  # Data.
  data = pipeline.build(config, pi, pc)
  tok = data.tokenizer
  eval_names = ("loss", "accuracy") if data.labels else ("loss", "accuracy", "bits_per_byte", "perplexity")
  if config.train.best_metric and config.train.best_metric not in eval_names:
    raise ConfigError(f"train.best_metric={config.train.best_metric!r}: allowed values are "
                      f"{', '.join(map(repr, ('',) + eval_names))}")

  # Model and optimizer, state by shape first.
  module = models.build(mcfg)
  tx = optim.make(config)
  schedule = optim.schedule(config)
  seq_len = config.data.seq_len

  example_batch = data.train.example_batch()

  def init_state(rng):
    params = init_params(module, example_batch, rng)
    return TrainState(jnp.zeros([], jnp.int32), params, tx.init(params))

  with partitioning.activate(mesh, rules):
    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    partitioning.check_rules(abstract, rules)
    state_sh = partitioning.logical_shardings(abstract, mesh, rules)
    partitioning.check_divisible(abstract, state_sh)
    abstract = partitioning.unbox(abstract)
    n_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract.params))

  # Restore: this workdir's latest checkpoint, else init_from, else scratch.
  ckpt = ckpt_lib.Checkpointer(str(workdir), keep=config.train.keep_checkpoints,
                               async_save=config.train.async_checkpoints, best_metric=config.train.best_metric,
                               best_mode=config.train.best_mode)
  latest = ckpt.latest_step()
  if ckpt.incomplete:
    log(f"bigjax: removed {len(ckpt.incomplete)} incomplete checkpoint(s) of an interrupted save "
        f"({', '.join(ckpt.incomplete)}); "
        + (f"the last complete one is step {latest}" if latest is not None else "no complete checkpoint exists"))
  if latest is None and old_config is not None and (workdir / "checkpoints").exists():
    log(f"note: {workdir} has a config.json but no complete checkpoint; starting from scratch")
  target = ckpt_lib.abstract_with_shardings(abstract, state_sh)
  with partitioning.activate(mesh, rules):
    position = None  # Where the data stream resumes (packed streams need it; windows need only the step).
    if latest is not None:
      state, meta = ckpt.restore(latest, target)
      position = meta.get("data", {}).get("position")
      source = f"this workdir's checkpoint at step {latest}"
    else:
      init = jax.jit(lambda r: nn.meta.unbox(init_state(r)), out_shardings=state_sh)
      state = init(jax.random.PRNGKey(config.train.seed))
      source = "scratch"
      if config.train.init_from:
        state = state.replace(params=load_params(config.train.init_from, mcfg, state.params, state_sh.params,
                                                 config.data.tokenizer))
        source = f"init_from {config.train.init_from} (params only, fresh optimizer)"
  start = int(state.step)
  # Written only once the state exists, so that a failed start leaves no config pinning the workdir.
  resolved = json.loads(config.to_json_best_effort())
  if pi == 0:
    write_json_atomic(workdir / "config.json", resolved)
  log(f"bigjax: {mcfg.family} with {n_params:,} params; mesh {dict(mesh.shape)} on {jax.device_count()} "
      f"{jax.devices()[0].platform} device(s), {pc} process(es)")
  size = (f"{len(data.train.records):,} train records" if data.eval_windows is None
          else f"{len(data.train_tokens):,} train tokens")
  log(f"bigjax: data {config.data.source} ({size}, tokenizer {tok.name} with {tok.vocab_size} ids); "
      f"{data.objective.name}, batch {config.data.batch_size} x {seq_len}")
  log(f"bigjax: state from {source}; training steps {start} → {config.train.steps} in {workdir}")

  # Step functions, compiled ahead of time.
  batch_sh = partitioning.batch_sharding(mesh)
  repl = partitioning.replicated(mesh)
  with partitioning.activate(mesh, rules):
    t0 = time.time()
    step_fn = jax.jit(make_train_step(module, tx, schedule, config.train.seed, config.train.grad_accum_steps,
                                      config.train.on_nonfinite),
                      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl), donate_argnums=0)
    eval_fn = jax.jit(make_eval_step(module), in_shardings=(state_sh.params, batch_sh), out_shardings=repl)
    example = partitioning.global_batch(example_batch, mesh)
    step_fn = step_fn.lower(state, example).compile()
    eval_fn = eval_fn.lower(state.params, partitioning.global_batch(data.eval[0], mesh)).compile()
    log(f"bigjax: compiled train and eval steps in {time.time() - t0:.1f}s")

  # Eval constants: unigram floor and bytes per eval set (on the global eval batches).
  ref = pipeline.eval_constants(config, data, mcfg, data.eval_global)

  writer = MetricsWriter(workdir, start)
  sample_len = min(config.train.sample_len, mcfg.max_len - _PROMPT_LEN)
  sampler = decode.make_sampler(mcfg, sample_len, config.train.sample_temperature, config.train.sample_top_k,
                         tok.eos_id, tok.pad_id)
  target_len = example_batch["decoder_input_ids"].shape[1] if "decoder_input_ids" in example_batch else None
  meter = throughput.Throughput.create(mcfg, config.data.batch_size, seq_len, target_len,
                                       devices=list(mesh.devices.flat))
  log(f"bigjax: {meter.describe()}")

  def evaluate(step: int) -> dict[str, float]:
    with partitioning.activate(mesh, rules):
      tot = cnt = hits = 0.0
      for b in data.eval:
        s, c, h = eval_fn(state.params, partitioning.global_batch(b, mesh))
        tot, cnt, hits = tot + float(s), cnt + float(c), hits + float(h)
    loss = tot / cnt
    m = {"loss": loss, "unigram_loss": ref["unigram_nats"] / ref["tokens"], "accuracy": hits / cnt}
    if data.labels:  # Classification: accuracy of the label; the floor is the label prior.
      log(f"eval  step {step}: loss {loss:.4f} (label prior {m['unigram_loss']:.4f}) accuracy {m['accuracy']:.4f}")
    else:
      m.update(bits_per_byte=tot / math.log(2) / max(ref["bytes"], 1.0), perplexity=math.exp(min(loss, 80.0)))
      log(f"eval  step {step}: loss {m['loss']:.4f} (unigram {m['unigram_loss']:.4f}, ratio "
          f"{m['loss'] / m['unigram_loss']:.3f}) bits/byte {m['bits_per_byte']:.4f} ppl {m['perplexity']:.2f} "
          f"accuracy {m['accuracy']:.4f}")
    writer.write(step, "eval", m)
    write_samples(step)
    return m

  def write_samples(step: int) -> None:
    if mcfg.family != "decoder" or data.eval_windows is None:  # Samples continue text windows: LMs only.
      return
    n = min(config.train.num_samples, len(data.eval[0]["inputs"]))
    if n <= 0 or sample_len <= 0:
      return
    prompts = np.asarray(data.eval_windows.gather(np.arange(n) % data.eval_windows.count)[:, :_PROMPT_LEN])
    with partitioning.activate(mesh, rules):
      out = sampler(state.params, jnp.asarray(prompts), jax.random.PRNGKey(step))
    out = np.asarray(out)
    if pi == 0:
      with (workdir / "samples.txt").open("a") as f:
        f.write(f"=== step {step} (temperature {config.train.sample_temperature}, "
                f"top_k {config.train.sample_top_k}) ===\n")
        for row in out:
          f.write(f"[prompt] {tok.decode(row[:_PROMPT_LEN].tolist())}\n")
          f.write(f"[sample] {tok.decode(row[_PROMPT_LEN:].tolist())}\n\n")

  # Loop.
  last_eval: dict[str, float] = {}
  last_train: dict[str, float] = {}
  steps = config.train.steps
  window_t, window_steps, run_t0 = time.time(), 0, time.time()
  it = data.train.iterate(start, position)
  pending: list[tuple[int, dict]] = []  # Per-step metrics (on device) not yet checked for finiteness.
  last_finite: tuple[int, float] | None = None
  skipped = 0  # Non-finite steps skipped (train.on_nonfinite=skip).
  saved_step, blocked = start, 0.0  # Seconds the loop waited on checkpoint saves.
  check_params = jax.jit(all_finite)

  def check_finite() -> None:
    """Every step since the last check: a non-finite one stops the run (or is counted, when skipped)."""
    nonlocal last_finite, skipped
    for s, m in jax.device_get(pending):
      if not m["nonfinite"]:
        last_finite = (s, float(m["loss"]))
      elif config.train.on_nonfinite == "skip":
        skipped += 1
        log(f"train step {s}: loss {float(m['loss'])} grad_norm {float(m['grad_norm'])} is not finite; "
            "update skipped (train.on_nonfinite=skip)")
      else:
        kept = ckpt.all_steps()
        ckpt.wait()
        raise FloatingPointError(
            f"non-finite loss {float(m['loss'])} (grad_norm {float(m['grad_norm'])}) at step {s}; last finite "
            + (f"loss {last_finite[1]:.4f} at step {last_finite[0]}" if last_finite else "loss: none this run")
            + f"; nothing saved after it (checkpoints kept: {kept or 'none'}). Lower optim.learning_rate, raise "
            "optim.warmup_steps, or set train.on_nonfinite=skip")
    pending.clear()

  if preemption.signal_name is not None:
    log(f"bigjax: stopped by {preemption.signal_name} before the first step; nothing to save")
  step = start
  for step in range(start + 1, steps + 1) if preemption.signal_name is None else ():
    with partitioning.activate(mesh, rules):
      batch, position = next(it)
      state, metrics = step_fn(state, partitioning.global_batch(batch, mesh))
    pending.append((step, metrics))
    window_steps += 1
    stop = preemption.requested(step)
    is_last = step == steps or stop
    do_log = step % config.train.log_every == 0 or is_last
    do_save = step % config.train.checkpoint_every == 0 or is_last
    if do_log or do_save:
      check_finite()
    if do_log:
      metrics = jax.device_get(metrics)
      dt = time.time() - window_t
      speed = meter(window_steps, dt)
      last_train = {"loss": float(metrics["loss"]), "learning_rate": float(metrics["learning_rate"]),
                    "grad_norm": float(metrics["grad_norm"]), **speed}
      if skipped:
        last_train["skipped_steps"] = skipped
      writer.write(step, "train", last_train)
      eta = (steps - step) * dt / window_steps
      log(f"train step {step}/{steps}: loss {last_train['loss']:.4f} lr {last_train['learning_rate']:.2e} "
          f"grad_norm {last_train['grad_norm']:.3f} | {speed['tokens_per_s']:,.0f} tok/s "
          f"{1000 * speed['step_time_s']:.0f} ms/step {speed['tflops_per_device']:.3g} TFLOP/s/device "
          f"MFU {100 * speed['mfu']:.3g}% | "
          f"elapsed {_fmt_time(time.time() - run_t0)} left {_fmt_time(eta)}")
      window_t, window_steps = time.time(), 0
    evaluated = None
    if (step % config.train.eval_every == 0 or step == steps) and not stop:
      last_eval = evaluated = evaluate(step)
      window_t, window_steps = time.time(), 0  # Eval time is not training throughput.
    if do_save and step > saved_step:
      with partitioning.activate(mesh, rules):
        if not bool(check_params(state.params)):
          ckpt.wait()
          raise FloatingPointError(f"params are not finite after step {step} although its loss is; not "
                                   f"saved (checkpoints kept: {ckpt.all_steps() or 'none'})")
      dt_save = ckpt.save(step, state, {"step": step, "config": resolved,
                                        "data": {"seed": config.train.seed, "position": position}},
                          metrics=evaluated)
      blocked += dt_save
      saved_step = step
      log(f"checkpoint step {step}: {'started in the background' if config.train.async_checkpoints else 'written'}, "
          f"the loop waited {dt_save:.2f}s")
      window_t += dt_save  # Not training throughput either.
    if stop:
      waited = ckpt.wait()
      log(f"bigjax: stopped by {preemption.signal_name} after step {step}; checkpoint {step} is complete "
          f"(waited {waited:.1f}s). Run the same command again to continue from step {step + 1}.")
      break
  t_wait = time.time()
  blocked += ckpt.wait()
  ckpt.close()
  writer.close()
  log(f"bigjax: run ends at step {step}; loop {_fmt_time(time.time() - run_t0)}, checkpoint saves blocked "
      f"the loop {blocked:.2f}s in all (final wait {time.time() - t_wait:.1f}s)")
  if step == start and preemption.signal_name is None:
    log(f"bigjax: already at step {start} (train.steps={steps}); nothing to do. Raise --config.train.steps "
        "to train on.")
  out = {**{f"train_{k}": v for k, v in last_train.items()}, **{f"eval_{k}": v for k, v in last_eval.items()}}
  out.update(stopped_at=step, preempted=preemption.signal_name is not None and step < steps)
  return out


def init_params(module, batch, rng):
  """The module's params for a batch's shapes (the model's call arguments are the batch's keys)."""
  one = {k: jnp.zeros((1,) + v.shape[1:], v.dtype) for k, v in batch.items()}
  return module.init(rng, one["inputs"], **model_inputs(one))["params"]


def _flatten(tree) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _unflatten(flat: dict[str, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _params_from(init_from: str, mcfg, tokenizer: str | None = None) -> tuple[str, dict[str, Any], tuple | None]:
  """(description, flat params as host arrays or Orbax metadata, (workdir, step) when the params are
  still to be read from that checkpoint) of a workdir or a Hugging Face model dir."""
  src = epath.Path(init_from)
  if not (src / "config.json").exists():
    raise ConfigError(f"train.init_from={init_from!r}: neither a bigjax workdir nor a Hugging Face model "
                      "directory (no config.json)")
  if "model_type" in json.loads((src / "config.json").read_text()):
    from bigjax import convert  # pylint: disable=g-import-not-at-top
    _, params = convert.from_hf(init_from)
    return "a Hugging Face model", _flatten(models.to_layout(mcfg, params)), None
  saved = ml_collections.ConfigDict(json.loads((src / "config.json").read_text()))
  other_cfg = config_lib.model_config(saved)
  if other_cfg.family != mcfg.family:
    raise ConfigError(f"train.init_from={init_from!r} holds a model.family={other_cfg.family!r} model, but this "
                      f"run trains model.family={mcfg.family!r}; start from a {mcfg.family} workdir")
  # A converted Hugging Face model records no tokenizer of ours (its config has the default): not checked.
  if tokenizer is not None and "converted_from" not in saved and saved.data.tokenizer != tokenizer:
    raise ConfigError(f"train.init_from={init_from!r} was trained with data.tokenizer={saved.data.tokenizer!r}, "
                      f"but this run uses data.tokenizer={tokenizer!r}: its token embeddings would mean other "
                      "pieces; use the same tokenizer")
  other = ckpt_lib.Checkpointer(str(src))
  step = other.latest_step()
  if step is None:
    raise ConfigError(f"train.init_from={init_from!r}: the workdir has no complete checkpoint")
  stored = other.param_metadata(step)
  if other_cfg.scan_layers != mcfg.scan_layers:  # Restore in the stored layout, then convert on the host.
    host = other.restore_params(step, stored)
    other.close()
    return f"step {step} of that workdir", _flatten(models.to_layout(mcfg, jax.device_get(host))), None
  other.close()
  return f"step {step} of that workdir", _flatten(stored), (src, step)


def load_params(init_from: str, mcfg, fresh_params, shardings, tokenizer: str | None = None):
  """`fresh_params` with every parameter that `init_from` (a workdir or a HF model dir) also has replaced
  by its value there. Parameters only here (a new head) keep their fresh values, parameters only there
  are left out; both are logged. A parameter whose shape differs is an error naming it."""
  what, theirs, checkpoint = _params_from(init_from, mcfg, tokenizer)
  ours, sh = _flatten(fresh_params), _flatten(shardings)
  for name, leaf in ours.items():
    if name in theirs and tuple(theirs[name].shape) != tuple(leaf.shape):
      raise ConfigError(f"train.init_from={init_from!r}: parameter {name} has shape {tuple(theirs[name].shape)} "
                        f"there but {tuple(leaf.shape)} here")
  common = [n for n in ours if n in theirs]
  if not common:
    raise ConfigError(f"train.init_from={init_from!r}: no parameter there has a name used here "
                      f"(here: {', '.join(list(ours)[:3])}, ...)")
  if checkpoint is not None:  # Read just the common parameters, each straight into its sharding.
    src, step = checkpoint
    target = {n: jax.ShapeDtypeStruct(ours[n].shape, ours[n].dtype, sharding=sh[n]) for n in common}
    other = ckpt_lib.Checkpointer(str(src))
    loaded = _flatten(other.restore_params(step, _unflatten(target)))
    other.close()
  else:
    loaded = {n: jax.device_put(np.asarray(theirs[n], ours[n].dtype), sh[n]) for n in common}
  fresh = [n for n in ours if n not in theirs]
  dropped = [n for n in theirs if n not in ours]
  log(f"bigjax: init_from {init_from} ({what}): {len(common)} parameters loaded"
      + (f"; freshly initialised: {', '.join(fresh)}" if fresh else "")
      + (f"; not used here: {', '.join(dropped[:6])}{' ...' if len(dropped) > 6 else ''}" if dropped else ""))
  return _unflatten({n: loaded.get(n, leaf) for n, leaf in ours.items()})
