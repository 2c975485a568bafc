"""The device mesh, the logical-axis rules, and the shardings of state and batch.

This is the only module that knows about meshes. Models name their axes logically (see
`bigjax.models.layers`); `RULES` maps those names onto the mesh axes `data`, `fsdp` and `tensor`:

* `data`   — pure data parallelism: the batch is split, params are replicated.
* `fsdp`   — the batch is split *and* params / optimizer state are sharded along `embed`.
* `tensor` — Megatron-style: heads, MLP hidden units and the vocabulary are split.

Multi-host: `initialize_distributed` joins the processes of a run (before any other JAX call; with no
flags JAX finds SLURM, Open MPI or Cloud TPU itself), `check_batch` makes sure that each process's devices
hold a share of the batch of its own, since every process reads only its rows of each global batch
(`bigjax.data.pipeline`), and `on_lost_process` ends the others in one line when one process dies mid-run.
Public JAX APIs only.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
import threading
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from bigjax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
HEARTBEAT_TIMEOUT_S = 100  # JAX's default: a process silent this long is lost, and JAX ends the others.
BATCH_AXES = ("data", "fsdp")

RULES: tuple[tuple[str, object], ...] = (
    # Params.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # Grouped-query attention's key/value heads (see fit_kv_heads).
    ("kv", None),
    ("lora_rank", None),  # LoRA's rank axis: a few columns, replicated.
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
    ("activation_kv_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def rules_for(overrides=()) -> tuple[tuple[str, object], ...]:
  """`RULES` with the config's `mesh.rules` applied: each (logical name, mesh axis | None | [axes]) pair
  replaces the default rule of that name, e.g. `(("embed", None),)` turns FSDP's param sharding off."""
  out = dict(RULES)
  for pair in overrides or ():
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
      raise ConfigError(f"mesh.rules: {pair!r} is not a (logical name, mesh axes) pair")
    name, axes = pair
    if name not in out:
      raise ConfigError(f"mesh.rules: {name!r} is not a logical axis the models use; known: {', '.join(out)}")
    listed = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    bad = [a for a in listed if a not in MESH_AXES]
    if bad:
      raise ConfigError(f"mesh.rules: {name!r} maps to {bad[0]!r}, not a mesh axis; allowed: "
                        f"{', '.join(MESH_AXES)} or None")
    out[name] = axes if axes is None or isinstance(axes, str) else tuple(axes)
  return tuple(out.items())


def fit_kv_heads(rules, mcfg, mesh) -> tuple[tuple[tuple[str, object], ...], str | None]:
  """`rules` for `mcfg` on `mesh`: grouped-query attention's key/value heads stay sharded like the query
  heads when the mesh axes they map to divide `mcfg.kv_heads`, and are replicated over them otherwise
  (each device then holds every key/value head: few, and small). Returns the rules and, when they changed,
  the start-up line that says so."""
  out = dict(rules)
  if mcfg.kv_heads == mcfg.num_heads or out.get("kv_heads") is None:
    return tuple(out.items()), None
  axes = (out["kv_heads"],) if isinstance(out["kv_heads"], str) else tuple(out["kv_heads"])
  size = math.prod(dict(mesh.shape)[a] for a in axes)
  if mcfg.kv_heads % size == 0:
    return tuple(out.items()), None
  out["kv_heads"] = out["activation_kv_heads"] = None
  return tuple(out.items()), (f"bigjax: model.num_kv_heads={mcfg.kv_heads} does not divide over mesh axes "
                              f"{'x'.join(axes)} ({size}): key/value heads are replicated there (query heads stay "
                              "sharded)")


