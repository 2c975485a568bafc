"""Orbax checkpoints: the train state, sharded, plus a JSON record of the config and data position;
and the preemption watch that turns SIGTERM / SIGINT into "finish the step, checkpoint, exit 0".

Layout: `WORKDIR/checkpoints/<step>/{state,meta}`. Saves are asynchronous by default (training goes on
while the checkpoint is written) and atomic: Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it
to `<step>` only when complete, so a process killed mid-save leaves the previous checkpoint as the
latest; the next start says so and removes the partial directory. Kept: the last `keep` checkpoints
and the best one by an eval metric. Restores read each array straight into its target sharding, so a
checkpoint restores on any mesh. No pickle is involved (arrays are tensorstore/OCDBT, the rest JSON).
"""

from __future__ import annotations

import errno
import math
import os
import signal
import threading
import time

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies
from etils import epath

from bigjax.config import ConfigError

_TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointError(ConfigError):
  """A checkpoint that cannot be read or written; the message is one line and names the directory."""


def _io_error(e: BaseException, where: epath.Path, what: str) -> CheckpointError | None:
  """A one-line error for a disk that is full, read-only or not ours, else None (a bug: re-raise)."""
  while e is not None and not isinstance(e, OSError):  # Orbax wraps the OSError of its writer threads.
    e = e.__cause__ or e.__context__
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
    return CheckpointError(f"{what} in {where} failed: {os.strerror(e.errno)}; the checkpoints already "
                           "there are kept (free space or fix permissions, then rerun the same command)")
  return None


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True, best_metric: str = "",
               best_mode: str = "min", read_only: bool = False):
    # Orbax needs absolute paths; a relative local workdir is relative to where the command runs.
    workdir = str(workdir) if "://" in str(workdir) else os.path.abspath(workdir)
    self.directory = epath.Path(workdir) / "checkpoints"
    self.best_metric = best_metric
    self.async_save = async_save
    # Partial saves of a killed run, found before Orbax removes them (process 0 removes, on start).
    self.incomplete = sorted(p.name for p in self.directory.glob(f"*{_TMP_MARK}*")) if self.directory.exists() else []
    keep_policies = [policies.LatestN(n=keep)]
    if best_metric:
      keep_policies.append(policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                                          n=1, keep_checkpoints_without_metrics=False))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=not read_only, read_only=read_only, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            preservation_policy=policies.AnyPreservationPolicy(keep_policies)),
        # The PyTree handler (not the Standard one) for the state: it restores a part of the tree (params
        # alone), reads its metadata through the manager, and reads the checkpoints StandardSave wrote.
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> float:
    """Starts (async) or writes (sync) checkpoint `step`; returns the seconds the caller was blocked.
    `metrics` (the eval metrics of this step, if any) rank it for keep-best."""
    t0 = time.time()
    if metrics is not None and not (self.best_metric in metrics and math.isfinite(metrics[self.best_metric])):
      metrics = None  # A checkpoint without a finite value of the metric is never "best".
    try:
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                                      meta=ocp.args.JsonSave(meta)), metrics=metrics)
    except Exception as e:  # pylint: disable=broad-except
      raise _io_error(e, self.directory, f"saving checkpoint {step}") or e
    return time.time() - t0

  def state_metadata(self, step: int) -> dict:
    """The stored state's tree of Orbax array metadata (shape, dtype), read without loading any array."""
    try:
      return dict(self.manager.item_metadata(step)["state"].tree)
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from None

  def _check_shapes(self, step: int, abstract_state) -> None:
    """A stored array whose shape differs from the state's is named before Orbax fails on it."""
    stored = jax.tree_util.tree_flatten_with_path(self.state_metadata(step))[0]
    stored = {jax.tree_util.keystr(k): v for k, v in stored}
    ours = jax.tree_util.tree_flatten_with_path(
        {"step": abstract_state.step, "params": abstract_state.params, "opt_state": abstract_state.opt_state})[0]
    for path, leaf in ours:
      name = jax.tree_util.keystr(path)
      m = stored.get(name)
      if m is not None and hasattr(m, "shape") and tuple(m.shape) != tuple(leaf.shape):
        raise CheckpointError(f"checkpoint {self.directory / str(step)} holds {name} of shape {tuple(m.shape)}, "
                              f"but this model's is {tuple(leaf.shape)}: it is another model's checkpoint; "
                              "use a new --workdir (or train.init_from for a model with some shared params)")

  def _unreadable(self, step: int, e: BaseException) -> CheckpointError:
    others = [s for s in self.all_steps() if s != step]
    hint = (f"move it aside to resume from step {others[-1]}" if others else "move it aside to start from scratch")
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return CheckpointError(f"checkpoint {self.directory / str(step)} is corrupted or incomplete "
                           f"({type(e).__name__}: {first}); {hint}")

  def restore(self, step: int, abstract_state):
    """`abstract_state`: a tree of jax.ShapeDtypeStruct carrying the target shardings."""
    self._check_shapes(step, abstract_state)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=_restore_args(abstract_state), meta=ocp.args.JsonRestore()))
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from None
    return out["state"], out["meta"]

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def param_metadata(self, step: int) -> dict:
    """The stored params' tree of Orbax array metadata (shape, dtype), read without loading them."""
    return self.state_metadata(step)["params"]

  def restore_params(self, step: int, abstract_params):
    """Only the params (or the subset `abstract_params` names) of a checkpoint, nothing else loaded:
    each array read straight into the sharding its jax.ShapeDtypeStruct in `abstract_params` carries (a
    leaf of `param_metadata` instead: the array whole, on this process's first device)."""
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree_util.tree_map(
        lambda m: m if isinstance(m, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
        abstract_params)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=_restore_args({"params": abstract_params}, partial=True)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from None
    return out["state"]["params"]

  def wait(self) -> float:
    """Blocks until the saves in flight are on disk; returns the seconds waited."""
    t0 = time.time()
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise _io_error(e, self.directory, "writing a checkpoint") or e
    return time.time() - t0

  def close(self) -> None:
    self.manager.close()


def _restore_args(target, partial: bool = False) -> ocp.args.PyTreeRestore:
  # Restore args carry the target shardings: without them Orbax would place each array as it was saved
  # (a checkpoint of an 8-device mesh could not be read by a one-device process).
  return ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=partial)


