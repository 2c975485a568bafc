"""Model FLOPs, accelerator peaks, and MFU: what a training log line reports besides the loss.

`flops_per_step(mcfg, batch, seq_len)` counts the matmul FLOPs of one training step from the
architecture alone; `peak_flops_per_device()` says what one device could do at best (a vendor figure
for known TPUs and NVIDIA GPUs, else a measured `jnp.dot`); `Throughput` turns (steps, seconds) into
tokens/s, TFLOP/s per device and MFU, once per log line:

  meter = throughput.Throughput.create(mcfg, batch_size, seq_len, target_len)  # Once, before the loop.
  meter(steps, seconds)  # {"step_time_s", "tokens_per_s", "tflops_per_device", "mfu"}, every log line.

MFU (model FLOPs utilisation; PaLM, Chowdhery et al. 2022, appendix B) counts the FLOPs the model
needs, not those the hardware ran: rematerialisation's recomputation is not counted. Padding is:
padded positions go through every matmul like real tokens. (XLA's compiled cost analysis is no
substitute for `flops_per_step` on GPUs: it leaves out the cuBLAS calls, reading 0.38× of this count
for a GPT-2 small step on an H200.)
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigjax import devices
from bigjax.config import ConfigError, ModelConfig
from bigjax.models import layers

# ------------------------------------------------------------------------------------ model FLOPs


def forward_flops_per_example(mcfg: ModelConfig, seq_len: int, target_len: int | None = None) -> float:
  """Matmul FLOPs of one example's forward pass (2 per multiply-add); see `flops_per_step`."""
  if seq_len <= 0 or (target_len is not None and target_len <= 0):
    raise ConfigError(f"seq_len={seq_len}, target_len={target_len}: lengths must be positive")
  d, inner, vocab = mcfg.d_model, mcfg.num_heads * mcfg.kv_dim, mcfg.vocab_size
  proj = d * inner  # One of the query, key, value, output projections.
  mlp = (3 if mcfg.gated_mlp else 2) * d * mcfg.d_ff  # wi (wi_0, wi_1 when gated) and wo.

  def attention(q_len: int, kv_len: int) -> int:  # Scores q·k and the weighted sum of values.
    return 2 * 2 * q_len * kv_len * inner

  kv_proj = d * mcfg.kv_heads * mcfg.kv_dim  # Key or value: fewer heads under grouped-query attention.

  def block(n: int) -> int:  # Self-attention and MLP of one layer over n tokens.
    return 2 * n * (2 * proj + 2 * kv_proj + mlp) + attention(n, n)

  if mcfg.family == "decoder":
    return mcfg.num_layers * block(seq_len) + 2 * seq_len * d * vocab
  if mcfg.family == "encoder":
    flops = mcfg.num_layers * block(seq_len)
    if mcfg.encoder_head == "mlm":  # Transform (dense d→d) then the output layer, at every position.
      flops += 2 * seq_len * (d * d + d * vocab)
    elif mcfg.encoder_head == "classifier":  # Pooler and classifier on the first token only.
      flops += 2 * (d * d + d * mcfg.num_labels)
    return flops
  # encoder_decoder: the decoder's cross-attention projects queries (and outputs) on its target_len
  # tokens but keys and values on the encoder's seq_len outputs, in every decoder layer.
  t = seq_len if target_len is None else target_len
  cross = 2 * t * 2 * proj + 2 * seq_len * 2 * proj + attention(t, seq_len)
  return (mcfg.num_layers * block(seq_len) + mcfg.decoder_layers * (block(t) + cross)
          + 2 * t * d * vocab)


def flops_per_step(mcfg: ModelConfig, batch_size: int, seq_len: int, target_len: int | None = None) -> float:
  """Training FLOPs of one optimizer step: 3 × the forward matmuls (backward = 2 × forward).

  Forward, per token and layer: 2 FLOPs per weight of every parameter matmul (query, key, value and
  output projections; the MLP's 2 matrices, 3 when gated; cross-attention's 4 in a T5 decoder), and
  2 × 2 × q_len × kv_len × heads × head_dim per sequence for the score and value matmuls of attention,
  counting the full q_len × kv_len square even where a causal mask makes half of it unused (as
  nanoGPT's `estimate_mfu` and PaLM's MFU do). Once per token at the top: the output layer (d_model ×
  vocab, tied or not), and BERT's MLM transform (d_model × d_model); a classifier head (pooler and
  classifier) once per sequence. Lookup-only tables (token embeddings as input, learned positions,
  segment embeddings, T5's relative-position bias) and element-wise work (norms, activations,
  softmax, biases) are not counted: XLA's cost analysis puts them at ~1% more at d_model 256, less as
  models widen (~4% with BERT's exact GELU, whose erf XLA expands into a polynomial).

  For a GPT this is nanoGPT's `6N + 12·L·H·Q·T` per token, with N the matmul weights (12·L·d² + V·d at
  d_ff = 4·d): 6·N is the per-token forward-and-backward cost of the weights, 12·L·H·Q·T that of
  attention (H heads of width Q over T tokens).

  For `encoder_decoder` the encoder reads `seq_len` tokens and the decoder `target_len` (default
  `seq_len`): decoder self-attention is target_len², cross-attention target_len × seq_len.
  """
  return 3.0 * batch_size * forward_flops_per_example(mcfg, seq_len, target_len)


def flops_per_token(mcfg: ModelConfig, seq_len: int, target_len: int | None = None) -> float:
  """Training FLOPs per input token: `flops_per_step / (batch_size * seq_len)`.

  Tokens are counted as the trainer counts them, batch × seq_len for every family: for an
  encoder-decoder that is the encoder's inputs (T5's convention), the decoder's targets not added,
  though their FLOPs are in the numerator.
  """
  return 3.0 * forward_flops_per_example(mcfg, seq_len, target_len) / seq_len