def check_rules(abstract_boxed_tree, rules, what: str = "param") -> None:
  """Every logical axis name of the state has a rule: flax would silently replicate an unknown name."""
  known = {name for name, _ in rules}
  boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_boxed_tree, is_leaf=boxed):
    for name in getattr(leaf, "names", ()):
      if name is not None and name not in known:
        where = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        raise ConfigError(f"{what} {where} has the logical axis {name!r}, which no rule maps; add "
                          f"({name!r}, AXIS) to mesh.rules (axes: {', '.join(MESH_AXES)} or None)")


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
  """The (data, fsdp, tensor) mesh, laid onto the interconnect by `mesh_utils.create_device_mesh`.

  Where that cannot map the shape onto the devices' topology (a TPU slice used in part, a shape that
  would split a physical axis), the devices go in `jax.devices()` order: still correct, maybe slower
  collectives, so process 0 prints a line that says so and why."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"mesh.num_devices={num_devices}: only {len(devices)} devices exist")
    devices = devices[:num_devices]
  shape = resolve_shape(shape, len(devices))
  try:
    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, AssertionError, NotImplementedError) as e:
    arr = np.asarray(devices).reshape(shape)
    if jax.process_index() == 0:
      first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:200]
      print(f"bigjax: mesh {shape} over {len(devices)} {devices[0].platform} device(s) is in jax.devices() order, "
            f"not laid out for the interconnect: mesh_utils.create_device_mesh refused it ({type(e).__name__}"
            f"{': ' + first if first else ''}); collectives may be slower", flush=True)
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
  if process_count > 1:
    check_process_rows(global_batch, mesh, process_count)


def process_rows(global_batch: int, mesh: Mesh,
                 process_of: Callable[[jax.Device], int] = lambda d: d.process_index) -> dict[int, set[int]]:
  """The batch rows that each process's devices hold under `batch_sharding(mesh)`."""
  rows: dict[int, set[int]] = {}
  for device, index in batch_sharding(mesh).devices_indices_map((global_batch,)).items():
    rows.setdefault(process_of(device), set()).update(range(global_batch)[index[0]])
  return rows


def check_process_rows(global_batch: int, mesh: Mesh, process_count: int,
                       process_of: Callable[[jax.Device], int] = lambda d: d.process_index) -> None:
  """Each process reads B/P rows of every batch and builds the global array from them alone, so its
  devices must hold B/P rows that no other process holds; a mesh whose batch axes do not span the
  processes (the batch replicated across hosts) would silently train on a different batch."""
  rows = process_rows(global_batch, mesh, process_of)
  share = global_batch // process_count
  for p in range(process_count):
    if p not in rows:
      raise ConfigError(f"mesh.num_devices={mesh.devices.size} leaves out process {p}'s devices; every process "
                        "of a run needs devices in the mesh (mesh.num_devices=0 uses them all)")
  for p, held in sorted(rows.items()):
    others = set().union(*(r for q, r in rows.items() if q != p))
    if len(held) != share or held & others:
      raise ConfigError(
          f"mesh.shape={tuple(mesh.shape.values())}: process {p}'s devices hold {len(held)} of the "
          f"{global_batch} rows of a batch, but each of the {process_count} processes reads its own {share}; "
          f"make data x fsdp (now {batch_divisor(mesh)}) a multiple of the process count, {process_count}")


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


