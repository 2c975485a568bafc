"""The trainer: one linear loop for every model family.

`train(config, workdir)` reads top to bottom: setup (validate, workdir, mesh, data, the state by
shape) → restore or init (this workdir's latest checkpoint, else `train.init_from`, else scratch) →
compile (the train step and the evaluator) → the loop (step, log, eval and samples, checkpoint, stop on
a preemption notice). A family is a linen module plus an objective that turns a batch into `inputs`,
`targets` and `weights`; nothing here depends on which family it trains. The step functions and the
state by shape are `bigjax.steps`; everything on disk is `bigjax.workdir` and `bigjax.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from etils import epath
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigjax import checkpoint as ckpt_lib
from bigjax import config as config_lib
from bigjax import decode
from bigjax import distill
from bigjax import lora as lora_lib
from bigjax import models
from bigjax import optim
from bigjax import partitioning
from bigjax import prune as prune_lib
from bigjax import steps
from bigjax import throughput
from bigjax import workdir as workdir_lib
from bigjax.config import ConfigError
from bigjax.data import pipeline
from bigjax.models import layers

_PROMPT_LEN = 16


log = workdir_lib.log


def _fmt_time(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclasses.dataclass
class Run:
  """What setup found: the run's fixed facts, shared by the sections below."""
  config: ml_collections.ConfigDict
  mcfg: config_lib.ModelConfig
  workdir: epath.Path
  saved: dict | None  # The workdir's config.json before this start.
  mesh: jax.sharding.Mesh
  rules: tuple
  data: pipeline.Data
  abstract: steps.Abstract
  ckpt: ckpt_lib.Checkpointer
  teacher: distill.Teacher | None = None  # train.teacher: the frozen model distilled from.


def train(config: ml_collections.ConfigDict, workdir: str, *, started: float | None = None,
          on_log=None) -> dict[str, float]:
  """Trains to `config.train.steps`, resuming from the workdir if it holds a run. Returns last metrics.

  SIGTERM / SIGINT during the run (a preemption notice) ends it early but cleanly: the step in flight
  finishes, is checkpointed, the save completes, and this returns (`preempted` true in the result).
  `started` (a `time.time()`, the CLI's start) dates the start-up line; by default it counts from this call.
  `on_log(step, total, split, metrics)` (e.g. a notebook's progress bar) is called with every line written to
  metrics.jsonl ("train" every train.log_every steps, "eval" at each eval)."""
  clock = {"start": started or time.time(), "call": time.time()}
  with ckpt_lib.Preemption() as preemption:
    run = setup(config, workdir)
    clock["setup"] = time.time()
    try:
      state, position = restore_or_init(run)
      clock["state"] = time.time()
      compiled = compile_steps(run, state)
      clock["compile"] = time.time()
      return loop(run, state, position, compiled, preemption, clock, on_log)
    finally:
      run.ckpt.close()


def _startup_line(clock: dict[str, float]) -> str:
  """Where the time from the command (or the call) to the end of the first step went."""
  parts = [("imports", clock["start"], clock["call"]), ("setup and data", clock["call"], clock["setup"]),
           ("state", clock["setup"], clock["state"]), ("compile", clock["state"], clock["compile"]),
           ("first step", clock["compile"], clock["first_step"])]
  shown = ", ".join(f"{name} {b - a:.1f}" for name, a, b in parts if b - a >= 0.05)
  return f"bigjax: start-up {clock['first_step'] - clock['start']:.1f}s to the end of the first step ({shown})"


# ----------------------------------------------------------------------------------------- setup

