"""One table of accelerator facts: peak matmul FLOP/s and memory of one JAX device, per device kind,
and how TPU slice and GPU host names count devices. `bigjax.throughput` reads the peaks (MFU),
`bigjax.plan` the memory and the topology names. Nothing here imports JAX.

A *device* is one entry of `jax.devices()`: a TensorCore on TPU v2/v3 (two per chip, each its own
device), a whole chip on TPU v4 and v5p (megacore: the chip's two TensorCores act as one device) and on
v5e/v6e (one TensorCore per chip), one GPU on NVIDIA.

Peaks are dense (no structured sparsity) TFLOP/s keyed by the compute dtype: "float32" is the rate at
JAX's default matmul precision, which rounds f32 inputs to one bf16 pass on TPU (so it equals bf16) and
to TF32 on Ampere and newer NVIDIA GPUs (docs.jax.dev "Matmul precision": "bfloat16 on TPU, TF32 on
recent GPUs"). A dtype missing from a row is measured instead (`throughput.measure_matmul_peak`).
Sources: Google Cloud TPU system architecture pages ("peak compute per chip (bf16)", HBM per chip);
NVIDIA datasheets (dense tensor-core figures: the headline ones are with sparsity, 2x these).
"""

from __future__ import annotations

import dataclasses
import re

from bigjax.config import ConfigError

KiB, MiB, GiB = 2**10, 2**20, 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
  name: str  # What it is, in words.
  kind: str  # Regex searched case-insensitively in `device.device_kind`.
  memory: int  # Bytes of memory per device (0 = not tabled).
  peaks: dict  # {dtype: peak TFLOP/s of one device}.