def batch_shards() -> int:
  """While tracing under `activate`: how many ways the mesh in force splits the batch (`batch_divisor`);
  1 with no mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty else batch_divisor(mesh)


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


# ------------------------------------------------------------------------------------ multi-host

def launcher_from_env(env: Mapping[str, str] | None = None) -> str | None:
  """The launcher whose variables are set, in words for the start-up line, or None.

  This only names it: `jax.distributed.initialize()` decides whether there is a cluster. JAX 0.10 tries, in
  this order, Open MPI's mpirun (OMPI_MCA_orte_hnp_uri), SLURM's srun (SLURM_JOB_ID, SLURM_STEP_NODELIST,
  SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID), Cloud TPU on GKE (TPU_PROCESS_ADDRESSES or
  TPU_WORKER_HOSTNAMES, TPU_WORKER_ID), a Cloud TPU VM (its GCE metadata server: nothing in the
  environment) and a Kubernetes Job (KUBERNETES_SERVICE_HOST, with the `kubernetes` package).
  """
  env = os.environ if env is None else env
  if "OMPI_MCA_orte_hnp_uri" in env:
    return f"Open MPI (OMPI_COMM_WORLD_SIZE={env.get('OMPI_COMM_WORLD_SIZE', '?')})"
  if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")):
    return f"SLURM job {env['SLURM_JOB_ID']} (SLURM_NTASKS={env['SLURM_NTASKS']})"
  name = next((k for k in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES") if k in env), None)
  if name:
    hosts = len([h for h in env[name].split(",") if h.strip()])
    slices = _int(env.get("MEGASCALE_NUM_SLICES", ""))
    return f"Cloud TPU on GKE ({name} lists {hosts} host{'s' * (hosts != 1)}" + \
        (f" x {slices} slices)" if slices > 1 else ")")
  if "KUBERNETES_SERVICE_HOST" in env:
    return "a Kubernetes Job (KUBERNETES_SERVICE_HOST)"
  return None


def _one_task(env: Mapping[str, str]) -> str | None:
  """A launcher that states a single task, in words: JAX would join a one-process cluster and, on GPUs, keep
  one device per task (SLURM_LOCALID), so such a run starts as the plain one process it is."""
  if "OMPI_MCA_orte_hnp_uri" in env and env.get("OMPI_COMM_WORLD_SIZE") == "1":
    return "Open MPI with OMPI_COMM_WORLD_SIZE=1"
  if "SLURM_STEP_NODELIST" in env and env.get("SLURM_NTASKS") == "1" and "OMPI_MCA_orte_hnp_uri" not in env:
    return f"SLURM job {env.get('SLURM_JOB_ID', '?')} with SLURM_NTASKS=1"
  return None


def _int(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    return 0


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, timeout_s: int = 300) -> str:
  """Joins this process to the others of its run; returns a line for the start-up log.

  Must run before any other JAX call (JAX fixes its device list when the backend starts). With all three
  arguments the run was launched by hand or by a launcher JAX does not know. With none,
  `jax.distributed.initialize()` looks for a cluster itself (SLURM, Open MPI, Cloud TPU, Kubernetes:
  `launcher_from_env`); when it finds none, this is one process, and the line says so.
  """
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  missing = [k for k, v in given.items() if v is None]
  if 0 < len(missing) < 3:
    raise ConfigError(f"{', '.join(k for k in given if k not in missing)} given without {', '.join(missing)}: a "
                      "multi-process run needs all three of --coordinator_address HOST:PORT, --num_processes N "
                      "and --process_id I (or none: one process, or SLURM, mpirun or Cloud TPU set them)")
  if missing:
    one = _one_task(os.environ)
    if one:
      return f"1 process (no --coordinator_address; {one}: no other process to join)"
    launcher = launcher_from_env()
    source = f"the environment of {launcher}" if launcher else "no flags (JAX's cluster detection)"
    joined = _join(source, f"not every process of {launcher or 'the cluster JAX detected'} joined within "
                   f"{timeout_s} s; check that each one runs the same bigjax train command", timeout_s, alone_ok=True)
    if not joined:
      seen = f"; {launcher} is named in the environment, but JAX found no cluster there" if launcher else ""
      return ("1 process (no --coordinator_address, and jax.distributed.initialize found no SLURM, Open MPI, "
              f"Cloud TPU or Kubernetes cluster{seen})")
    if launcher is None:  # Nothing in the environment: on TPU, the GCE metadata server named the workers.
      launcher = ("a Cloud TPU VM (workers from its GCE metadata)" if jax.devices()[0].platform == "tpu"
                  else "the cluster jax.distributed.initialize detected")
    return f"process {jax.process_index()} of {jax.process_count()}, launched by {launcher}"
  _check_flags(coordinator_address, num_processes, process_id)
  _join(f"--coordinator_address={coordinator_address} --num_processes={num_processes} --process_id={process_id}",
        f"not every process joined within {timeout_s} s; start all of them with the same --coordinator_address "
        "(process 0's host, reachable from the others) and --num_processes, each with its own --process_id",
        timeout_s, coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  if jax.process_count() != num_processes:  # JAX takes process 0's count and says nothing.
    raise ConfigError(f"--num_processes={num_processes}, but the coordinator at {coordinator_address} runs "
                      f"{jax.process_count()} processes (process 0's --num_processes); give every process the "
                      "same --num_processes")
  return f"process {process_id} of {num_processes}, coordinator {coordinator_address}"


def _check_flags(coordinator_address: str, num_processes: int, process_id: int) -> None:
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f"--coordinator_address={coordinator_address!r}: must be HOST:PORT (process 0's host "
                      "name or IP address and a free port, e.g. 10.0.0.2:1234)")
  if num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes}: must be at least 1")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id}: must be in [0, {num_processes}) for "
                      f"--num_processes={num_processes}")


def _join(source: str, on_timeout: str, timeout_s: int, *, alone_ok: bool = False, **kwargs) -> bool:
  """`jax.distributed.initialize(**kwargs)`, its failures as one line naming where its arguments came from.
  Returns False when `alone_ok` and JAX, given no arguments, found no cluster to join (one process).

  JAX aborts the process from C++ (a stack dump, no Python exception) when not every process registers in
  time: a missing process, a wrong address, two processes with one --process_id, a coordinator expecting
  more processes. A watchdog says so in one line and exits first, so JAX gets a little longer than `timeout_s`.
  """
  # CPU processes exchange arrays through gloo (JAX 0.10's default; older ones leave it unset). An explicit
  # choice (JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi) stands.
  if not jax.config.jax_cpu_collectives_implementation:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  watchdog = threading.Timer(timeout_s, _exit_with, (f"jax.distributed.initialize with {source}: {on_timeout}",))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s + 30,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  except Exception as e:  # pylint: disable=broad-except  (JAX raises ValueError, RuntimeError, XlaRuntimeError)
    if alone_ok and _no_cluster(e):
      return False
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    raise ConfigError(f"jax.distributed.initialize with {source} failed: {first[:300]}") from None
  finally:
    watchdog.cancel()
  return True


def _no_cluster(e: Exception) -> bool:
  """JAX's "found no cluster" (jax 0.10: `ValueError('coordinator_address should be defined.')`), as opposed to
  a cluster it found but could not join. Another wording in a later JAX fails loudly, never silently."""
  return (isinstance(e, ValueError) and "coordinator_address" in str(e) and not jax.distributed.is_initialized()
          and not os.environ.get("JAX_COORDINATOR_ADDRESS"))


def _exit_with(message: str) -> None:
  """Ends the process from the watchdog thread (the main thread is blocked inside JAX's C++)."""
  print(f"bigjax: error: {message}", file=sys.stderr, flush=True)
  os._exit(2)  # pylint: disable=protected-access


# ------------------------------------------------------------------------------ a process lost mid-run

# What a collective (gloo, NCCL) or the coordination service raises when a peer went away.
_PEER_LOST = re.compile(r"Connection (closed|reset) by peer|Broken pipe|remote process exited|"
                        r"stopped sending heartbeats|Failed to send RPC to coordination service")


@contextlib.contextmanager
def on_lost_process():
  """A process of the run that dies (SIGKILL, a crash, its host down) ends the others with one line naming it.

  JAX notices it in two ways, neither a plain Python error: a collective waiting on the dead process hangs
  until the coordination service misses its heartbeats (`HEARTBEAT_TIMEOUT_S`), and then, or at once when
  the coordinator itself is gone, JAX ends every other process from C++ with a multi-line status and a
  stack trace. So this process's stderr goes through `_STDERR_FILTER`, a small child process that passes
  everything on but turns that ending into one line; a collective that does raise (gloo: "Connection
  closed by peer") becomes one line here. Nothing is saved: no checkpoint can complete without the process.
  """
  if jax.process_count() == 1:
    yield
    return
  restore = _filter_stderr()
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if not _PEER_LOST.search(str(e)):
      raise
    me, count = jax.process_index(), jax.process_count()
    lost = (f"process 0 of {count}, the coordinator," if "coordination service" in str(e) else
            f"process {1 - me} of 2" if count == 2 else f"a process of the {count} (not {me})")
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:200]
    print(f"bigjax: error: {lost} was lost ({first}); {_AGAIN}", file=sys.stderr, flush=True)
    restore()
    os._exit(2)  # pylint: disable=protected-access  (JAX's shutdown would wait for the lost process)
  finally:
    restore()