def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Everything that can be wrong with the config, the workdir or the mesh is found here, before any
  state exists or anything is written."""
  mcfg = config_lib.validate(config)
  if mcfg.quantize in ("int8_weight", "int8_dynamic"):
    raise ConfigError(f"model.quantize={mcfg.quantize!r} is post-training quantization for eval, decode and export "
                      "(bigjax quantize writes it); train the float model and quantize it after")
  root = workdir_lib.path(workdir)
  saved = workdir_lib.read_config(root)
  config.optim.decay_steps = config_lib.resolve_decay_steps(config, saved)  # Pinned from the first run on.
  if config.train.prune != "none" and not config.train.prune_end:  # Pinned too: the first run's train.steps.
    config.train.prune_end = int((saved or {}).get("train", {}).get("prune_end") or config.train.steps)
  workdir_lib.check_pinned(root, config, saved)
  workdir_lib.check_writable(root)

  mesh = partitioning.make_mesh(config.mesh.shape, config.mesh.num_devices)
  partitioning.check_batch(config.data.batch_size, mesh, jax.process_count())
  k = config.train.grad_accum_steps
  if (config.data.batch_size // k) % partitioning.batch_divisor(mesh):
    raise ConfigError(f"train.grad_accum_steps={k}: microbatches of {config.data.batch_size // k} rows "
                      f"(data.batch_size={config.data.batch_size} / {k}) do not divide over the mesh's "
                      f"data x fsdp = {partitioning.batch_divisor(mesh)} devices; use a divisor of "
                      f"{config.data.batch_size // partitioning.batch_divisor(mesh)}")
  rules, kv_note = partitioning.fit_kv_heads(partitioning.rules_for(config.mesh.rules), mcfg, mesh)
  if kv_note:
    log(kv_note)
  attention = layers.attention_implementation(mcfg, dropout=mcfg.dropout_rate > 0)  # Refuses what cannot run.
  log(f"bigjax: attention {attention} (model.attention={mcfg.attention!r} on {jax.default_backend()}, "
      f"{mcfg.dtype}{', dropout' if mcfg.dropout_rate > 0 else ''})")

  # The data is read only once the config, the workdir and the mesh are known to be right (a bad setting is
  # reported in a second); TensorFlow loads only if a split must be tokenized (a cache miss).
  data = pipeline.build(config, jax.process_index(), jax.process_count())
  eval_names = ("loss", "accuracy") if data.labels else ("loss", "accuracy", "bits_per_byte", "perplexity")
  if config.train.best_metric and config.train.best_metric not in eval_names:
    raise ConfigError(f"train.best_metric={config.train.best_metric!r}: allowed values are "
                      f"{', '.join(map(repr, ('',) + eval_names))}")

  adapters = lora_lib.spec(config)
  abstract = steps.abstract_state(mcfg, mesh, rules, optim.make(config), lora=adapters)
  if adapters is not None:
    log(lora_lib.describe(abstract.state.params, adapters))  # Names train.lora_targets if it finds nothing.
  teacher = distill.load(config, mcfg, mesh, rules)
  if teacher is not None:
    log(f"bigjax: distilling from {teacher.source} ({teacher.cfg.family}, "
        f"{sum(x.size for x in jax.tree_util.tree_leaves(teacher.params)):,} params, {teacher.cfg.param_dtype}): "
        f"loss = {teacher.alpha:g} * {teacher.temperature:g}^2 * KL + {1 - teacher.alpha:g} * cross-entropy")
  ckpt = ckpt_lib.Checkpointer(str(root), keep=config.train.keep_checkpoints,
                               async_save=config.train.async_checkpoints, best_metric=config.train.best_metric,
                               best_mode=config.train.best_mode)
  return Run(config, mcfg, root, saved, mesh, rules, data, abstract, ckpt, teacher)


# ------------------------------------------------------------------------------ restore or init

def restore_or_init(run: Run) -> tuple[steps.TrainState, Any]:
  """The state to start from, and where the data stream resumes (packed streams need it; windows need
  only the step): this workdir's latest checkpoint, else `train.init_from`'s params, else scratch."""
  config, ckpt = run.config, run.ckpt
  latest = ckpt.latest_step()
  if ckpt.incomplete:
    log(f"bigjax: removed {len(ckpt.incomplete)} incomplete checkpoint(s) of an interrupted save "
        f"({', '.join(ckpt.incomplete)}); "
        + (f"the last complete one is step {latest}" if latest is not None else "no complete checkpoint exists"))
  if latest is None and run.saved is not None and (run.workdir / "checkpoints").exists():
    log(f"note: {run.workdir} has a config.json but no complete checkpoint; starting from scratch")
  position = None
  with partitioning.activate(run.mesh, run.rules):
    if latest is not None:
      state, meta = ckpt.restore(latest, run.abstract.state)
      position = meta.get("data", {}).get("position")
      source = f"this workdir's checkpoint at step {latest}"
    else:
      state = run.abstract.init_fn(config.train.seed)()
      source = "scratch"
      if config.train.init_from:
        state = state.replace(params=init_from(config.train.init_from, run.mcfg, state.params,
                                               run.abstract.shardings.params, config.data.tokenizer))
        source = f"init_from {config.train.init_from} (params only, fresh optimizer)"
  # Written only once the state exists, so that a failed start leaves no config pinning the workdir.
  if jax.process_index() == 0:
    workdir_lib.write_json(run.workdir / workdir_lib.CONFIG, json.loads(config.to_json_best_effort()))
  data, tok = run.data, run.data.tokenizer
  log(f"bigjax: {run.mcfg.family} with {run.abstract.param_count:,} params; mesh {dict(run.mesh.shape)} on "
      f"{jax.device_count()} {jax.devices()[0].platform} device(s), {jax.process_count()} process(es)")
  size = (f"{len(data.train.records):,} train records" if data.eval_windows is None
          else f"{len(data.train_tokens):,} train tokens")
  log(f"bigjax: data {config.data.source} ({size}, tokenizer {tok.name} with {tok.vocab_size} ids); "
      f"{data.objective.name}, batch {config.data.batch_size} x {config.data.seq_len}")
  log(f"bigjax: state from {source}; training steps {int(state.step)} → {config.train.steps} in {run.workdir}")
  log(f"bigjax: learning rate {optim.describe_schedule(config)}")
  return state, position


def init_from(source: str, mcfg, fresh_params, shardings, tokenizer: str | None = None):
  """`fresh_params` with every parameter that `source` (a bigjax workdir or a Hugging Face model dir)
  also has replaced by its value there. Parameters only here (a new head) keep their fresh values,
  parameters only there are left out; both are logged. A parameter whose shape differs is an error."""
  src = epath.Path(source)
  hf = workdir_lib.read_config(src, "train.init_from")
  if hf is None:
    raise ConfigError(f"train.init_from={source!r}: neither a bigjax workdir nor a Hugging Face model "
                      "directory (no config.json)")
  flat = lambda tree: flax.traverse_util.flatten_dict(tree, sep="/")
  ours = flat(fresh_params)
  if "model_type" in hf:  # A Hugging Face directory: converted on the host.
    from bigjax import convert  # pylint: disable=g-import-not-at-top
    _, params = convert.from_hf(source)
    theirs = flat(models.to_layout(mcfg, params))
    for name, leaf in ours.items():
      if name in theirs and tuple(theirs[name].shape) != tuple(leaf.shape):
        raise ConfigError(f"train.init_from={source!r}: parameter {name} has shape {tuple(theirs[name].shape)} "
                          f"there but {tuple(leaf.shape)} here")
    sh = flat(shardings)
    loaded = {n: jax.device_put(np.asarray(theirs[n], ours[n].dtype), sh[n]) for n in ours if n in theirs}
    what, fresh, unused = "a Hugging Face model", [n for n in ours if n not in theirs], [n for n in theirs
                                                                                         if n not in ours]
    if not loaded:
      raise ConfigError(f"train.init_from={source!r}: no parameter there has a name used here")
  else:
    other = workdir_lib.model_config(hf)
    if other.family != mcfg.family:
      raise ConfigError(f"train.init_from={source!r} holds a model.family={other.family!r} model, but this run "
                        f"trains model.family={mcfg.family!r}; start from a {mcfg.family} workdir")
    # A converted Hugging Face model records no tokenizer of ours: not checked.
    theirs_tok = workdir_lib.tokenizer_name(hf)
    if tokenizer is not None and theirs_tok and theirs_tok != tokenizer:
      raise ConfigError(f"train.init_from={source!r} was trained with data.tokenizer={theirs_tok!r}, but this "
                        f"run uses data.tokenizer={tokenizer!r}: its token embeddings would mean other pieces; "
                        "use the same tokenizer")
    got = workdir_lib.latest_params(source, mcfg, shardings, subset=True, setting="train.init_from")
    loaded, fresh, unused = flat(got.params), got.fresh, got.unused
    what = f"step {got.step} of that workdir"
  adapters = [n for n in fresh if lora_lib.is_adapter(n)]
  fresh = [n for n in fresh if not lora_lib.is_adapter(n)]
  log(f"bigjax: init_from {source} ({what}): {len(loaded)} parameters loaded"
      + (f"; {len(adapters)} LoRA adapter matrices start fresh" if adapters else "")
      + (f"; freshly initialised: {', '.join(fresh)}" if fresh else "")
      + (f"; not used here: {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''}" if unused else ""))
  return flax.traverse_util.unflatten_dict({n: loaded.get(n, leaf) for n, leaf in ours.items()}, sep="/")


# --------------------------------------------------------------------------------------- compile

@dataclasses.dataclass
class Compiled:
  step: Any  # (state, global batch) -> (state, metrics); the state is donated.
  evaluator: steps.Evaluator
  params_finite: Any  # params -> bool scalar, checked before each save.


def compile_steps(run: Run, state: steps.TrainState) -> Compiled:
  """The train step and the evaluator, jitted with explicit shardings and compiled ahead of time."""
  config, mesh, data, sh = run.config, run.mesh, run.data, run.abstract.shardings
  constants = pipeline.eval_constants(config, data, run.mcfg, data.eval_global)
  with partitioning.activate(mesh, run.rules):
    t0 = time.time()
    step_fn = jax.jit(steps.make_train_step(run.abstract.module, run.abstract.tx, optim.schedule(config),
                                            config.train.seed, config.train.grad_accum_steps,
                                            config.train.on_nonfinite, sparsity=_sparsity_fn(config),
                                            teacher=run.teacher),
                      in_shardings=(sh, partitioning.batch_sharding(mesh))
                      + ((jax.tree_util.tree_map(lambda x: x.sharding, run.teacher.params),) if run.teacher else ()),
                      out_shardings=(sh, partitioning.replicated(mesh)), donate_argnums=0)
    example = partitioning.global_batch(data.train.example_batch(), mesh)
    if run.teacher is None:
      step_fn = step_fn.lower(state, example).compile()
    else:
      with_teacher = step_fn.lower(state, example, run.teacher.params).compile()
      step_fn = lambda s, b: with_teacher(s, b, run.teacher.params)
    evaluator = steps.Evaluator(run.abstract.module, mesh, run.rules, sh.params, data.eval, constants,
                                labels=bool(data.labels))
    evaluator.compile(state.params)
    log(f"bigjax: compiled train and eval steps in {time.time() - t0:.1f}s")
  return Compiled(step_fn, evaluator, jax.jit(steps.all_finite))


def _sparsity_fn(config):
  pruning = prune_lib.spec(config)
  return None if pruning is None else (lambda params: prune_lib.sparsity(params, pruning))


# ------------------------------------------------------------------------------------------ loop

class _FiniteWatch:
  """Per-step metrics on device, checked at log and save steps (no host sync per step): a non-finite
  step stops the run naming it, or is counted when `train.on_nonfinite=skip` skipped its update."""

  def __init__(self, mode: str, ckpt: ckpt_lib.Checkpointer):
    self.mode, self.ckpt = mode, ckpt
    self.pending: list[tuple[int, dict]] = []
    self.last_finite: tuple[int, float] | None = None
    self.skipped = 0

  def check(self) -> None:
    for s, m in jax.device_get(self.pending):
      if not m["nonfinite"]:
        self.last_finite = (s, float(m["loss"]))
      elif self.mode == "skip":
        self.skipped += 1
        log(f"train step {s}: loss {float(m['loss'])} grad_norm {float(m['grad_norm'])} is not finite; "
            "update skipped (train.on_nonfinite=skip)")
      else:
        kept = self.ckpt.all_steps()
        self.ckpt.wait()
        last = self.last_finite
        raise FloatingPointError(
            f"non-finite loss {float(m['loss'])} (grad_norm {float(m['grad_norm'])}) at step {s}; last finite "
            + (f"loss {last[1]:.4f} at step {last[0]}" if last else "loss: none this run")
            + f"; nothing saved after it (checkpoints kept: {kept or 'none'}). Lower optim.learning_rate, raise "
            "optim.warmup_steps, or set train.on_nonfinite=skip")
    self.pending.clear()


def loop(run: Run, state: steps.TrainState, position, compiled: Compiled,
         preemption: ckpt_lib.Preemption, clock: dict[str, float] | None = None, on_log=None) -> dict[str, Any]:
  """Steps to train.steps: logs every train.log_every, evaluates (and samples) every train.eval_every,
  checkpoints every train.checkpoint_every and at the end, and stops cleanly on a preemption notice."""
  config, mcfg, mesh, data, ckpt = run.config, run.mcfg, run.mesh, run.data, run.ckpt
  tok = data.tokenizer
  start, total = int(state.step), config.train.steps
  step_fn, evaluator = compiled.step, compiled.evaluator
  example = data.train.example_batch()
  writer = workdir_lib.MetricsWriter(run.workdir, start, enabled=jax.process_index() == 0)
  sample_len = min(config.train.sample_len, mcfg.max_len - _PROMPT_LEN)
  sampler = decode.make_sampler(mcfg, sample_len, config.train.sample_temperature, config.train.sample_top_k,
                                tok.eos_id, tok.pad_id)
  adapters = run.abstract.module.lora  # The sampler's model has no adapters: they are merged in, compiled once.
  merge_adapters = None if adapters is None else jax.jit(lambda p: lora_lib.merge(p, adapters))
  target_len = example["decoder_input_ids"].shape[1] if "decoder_input_ids" in example else None
  meter = throughput.Throughput.create(mcfg, config.data.batch_size, config.data.seq_len, target_len,
                                       devices=list(mesh.devices.flat))
  log(f"bigjax: {meter.describe()}")

  def evaluate(step: int) -> dict[str, float]:
    m = evaluator(state.params)
    if data.labels:  # Classification: accuracy of the label; the floor is the label prior.
      log(f"eval  step {step}: loss {m['loss']:.4f} (label prior {m['unigram_loss']:.4f}) accuracy {m['accuracy']:.4f}")
    else:
      log(f"eval  step {step}: loss {m['loss']:.4f} (unigram {m['unigram_loss']:.4f}, ratio "
          f"{m['loss'] / m['unigram_loss']:.3f}) bits/byte {m['bits_per_byte']:.4f} ppl {m['perplexity']:.2f} "
          f"accuracy {m['accuracy']:.4f}")
    writer.write(step, "eval", m)
    if on_log is not None:
      on_log(step, total, "eval", m)
    write_samples(step)
    return m

  def write_samples(step: int) -> None:
    if mcfg.family != "decoder" or data.eval_windows is None:  # Samples continue text windows: LMs only.
      return
    n = min(config.train.num_samples, len(data.eval[0]["inputs"]))
    if n <= 0 or sample_len <= 0:
      return
    prompts = np.asarray(data.eval_windows.gather(np.arange(n) % data.eval_windows.count)[:, :_PROMPT_LEN])
    with partitioning.activate(mesh, run.rules):
      params = state.params if merge_adapters is None else merge_adapters(state.params)
      out = np.asarray(sampler(params, jnp.asarray(prompts), jax.random.PRNGKey(step)))
    if jax.process_index() == 0:
      with (run.workdir / "samples.txt").open("a") as f:
        f.write(f"=== step {step} (temperature {config.train.sample_temperature}, "
                f"top_k {config.train.sample_top_k}) ===\n")
        for row in out:
          f.write(f"[prompt] {tok.decode(row[:_PROMPT_LEN].tolist())}\n")
          f.write(f"[sample] {tok.decode(row[_PROMPT_LEN:].tolist())}\n\n")

  resolved = json.loads(config.to_json_best_effort())  # Each checkpoint records the config it ran.
  last_eval: dict[str, float] = {}
  last_train: dict[str, float] = {}
  watch = _FiniteWatch(config.train.on_nonfinite, ckpt)
  window_t, window_steps, run_t0 = time.time(), 0, time.time()
  saved_step, blocked = start, 0.0  # Seconds the loop waited on checkpoint saves.
  it = data.train.iterate(start, position)
  if preemption.signal_name is not None:
    log(f"bigjax: stopped by {preemption.signal_name} before the first step; nothing to save")
  step = start
  for step in range(start + 1, total + 1) if preemption.signal_name is None else ():
    with partitioning.activate(mesh, run.rules):
      batch, position = next(it)
      state, metrics = step_fn(state, partitioning.global_batch(batch, mesh))
    watch.pending.append((step, metrics))
    window_steps += 1
    if step == start + 1 and clock is not None:  # One wait for the device, once: the start-up line.
      jax.block_until_ready(metrics)
      log(_startup_line({**clock, "first_step": time.time()}))
    stop = preemption.requested(step)
    is_last = step == total or stop
    do_log = step % config.train.log_every == 0 or is_last
    do_save = step % config.train.checkpoint_every == 0 or is_last
    if do_log or do_save:
      watch.check()
    if do_log:
      metrics = jax.device_get(metrics)
      dt = time.time() - window_t
      speed = meter(window_steps, dt)
      last_train = {"loss": float(metrics["loss"]), "learning_rate": float(metrics["learning_rate"]),
                    "grad_norm": float(metrics["grad_norm"]), **speed}
      if watch.skipped:
        last_train["skipped_steps"] = watch.skipped
      for name in ("sparsity", "xent", "kl"):
        if name in metrics:
          last_train[name] = float(metrics[name])
      writer.write(step, "train", last_train)
      if on_log is not None:
        on_log(step, total, "train", last_train)
      eta = (total - step) * dt / window_steps
      log(f"train step {step}/{total}: loss {last_train['loss']:.4f} lr {last_train['learning_rate']:.2e} "
          f"grad_norm {last_train['grad_norm']:.3f} | {speed['tokens_per_s']:,.0f} tok/s "
          f"{1000 * speed['step_time_s']:.0f} ms/step {speed['tflops_per_device']:.3g} TFLOP/s/device "
          f"MFU {100 * speed['mfu']:.3g}% | "
          + (f"sparsity {last_train['sparsity']:.4f} | " if "sparsity" in last_train else "") +
          f"elapsed {_fmt_time(time.time() - run_t0)} left {_fmt_time(eta)}")
      window_t, window_steps = time.time(), 0
    evaluated = None
    if (step % config.train.eval_every == 0 or step == total) and not stop:
      last_eval = evaluated = evaluate(step)
      window_t, window_steps = time.time(), 0  # Eval time is not training throughput.
    if do_save and step > saved_step:
      with partitioning.activate(mesh, run.rules):
        if not bool(compiled.params_finite(state.params)):
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
  writer.close()
  log(f"bigjax: run ends at step {step}; loop {_fmt_time(time.time() - run_t0)}, checkpoint saves blocked "
      f"the loop {blocked:.2f}s in all (final wait {time.time() - t_wait:.1f}s)")
  if step == start and preemption.signal_name is None:
    log(f"bigjax: already at step {start} (train.steps={total}); nothing to do. Raise --config.train.steps "
        "to train on.")
  out = {**{f"train_{k}": v for k, v in last_train.items()}, **{f"eval_{k}": v for k, v in last_eval.items()}}
  out.update(stopped_at=step, preempted=preemption.signal_name is not None and step < total)
  return out
