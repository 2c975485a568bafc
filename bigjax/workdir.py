"""A run on disk: the one module that reads and writes a workdir.

  config.json      the resolved config of the latest start (a converted model: its model section and
                   `converted_from`); `read_config`, `run_config`, `check_pinned`, `tokenizer_name`
  metrics.jsonl    one JSON object a line, plus TensorBoard events (`MetricsWriter`)
  checkpoints/     Orbax checkpoints (`bigjax.checkpoint`); `latest_params` reads the params of the
                   newest complete one in any layer layout, onto any shardings
  *.json, *.png    written atomically (`write_json`, `write_text`, `write_bytes`): a reader never sees
                   half a file, and a failed write leaves the old one

Every command that reads a workdir (train's resume and `train.init_from`, eval, few-shot, decode,
convert) goes through here. TensorFlow is imported only by `MetricsWriter` (TensorBoard).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any, NamedTuple

from etils import epath
import ml_collections

from bigjax import config as config_lib
from bigjax.config import ConfigError, ModelConfig

CONFIG = "config.json"
METRICS = "metrics.jsonl"

# Settings that fix what a workdir holds: a resumed run must not change them.
PINNED = ("model", "data.tokenizer", "data.source", "data.text_key", "data.target_key", "data.labels",
          "data.objective", "data.seq_len", "data.target_len", "data.pack", "data.batch_size", "train.seed",
          "optim.decay_steps", "optim.name",  # The optimizer's state has its shape in the checkpoints.
          "train.lora_rank", "train.lora_alpha", "train.lora_targets",  # So do the adapters, and their merge.
          "train.prune", "train.prune_sparsity", "train.prune_scope", "train.prune_n_m", "train.prune_start",
          "train.prune_end", "train.prune_every", "train.prune_targets")  # And the masks and their schedule.


def log(msg: str) -> None:
  """The run's console line: printed by process 0 only (every process runs the same command)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(msg, flush=True)


def path(workdir) -> epath.Path:
  """The workdir as an epath; a relative local path is made absolute (Orbax needs absolute paths)."""
  return epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))


# ---------------------------------------------------------------------------------- atomic writes

def write_bytes(file: epath.Path, data: bytes) -> None:
  """Writes `file` through a temporary file beside it and a rename: readers see the old or the new."""
  file = epath.Path(file)
  tmp = file.parent / f".{file.name}.tmp-{os.getpid()}"
  try:
    tmp.write_bytes(data)
    tmp.replace(file)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def write_text(file: epath.Path, text: str) -> None:
  write_bytes(file, text.encode("utf-8"))


def write_json(file: epath.Path, obj: Any) -> None:
  write_text(file, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def check_writable(workdir: epath.Path) -> None:
  """A workdir on a read-only or full disk is refused before anything runs (one line)."""
  from bigjax.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_probe.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise CheckpointError(f"--workdir={workdir} is not writable ({e.strerror or e}); "
                      "choose a directory on a writable disk with free space") from None


# ---------------------------------------------------------------------------------- config.json

def read_config(workdir, setting: str = "--workdir") -> dict | None:
  """The saved config.json as a dict, or None when there is none. Unreadable: one line, nothing touched."""
  file = path(workdir) / CONFIG
  if not file.exists():
    return None
  try:
    return json.loads(file.read_text())
  except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"{setting}={workdir}: {CONFIG} is unreadable ({e}); move it aside or use a new "
                      "workdir") from None


def require_config(workdir, setting: str = "--workdir") -> dict:
  saved = read_config(workdir, setting)
  if saved is None:
    raise ConfigError(f"{setting}={workdir}: no {CONFIG}, so not a bigjax workdir (train one with bigjax train "
                      "--workdir DIR, or bigjax convert --from_hf HF_DIR --workdir DIR)")
  return saved


def is_converted(saved: dict) -> bool:
  """A workdir `bigjax convert --from_hf` wrote: params and a model, no run (no task, no tokenizer of ours)."""
  return "converted_from" in saved


def run_config(saved: dict) -> ml_collections.ConfigDict:
  """A saved config over today's defaults: settings it predates keep their defaults."""
  config = config_lib.default_config()

  def merge(node, values):
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
        merge(node[key], value)
      elif key in node:
        node[key] = value
  merge(config, {k: v for k, v in saved.items() if k in config})
  return config