_AGAIN = ("the others stop too. Start every process again with the same command: the run resumes from its last "
          "complete checkpoint")

# Run as `python -S -c _STDERR_FILTER PROCESS_ID PROCESS_COUNT HEARTBEAT_S` with this process's stderr as its
# stdin. Log lines of JAX's distributed runtime are held back for a second: if JAX's fatal "another task
# died" follows, they, the status and the stack trace become one line; else they pass unchanged.
_STDERR_FILTER = r"""
import os, re, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Signals are for the trainer: this ends when its stderr closes.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
me, count, heartbeat = sys.argv[1:4]
runtime = re.compile(rb"[IWEF]\d{4} [\d:.]+ +\d+ (coordination_service|coordination_service_agent|"
                     rb"preemption_sync_manager|client)\.(cc|h):\d+\]")
out, held, since, fatal, said, rest = sys.stdout.buffer, [], 0.0, None, False, b""

def lost(text):
  m = re.search(r"stopped sending heartbeats\):(.*?)(The tasks have|\[type|$)", text, re.S)
  ids = sorted({int(t) for t in re.findall(r"(?:task:)?(\d+)", m.group(1))}) if m else []
  if ids:
    return (f"process{'es' * (len(ids) > 1)} {', '.join(map(str, ids))} of {count} "
            f"{'were' if len(ids) > 1 else 'was'} lost (no heartbeat for {heartbeat} s: killed, crashed or its "
            "host unreachable)")
  if "leader task" in text or "Failed to send RPC to coordination service" in text:
    return f"process 0 of {count}, the coordinator, was lost or is unreachable"
  status = text.split("absl::Status:", 1)[-1].strip().splitlines()
  return f"JAX's distributed service stopped process {me} ({status[0][:200] if status else 'no status'})"

while True:
  wait = max(0.0, since + 1.0 - time.time()) if held and fatal is None else None
  if not select.select([0], [], [], wait)[0]:
    out.write(b"".join(held)); out.flush(); held = []
    continue
  chunk = os.read(0, 1 << 16)
  if not chunk:
    break
  *lines, rest = (rest + chunk).split(b"\n")
  for line in (l + b"\n" for l in lines):
    if fatal is not None:
      fatal.append(line)
      if b"*** Check failure stack trace" in line and not said:
        text = b"".join(fatal).decode(errors="replace")
        out.write(f"bigjax: error: {lost(text)}; AGAIN\n".encode()); out.flush(); said = True
    elif b"Terminating process because the JAX distributed service" in line:
      fatal, held = held + [line], []
    elif held or runtime.match(line):
      since = since if held else time.time()
      held.append(line)
    else:
      said = said or line.startswith(b"bigjax: error:")
      out.write(line); out.flush()
if fatal is not None and not said:
  out.write(f"bigjax: error: {lost(b''.join(fatal).decode(errors='replace'))}; AGAIN\n".encode())
out.write(b"".join(held) + rest); out.flush()
""".replace("AGAIN", _AGAIN)


def _filter_stderr() -> Callable[[], None]:
  """Points fd 2 at `_STDERR_FILTER`; returns the function that points it back and waits for the filter."""
  sys.stderr.flush()
  try:
    saved = os.dup(2)
  except OSError:  # No stderr to filter.
    return lambda: None
  read, write = os.pipe()
  try:
    child = subprocess.Popen(
        [sys.executable, "-S", "-c", _STDERR_FILTER, str(jax.process_index()), str(jax.process_count()),
         str(HEARTBEAT_TIMEOUT_S)], stdin=read, stdout=saved, stderr=saved, close_fds=True, start_new_session=True)
  except OSError:  # No interpreter to run it (an embedded Python): JAX's own ending stays as it is.
    os.close(read), os.close(write), os.close(saved)
    return lambda: None
  os.dup2(write, 2)
  os.close(read), os.close(write)
  done = []

  def restore() -> None:
    if done:
      return
    done.append(True)
    sys.stderr.flush()
    os.dup2(saved, 2)  # The filter sees the end of its input, passes on what it holds, and exits.
    os.close(saved)
    try:
      child.wait(timeout=5)
    except subprocess.TimeoutExpired:  # A child of ours still holds the old stderr: let the filter be.
      pass
  return restore