# The first row whose `kind` matches wins, so more specific rows come first.
ACCELERATORS: tuple[Accelerator, ...] = (
    Accelerator("TPU v6e", r"tpu v6 ?(lite|e)\b", 32 * GiB, {"bfloat16": 918.0, "float32": 918.0}),
    Accelerator("TPU v5e", r"tpu v5 ?(lite|e)\b", 16 * GiB, {"bfloat16": 197.0, "float32": 197.0}),
    Accelerator("TPU v5p", r"tpu v5p?\b", 95 * GiB, {"bfloat16": 459.0, "float32": 459.0}),
    Accelerator("TPU v4", r"tpu v4\b(?! ?lite)", 32 * GiB, {"bfloat16": 275.0, "float32": 275.0}),
    # v3 and v2: 123 and 45 TFLOP/s, 32 and 16 GiB per chip of 2 TensorCores = 2 devices.
    Accelerator("TPU v3", r"tpu v3\b", 16 * GiB, {"bfloat16": 61.5, "float32": 61.5}),
    Accelerator("TPU v2", r"tpu v2\b", 8 * GiB, {"bfloat16": 22.5, "float32": 22.5}),
    Accelerator("H100 PCIe", r"h100.*pcie", 80 * GiB, {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    Accelerator("H100 NVL", r"h100.*nvl", 94 * 10**9, {"bfloat16": 835.0, "float16": 835.0, "float32": 417.5}),
    Accelerator("H200 NVL", r"h200.*nvl", 141 * 10**9, {"bfloat16": 835.0, "float16": 835.0, "float32": 417.5}),
    # H200 SXM and GH200 share the Hopper SXM figures: 989.4 bf16/fp16, 494.7 TF32. (Seen on an H200,
    # kind "NVIDIA H200", jax 0.11: an f32 jnp.dot ran at 367 TFLOP/s, i.e. TF32; 50 with "highest".)
    Accelerator("H200 SXM", r"h200", 141 * 10**9, {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    Accelerator("H100 SXM", r"h100", 80 * GiB, {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    # A100 SXM4 and PCIe: 312 bf16/fp16, 156 TF32; 40 GB or 80 GB (the kind string does not say which:
    # plans name it, `NxA100-80GB`).
    Accelerator("A100 80GB", r"a100.*80", 80 * GiB, {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    Accelerator("A100 40GB", r"a100", 40 * GiB, {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    Accelerator("A10", r"\ba10\b", 24 * GiB, {"bfloat16": 125.0, "float16": 125.0, "float32": 62.5}),  # Not A10G.
    Accelerator("L4", r"\bl4\b", 24 * GiB, {"bfloat16": 121.0, "float16": 121.0, "float32": 60.0}),
    # Volta has fp16 tensor cores only (no bf16, no TF32): bf16 is measured.
    Accelerator("V100 PCIe", r"v100.*pcie", 16 * GiB, {"float16": 112.0, "float32": 14.0}),
    Accelerator("V100 SXM2", r"v100", 16 * GiB, {"float16": 125.0, "float32": 15.7}),
)

# Slice and host names for `bigjax plan --topology`: TPU v4 and v5p slices count TensorCores (two per
# chip: v4-32 is 16 chips), v5e (v5litepod) and v6e slices count chips; GPU hosts are N x card.
TPU_SLICES = {  # name prefix: (accelerator, TensorCores counted per device)
    "v4": ("TPU v4", 2), "v5p": ("TPU v5p", 2), "v5e": ("TPU v5e", 1), "v5litepod": ("TPU v5e", 1),
    "v6e": ("TPU v6e", 1),
}
GPU_CARDS = {  # card name (lower case): accelerator
    "a100": "A100 40GB", "a100-40gb": "A100 40GB", "a100-80gb": "A100 80GB", "h100": "H100 SXM",
    "h100-80gb": "H100 SXM", "h200": "H200 SXM",
}
TOPOLOGY_HELP = ("v4-N or v5p-N (N TensorCores, 2 per chip: v4-32 = 16 chips), v5e-N, v5litepod-N or v6e-N "
                 "(N chips), NxA100, NxA100-80GB, NxH100 or NxH200 (N GPUs)")


def by_name(name: str) -> Accelerator:
  return next(a for a in ACCELERATORS if a.name == name)


def lookup(device_kind: str) -> Accelerator | None:
  """The row for a `device.device_kind` string, or None (CPUs, unknown kinds)."""
  return next((a for a in ACCELERATORS if re.search(a.kind, device_kind, re.IGNORECASE)), None)


def table_peak(device_kind: str, dtype_name: str) -> tuple[float, str] | None:
  """(FLOP/s, description) of one device of this kind for `dtype_name` matmuls, or None if not tabled."""
  row = lookup(device_kind)
  if row is None or dtype_name not in row.peaks:
    return None
  return row.peaks[dtype_name] * 1e12, f"{row.name} {dtype_name} table"


def topology(name: str) -> tuple[int, Accelerator, str]:
  """(devices, accelerator, description) of a slice or GPU host name such as v5p-128 or 8xH100."""
  text = name.strip().lower()
  tpu = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", text)
  if tpu:
    acc_name, cores = TPU_SLICES[tpu.group(1)]
    acc = by_name(acc_name)
    n = int(tpu.group(2))
    if n <= 0 or n % cores:
      raise ConfigError(f"--topology={name}: {tpu.group(1)} slices count TensorCores, {cores} per chip; "
                        f"use a multiple of {cores}")
    chips = n // cores
    counted = f" ({n} TensorCores)" if cores > 1 else ""
    return chips, acc, f"{name}: {chips} {acc.name} chips{counted}"
  gpu = re.fullmatch(r"(\d+)\s*x\s*([a-z0-9-]+)", text)
  if gpu and gpu.group(2) in GPU_CARDS and int(gpu.group(1)) > 0:
    acc = by_name(GPU_CARDS[gpu.group(2)])
    return int(gpu.group(1)), acc, f"{name}: {gpu.group(1)} x {acc.name}"
  raise ConfigError(f"--topology={name!r} is not a known topology; known: {TOPOLOGY_HELP}")