def load_run(workdir, purpose: str) -> ml_collections.ConfigDict:
  """The resolved config of a training run in `workdir`; a converted model (no task) is refused for
  `purpose` (e.g. "to evaluate")."""
  saved = require_config(workdir)
  if is_converted(saved):
    raise ConfigError(f"--workdir={workdir} holds a model converted from {saved['converted_from']}, not a run: "
                      f"it has no task {purpose}; fine-tune it with --config.train.init_from and use that run")
  return run_config(saved)


def model_config(saved: dict) -> ModelConfig:
  return config_lib.model_config(run_config(saved))


def tokenizer_name(saved: dict) -> str:
  """The tokenizer a workdir's model reads ("" for a converted Hugging Face model: none of ours)."""
  return "" if is_converted(saved) else saved.get("data", {}).get("tokenizer", "")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def check_pinned(workdir, config: ml_collections.ConfigDict, saved: dict | None) -> None:
  """Refuses to resume a workdir whose run has another shape (any `PINNED` setting changed)."""
  if saved is None:
    return
  if is_converted(saved):
    raise ConfigError(f"--workdir={workdir} holds a model converted from {saved['converted_from']}, not a run; "
                      f"train in a new --workdir with --config.train.init_from={workdir}")
  # Both as today's code writes them (an older config.json: its model resolved, its horizon filled in).
  new_flat, old_flat = _flat(json.loads(config.to_json_best_effort())), _flat(config_lib.resolve_saved(saved))
  # A setting the saved config predates had its default then.
  defaults = _flat(json.loads(config_lib.default_config().to_json_best_effort()))
  for key in sorted(set(new_flat) | set(old_flat)):
    if any(key == p or key.startswith(p + ".") for p in PINNED):
      if new_flat.get(key) != old_flat.get(key, defaults.get(key)):
        raise ConfigError(
            f"--workdir={workdir} holds a run with {key}={old_flat.get(key)!r}, but this config has "
            f"{key}={new_flat.get(key)!r}; use a new --workdir (or start from it with train.init_from)")


# ---------------------------------------------------------------------------------- metrics

def _logged_step(line: str) -> float:
  """The step of a metrics.jsonl line; inf for a line cut short by a kill (dropped on resume)."""
  try:
    return json.loads(line)["step"]
  except (json.JSONDecodeError, KeyError, TypeError):
    return math.inf