# ---------------------------------------------------------------------------------- device peaks

_MEASURED: dict[tuple[str, str, str], float] = {}  # (platform, device_kind, dtype) → FLOP/s.


def _dtype_name(dtype: Any) -> str:
  name = jnp.dtype(dtype).name
  if name not in ("float32", "bfloat16", "float16"):
    raise ConfigError(f"dtype={name!r}: peaks are for float32, bfloat16 or float16 matmuls")
  return name


def table_peak(device_kind: str, dtype: Any = "float32") -> tuple[float, str] | None:
  """(FLOP/s, description) from the table in `bigjax.devices` for a `device.device_kind`, or None."""
  return devices.table_peak(device_kind, _dtype_name(dtype))


def measure_matmul_peak(dtype: Any = "float32", device: Any = None, *, size: int = 0,
                        repeats: int = 200, budget_s: float = 0.5) -> float:
  """FLOP/s of a jitted square `jnp.dot` of `dtype` on `device`: the best of up to `repeats` timed runs
  after a warm-up, stopping once `budget_s` is spent (the best run is the one least disturbed by other
  work on the machine). `size` 0 picks, on CPU, the fastest size per FLOP measured on a 2-core machine
  (512 for float32: 0.30 TFLOP/s; 1024 for bf16: 1.6, where 512 gave 1.0) and 8192 on accelerators
  (large enough that launch overhead is noise). bfloat16/float16 are multiplied as the models multiply
  them (`bigjax.models.layers.dot_general`): float32 accumulation and result, which is also the fast path
  of XLA's CPU runtime on AMX/AVX512-BF16 CPUs."""
  dtype = _dtype_name(dtype)
  device = device or jax.devices()[0]
  low = jnp.dtype(dtype) in layers.LOW_PRECISION
  n = size or ((1024 if low else 512) if device.platform == "cpu" else 8192)
  # Random, not constant, data: GPUs multiply zeros and ones faster (less switching power).
  x = np.random.default_rng(0).standard_normal((n, n), np.float32).astype(jnp.dtype(dtype))
  x = jax.device_put(x, device)
  dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32 if low else None))
  dot(x, x).block_until_ready()  # Compile and warm up.
  best, start = float("inf"), time.perf_counter()
  for _ in range(repeats):
    t = time.perf_counter()
    dot(x, x).block_until_ready()
    best = min(best, time.perf_counter() - t)
    if time.perf_counter() - start > budget_s:
      break
  return 2.0 * n ** 3 / best


def peak_flops_per_device(device: Any = None, dtype: Any = "float32") -> tuple[float, str]:
  """(peak FLOP/s of one device for `dtype` matmuls, where the figure came from).

  Known TPUs and NVIDIA GPUs read the table in `bigjax.devices`; anything else (CPUs, unknown kinds) is measured once
  per process with `measure_matmul_peak` and cached per (platform, device kind, dtype). A measured peak
  is what XLA attains, below the vendor's figure (on an H200: 684 of 989 TFLOP/s bf16), so MFU against
  it reads higher than MFU against a table figure would.
  """
  device = device or jax.devices()[0]
  dtype = _dtype_name(dtype)
  found = table_peak(device.device_kind, dtype)
  if found is not None:
    return found
  key = (device.platform, device.device_kind, dtype)
  if key not in _MEASURED:
    _MEASURED[key] = measure_matmul_peak(dtype, device)
  return _MEASURED[key], f"measured {dtype} jnp.dot on {device.platform}"


# ------------------------------------------------------------------------------------ utilisation


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak: float) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s per device over the device's peak FLOP/s."""
  return flops_per_step / step_seconds / num_devices / peak


@dataclasses.dataclass(frozen=True)
class Throughput:
  """Everything a log line needs to turn (steps, seconds) into speed; build once with `create`."""

  flops_per_step: float  # Model FLOPs of one training step (all devices together).
  tokens_per_step: int  # batch × seq_len, the input tokens, for every family (see `flops_per_token`).
  num_devices: int  # Devices the step runs on.
  peak_flops: float  # Peak FLOP/s of one device.
  peak_source: str  # Where peak_flops came from ("H100 SXM bfloat16 table", "measured ...").

  @classmethod
  def create(cls, mcfg: ModelConfig, batch_size: int, seq_len: int, target_len: int | None = None,
             devices: Sequence[Any] | None = None, dtype: Any = None) -> "Throughput":
    """For a global batch of `batch_size` on `devices` (default all), at `dtype` (default mcfg.dtype)."""
    devices = list(devices) if devices is not None else jax.devices()
    peak, source = peak_flops_per_device(devices[0], dtype or mcfg.dtype)
    return cls(flops_per_step(mcfg, batch_size, seq_len, target_len),
               batch_size * seq_len, len(devices), peak, source)

  def __call__(self, steps: int, seconds: float) -> dict[str, float]:
    """{"step_time_s", "tokens_per_s", "tflops_per_device", "mfu"} over `steps` steps in `seconds`."""
    step_time = seconds / steps
    return {"step_time_s": step_time,
            "tokens_per_s": self.tokens_per_step / step_time,
            "tflops_per_device": self.flops_per_step / step_time / self.num_devices / 1e12,
            "mfu": mfu(self.flops_per_step, step_time, self.num_devices, self.peak_flops)}

  def describe(self) -> str:
    """One line for the start of a run: the model's FLOPs per step and the peak MFU is relative to."""
    return (f"{self.flops_per_step / 1e12:.4g} TFLOP per step; peak {self.peak_flops / 1e12:.4g} TFLOP/s "
            f"per device ({self.peak_source}) × {self.num_devices}")
