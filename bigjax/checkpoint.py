"""Orbax checkpoints: the train state, sharded, plus a JSON record of the config and data position.

Layout: `WORKDIR/checkpoints/<step>/{state,meta}`. Saves are asynchronous (training goes on while
the previous checkpoint is written) and atomic (Orbax finalises a step directory only when it is
complete, so a killed save never replaces the previous checkpoint). Restores read each array
straight into its target sharding, so a checkpoint restores on any mesh. No pickle is involved.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    # Orbax needs absolute paths; a relative local workdir is relative to where the command runs.
    workdir = str(workdir) if "://" in str(workdir) else os.path.abspath(workdir)
    self.directory = epath.Path(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abstract_state):
    """`abstract_state`: a tree of jax.ShapeDtypeStruct carrying the target shardings."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def param_metadata(self, step: int) -> dict:
    """The stored params' tree of Orbax array metadata (shape, dtype), read without loading them."""
    meta = ocp.PyTreeCheckpointHandler().metadata(self.directory / str(step) / "state")
    return dict(meta.tree)["params"]

  def restore_params(self, step: int, abstract_params):
    """Only the params (or the subset `abstract_params` names) of a checkpoint, nothing else loaded.

    `abstract_params` is a tree of jax.ShapeDtypeStruct with shardings, or the metadata tree of
    `param_metadata` (then each array is restored whole, on this process's first device)."""
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # Each process reads its own copy.
    target = jax.tree_util.tree_map(
        lambda m: m if isinstance(m, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
        abstract_params)
    out = ocp.PyTreeCheckpointer().restore(self.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
        item={"params": target}, partial_restore=True))
    return out["params"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_with_shardings(tree, shardings):
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