class MetricsWriter:
  """metrics.jsonl (one JSON object a line) and TensorBoard events; only the writing process (0) writes.

  A run resumed at step k first drops the lines of steps after k (logged by a run that stopped before
  it checkpointed them), so each step has one line, from the run whose state went on."""

  def __init__(self, workdir, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    if self.enabled:
      # TensorBoard's own record format and protos, written through epath (no TensorFlow to import).
      from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
      from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
      self._event, self._summary = event_pb2.Event, summary_pb2.Summary
      root = path(workdir)
      file = root / METRICS
      if file.exists():
        lines = file.read_text().splitlines(keepends=True)
        kept = [l for l in lines if _logged_step(l) <= resume_step]
        if len(kept) != len(lines):
          write_text(file, "".join(kept))
      self._file = file.open("a")
      events = root / "tensorboard" / f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}"
      events.parent.mkdir(parents=True, exist_ok=True)
      self._tb = record_writer.RecordWriter(events.open("wb"))
      self._tb.write(self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    self._file.flush()
    scalars = [self._summary.Value(tag=f"{split}/{k}", simple_value=float(v)) for k, v in values.items()]
    event = self._event(wall_time=time.time(), step=step, summary=self._summary(value=scalars))
    self._tb.write(event.SerializeToString())
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()


# ---------------------------------------------------------------------------------- params

class Restored(NamedTuple):
  params: Any  # In the caller's layer layout, on the caller's shardings (or this process's first device).
  step: int  # The checkpoint they came from.
  model_config: ModelConfig  # The workdir's own model (which may differ from the caller's in layout only).
  saved: dict  # Its config.json.
  fresh: list[str]  # subset=True: the caller's parameters the checkpoint lacks (left out of `params`).
  unused: list[str]  # subset=True: the checkpoint's parameters the caller's model lacks.


def require_new_dir(out, what: str) -> epath.Path:
  """`out` as a path, or a ConfigError when it exists with anything in it: `what` (e.g. "export") writes only
  into a new or empty directory, so nothing already written is overwritten."""
  target = epath.Path(out)
  if target.exists() and any(target.iterdir()):
    raise ConfigError(f"--out={out} exists and is not empty; {what} into a new directory (nothing is overwritten)")
  return target


def latest_params(workdir, model_config: ModelConfig | None = None, shardings=None, *, subset: bool = False,
                  setting: str = "--workdir") -> Restored:
  """The params of `workdir`'s newest complete checkpoint, as `model_config` (default: the workdir's own
  model) lays them out — scanned or not, whichever layout was saved — on `shardings` (a tree of
  `jax.sharding.Sharding` like the params; default: this process's first device).

  Only params are read (no optimizer state); each array straight into its sharding when the layouts
  agree, else whole on one device, converted (`models.to_layout`) and then placed. Stored shapes are
  checked against `model_config`'s first: a mismatch is a one-line error naming the parameter. Every
  parameter must be there, and nothing else, unless `subset` (fine-tuning from another model: a new
  head): then the parameters both have are returned (flat names in `fresh` / `unused` for the rest).
  A LoRA run's checkpoint (`train.lora_rank` in its config) is read with its adapters and returned with
  them merged into the kernels (`bigjax.lora.merge`): every reader sees the fine-tuned model.
  """
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from bigjax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from bigjax import steps  # pylint: disable=g-import-not-at-top
  from bigjax.models import layout  # pylint: disable=g-import-not-at-top
  flat = lambda tree: flax.traverse_util.flatten_dict(tree, sep="/")
  unflat = lambda d: flax.traverse_util.unflatten_dict(d, sep="/")
  root = path(workdir)
  saved = require_config(root, setting)
  from bigjax import lora as lora_lib  # pylint: disable=g-import-not-at-top
  run = run_config(saved)
  theirs = config_lib.model_config(run)
  mcfg = model_config or theirs
  adapters = lora_lib.spec(run)  # A LoRA run's: read with them, returned merged.
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # Each process reads its own copy.
  ckpt = ckpt_lib.Checkpointer(str(root), read_only=True)
  try:
    step = ckpt.latest_step() if ckpt.directory.exists() else None
    if step is None:
      partial = f" (only incomplete saves: {', '.join(ckpt.incomplete)})" if ckpt.incomplete else ""
      raise ConfigError(f"{setting}={workdir}: no complete checkpoint{partial}")
    where = ckpt.directory / str(step)
    stored = ckpt.param_metadata(step)
    same_layout = layout.is_scanned(stored) == mcfg.scan_layers
    if not same_layout:  # Restore whole on one device and convert: then the names and shapes compare.
      whole = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), stored)
      stored = layout.to_layout(mcfg, jax.device_get(ckpt.restore_params(step, whole)))
    ours, stored_flat = flat(steps.abstract_params(mcfg, lora=adapters)), flat(stored)
    for name, leaf in ours.items():
      if name in stored_flat and tuple(stored_flat[name].shape) != tuple(leaf.shape):
        raise ConfigError(f"{setting}={workdir}: checkpoint {where} holds {name} of shape "
                          f"{tuple(stored_flat[name].shape)}, but the model here ({mcfg.family}) has "
                          f"{tuple(leaf.shape)}: the checkpoint is of another model")
    fresh = [n for n in ours if n not in stored_flat]
    unused = [n for n in stored_flat if n not in ours]
    if not subset and (fresh or unused):
      name, what = (fresh[0], "lacks") if fresh else (unused[0], "holds")
      raise ConfigError(f"{setting}={workdir}: checkpoint {where} {what} {name} ({len(fresh)} missing, "
                        f"{len(unused)} unknown parameters): the checkpoint is of another model")
    common = [n for n in ours if n in stored_flat]
    if subset and not common:
      raise ConfigError(f"{setting}={workdir}: no parameter there has a name used here "
                        f"(here: {', '.join(list(ours)[:3])}, ...)")
    sh = flat(shardings) if shardings is not None else {n: here for n in ours}
    placed = sh
    if adapters is not None:  # Merged on one device, then placed.
      sh = {n: here for n in ours}
    if same_layout:  # Read just these parameters, each straight into its sharding.
      target = {n: jax.ShapeDtypeStruct(ours[n].shape, ours[n].dtype, sharding=sh[n]) for n in common}
      params = ckpt.restore_params(step, unflat(target))
    else:
      params = unflat({n: jax.device_put(stored_flat[n].astype(ours[n].dtype), sh[n]) for n in common})
  finally:
    ckpt.close()
  if adapters is not None:
    params = flat(lora_lib.merge(params, adapters))
    params = unflat({n: jax.device_put(v, placed.get(n, here)) for n, v in params.items()})
    fresh, unused = ([n for n in names if not lora_lib.is_adapter(n)] for names in (fresh, unused))
  return Restored(params, step, theirs, saved, fresh, unused)
