"""The device mesh, the logical-axis rules, and the shardings of state and batch.

This is the only module that knows about meshes. Models name their axes logically (see
`bigjax.layers`); `RULES` maps those names onto the mesh axes `data`, `fsdp` and `tensor`:

* `data`   — pure data parallelism: the batch is split, params are replicated.
* `fsdp`   — the batch is split *and* params / optimizer state are sharded along `embed`.
* `tensor` — Megatron-style: heads, MLP hidden units and the vocabulary are split.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from bigjax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

RULES: tuple[tuple[str, object], ...] = (
    # Params.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("length", None),
    ("relpos", None),  # T5's relative-position buckets.
    ("labels", None),  # Classifier outputs.
    ("segments", None),  # BERT's token types.
    ("layers", None),  # The stacked axis of scanned blocks.
    # Activations.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def resolve_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """Fills a single -1 with the devices left over; checks that the product is `num_devices`."""
  shape = tuple(int(s) for s in shape)
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"mesh.shape={shape}: the fixed axes ({known} devices) do not divide the "
                        f"{num_devices} devices available")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ConfigError(f"mesh.shape={shape} has {math.prod(shape)} devices but {num_devices} are in use; "
                      f"the product of (data, fsdp, tensor) must be {num_devices} (or use -1 for one axis)")
  return shape  # type: ignore[return-value]


def make_mesh(shape: Sequence[int], num_devices: int = 0) -> Mesh:
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"mesh.num_devices={num_devices}: only {len(devices)} devices exist")
    devices = devices[:num_devices]
  shape = resolve_shape(shape, len(devices))
  try:
    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, AssertionError, NotImplementedError):
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, MESH_AXES)


def batch_divisor(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(global_batch: int, mesh: Mesh, process_count: int = 1) -> None:
  div = batch_divisor(mesh)
  if global_batch % div:
    raise ConfigError(f"data.batch_size={global_batch} does not divide over the data axes "
                      f"(data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {div}); "
                      f"use a multiple of {div}")
  if global_batch % process_count:
    raise ConfigError(f"data.batch_size={global_batch} does not divide over {process_count} processes")


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules=RULES):
  """NamedShardings for a tree whose leaves may be `nn.LogicalPartitioned` boxes (from eval_shape)."""
  specs = nn.get_partition_spec(abstract_boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Builds global arrays from this process's rows (multi-host: each host passes its own slice)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def check_divisible(abstract_tree, shardings, what: str = "param") -> None:
  """Every sharded dimension must divide evenly by its mesh axes; names the offender before compiling."""
  leaves = jax.tree_util.tree_leaves_with_path(unbox(abstract_tree))
  shard_leaves = jax.tree_util.tree_leaves(shardings)
  for (path, leaf), sharding in zip(leaves, shard_leaves):
    spec = sharding.spec
    for dim, axes in zip(leaf.shape, spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      size = math.prod(sharding.mesh.shape[a] for a in axes)
      if dim % size:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        raise ConfigError(f"{what} {name} has a dimension of {dim} that mesh axes {axes} (size {size}) do not "
                          f"divide; change mesh.shape or the model size so that {size} divides {dim}")


@contextlib.contextmanager
def activate(mesh: Mesh, rules=RULES):
  """The mesh and logical-axis rules in force while tracing, compiling and running steps."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def unbox(tree):
  """Strips logical-partitioning boxes (without adding sharding constraints: safe outside jit)."""
  return jax.tree_util.tree_map(
      lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