class Preemption:
  """Watches for a preemption notice: SIGTERM (what Cloud TPU, GKE and SLURM send before they stop a
  job) or SIGINT (Ctrl-C). `requested(step)` turns true at a step every process agrees on; the trainer
  then finishes that step, checkpoints it, waits for the save and returns, so the command exits 0.

  One process: Python signal handlers set a flag. Several processes (jax.distributed): JAX's preemption
  service catches SIGTERM itself and agrees a step across processes
  (`multihost_utils.reached_preemption_sync_point`); SIGINT is forwarded to it as a SIGTERM. A second
  Ctrl-C interrupts at once (KeyboardInterrupt), as usual.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}
    self._synced = False
    self._calls = 0

  def __enter__(self) -> "Preemption":
    if threading.current_thread() is not threading.main_thread():  # Signals reach the main thread only.
      return self
    if jax.distributed.is_initialized():  # JAX's preemption notifier owns SIGTERM (unless turned off).
      self._synced = bool(jax.config.jax_enable_preemption_service)
      if not self._synced and jax.process_count() > 1:
        raise ConfigError(f"jax_enable_preemption_service=False: with {jax.process_count()} processes a SIGTERM "
                          "to one could not stop all at the same step; leave it True (the default)")
    watched = (signal.SIGINT,) if self._synced else (signal.SIGTERM, signal.SIGINT)
    for sig in watched:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = name
    print(f"bigjax: {name} received: finishing the step in flight, then a checkpoint and exit "
          "(Ctrl-C again stops at once)", flush=True)
    if self._synced:  # Let JAX's preemption notifier agree a step with the other processes.
      os.kill(os.getpid(), signal.SIGTERM)

  def requested(self, step: int) -> bool:  # pylint: disable=unused-argument  (every process calls it once a step)
    if self._synced:
      # JAX's sync point is (the largest count any process had passed when the notice came) + 1, counted
      # from 0; a resumed run's first step would miss a notice that came during start-up, so pass the number
      # of calls, which every process makes once a step from the same restored step.
      self._calls += 1
      if multihost_utils.reached_preemption_sync_point(self._calls):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
