"""Model FLOPs against XLA's own count of the compiled program; device peaks; MFU arithmetic."""

import math
import re
import time
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from bigjax import config as config_lib
from bigjax import models
from bigjax import throughput
from bigjax.config import ConfigError, ModelConfig

_DOT = re.compile(r"stablehlo\.dot_general .*contracting_dims = \[([\d, ]*)\] x .*"
                  r": \(tensor<([^>]*)>, tensor<[^>]*>\) -> tensor<([^>]*)>")


def _dims(tensor_type: str) -> list[int]:
  return [int(s) for s in tensor_type.split("x")[:-1]]  # "2x128x256xf32" → [2, 128, 256].


def dot_flops(lowered) -> int:
  """2 × output elements × contracted size, summed over every dot_general of a lowered program."""
  total, found = 0, 0
  for line in lowered.as_text().splitlines():
    m = _DOT.search(line)
    if m:
      lhs, out = _dims(m.group(2)), _dims(m.group(3))
      contracted = [lhs[int(i)] for i in m.group(1).split(",")]
      total += 2 * math.prod(out) * math.prod(contracted)
      found += 1
  assert found, "no dot_general in the program: has the StableHLO text format changed?"
  return total


def lower(cfg: ModelConfig, batch: int, seq_len: int, target_len: int | None = None, *, grad: bool = False):
  """The jitted forward pass (or the gradient of a cross-entropy loss), lowered on abstract params."""
  module = models.build(cfg)
  ids = jnp.ones((batch, seq_len), jnp.int32)
  args = (ids,)
  if cfg.family == "encoder_decoder":
    args = (ids, jnp.ones((batch, target_len or seq_len), jnp.int32))
  params = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0), *args)["params"]))

  def forward(p, *a):
    return module.apply({"params": p}, *a)

  def loss(p, *a):
    logits = forward(p, *a)
    labels = jnp.zeros(logits.shape[:-1], jnp.int32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  return jax.jit(jax.grad(loss) if grad else forward).lower(params, *args)


TINY = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, d_ff=48, max_len=32)
# (config, seq_len, target_len): every family and every option that changes which matmuls run.
CASES = {
    "gpt2": (ModelConfig(**TINY), 16, None),
    "llama": (ModelConfig(**TINY, positions="rotary", norm="rmsnorm", activation="silu", gated_mlp=True,
                          use_bias=False, tie_embeddings=False, head_dim=12), 16, None),
    "llama_grouped_query": (ModelConfig(**TINY, positions="rotary", norm="rmsnorm", activation="silu",
                                        gated_mlp=True, use_bias=False, num_kv_heads=2), 16, None),
    "bert_mlm": (config_lib.preset("bert_tiny", **TINY), 16, None),
    "bert_mlm_untied": (config_lib.preset("bert_tiny", **TINY, tie_embeddings=False), 16, None),
    "bert_classifier": (config_lib.preset("bert_tiny", **TINY, encoder_head="classifier", num_labels=3), 16, None),
    "bert_none": (config_lib.preset("bert_tiny", **TINY, encoder_head="none"), 16, None),
    "t5": (config_lib.preset("t5_small", **TINY, head_dim=8, num_decoder_layers=3), 16, 8),
    "t5_v1_1": (config_lib.preset("t5_v1_1_small", **dict(TINY, num_heads=3), head_dim=16), 16, 24),
    "t5_same_length": (config_lib.preset("t5_small", **TINY), 16, None),
}


@pytest.mark.parametrize("name", CASES)
def test_forward_flops_equal_xla_matmuls(name):
  # Exact: our formula against the sum over the dot_general ops JAX actually emits for the model.
  cfg, seq_len, target_len = CASES[name]
  expected = dot_flops(lower(cfg, 3, seq_len, target_len))
  assert throughput.flops_per_step(cfg, 3, seq_len, target_len) / 3 == expected


@pytest.mark.parametrize("name", ["gpt2", "t5_v1_1", "bert_classifier"])
def test_training_step_is_three_forward_passes(name):
  # The gradient of a real loss runs each forward matmul twice more (input and weight gradients).
  cfg, seq_len, target_len = CASES[name]
  assert throughput.flops_per_step(cfg, 2, seq_len, target_len) == dot_flops(
      lower(cfg, 2, seq_len, target_len, grad=True))


WIDE = dict(vocab_size=1024, d_model=256, num_layers=2, num_heads=4, d_ff=1024, max_len=128)


@pytest.mark.parametrize("cfg,target_len", [
    (ModelConfig(**WIDE), None),
    (config_lib.preset("bert_mini", **WIDE, activation="gelu_tanh"), None),
    (config_lib.preset("t5_v1_1_small", **WIDE, head_dim=64), 64),
], ids=["decoder", "encoder", "encoder_decoder"])
def test_close_to_xla_cost_analysis(cfg, target_len):
  # XLA's cost analysis counts every op: element-wise work (norms, softmax, GELU, masks) adds ~1% at
  # d_model 256 and sequence 128, never less. (BERT's exact erf-GELU is a long polynomial in XLA,
  # ~4% here, hence the tanh GELU for this comparison.)
  ours = throughput.flops_per_step(cfg, 2, 128, target_len) / 3
  xla = lower(cfg, 2, 128, target_len).cost_analysis()["flops"]
  assert 1.0 <= xla / ours < 1.02


def test_gpt2_small_is_nanogpt_formula():
  cfg = config_lib.preset("gpt2_small")
  L, d, V, T = 12, 768, 50257, 1024
  # nanoGPT's estimate_mfu: 6N + 12·L·H·Q·T per token, H·Q = d, N = 12·L·d² + V·d matmul weights.
  assert throughput.flops_per_token(cfg, T) == 6 * (12 * L * d * d + V * d) + 12 * L * d * T == 854_438_400
  assert throughput.flops_per_step(cfg, 8, T) == 8 * T * 854_438_400
  # nanoGPT's N is every param but the position table, biases and norms included: exactly 6 × those
  # (which do no matmul work) above ours, 0.09% here.
  module = models.build(cfg)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))))
  leaves = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  n_nanogpt = sum(x.size for path, x in leaves if "position_embed" not in jax.tree_util.keystr(path))
  not_matmul = sum(x.size for path, x in leaves if path[-1].key in ("bias", "scale"))
  assert n_nanogpt == 123_653_376  # nanoGPT prints "number of parameters: 123.65M" for GPT-2 small.
  assert 6 * n_nanogpt + 12 * L * d * T - throughput.flops_per_token(cfg, T) == 6 * not_matmul == 6 * 121_344


def test_encoder_decoder_lengths():
  cfg = CASES["t5"][0]
  # target_len defaults to seq_len; a longer decoder costs more; flops_per_token divides by inputs only.
  assert throughput.flops_per_step(cfg, 4, 16) == throughput.flops_per_step(cfg, 4, 16, 16)
  assert throughput.flops_per_step(cfg, 4, 16, 32) > throughput.flops_per_step(cfg, 4, 16, 16)
  assert throughput.flops_per_token(cfg, 16, 8) == throughput.flops_per_step(cfg, 4, 16, 8) / (4 * 16)
  with pytest.raises(ConfigError, match="lengths must be positive"):
    throughput.flops_per_step(cfg, 4, 16, 0)


def fake(kind: str, platform: str = "gpu"):
  return SimpleNamespace(device_kind=kind, platform=platform)


@pytest.mark.parametrize("kind,dtype,tflops,name", [
    ("TPU v2", "bfloat16", 22.5, "TPU v2"),
    ("TPU v3", "float32", 61.5, "TPU v3"),  # f32 at default precision is one bf16 pass on TPU.
    ("TPU v4", "bfloat16", 275.0, "TPU v4"),
    ("TPU v5 lite", "bfloat16", 197.0, "TPU v5e"),
    ("TPU v5e", "bfloat16", 197.0, "TPU v5e"),
    ("TPU v5", "bfloat16", 459.0, "TPU v5p"),
    ("TPU v5p", "bfloat16", 459.0, "TPU v5p"),
    ("TPU v6 lite", "bfloat16", 918.0, "TPU v6e"),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0, "A100 80GB"),
    ("NVIDIA A100-PCIE-40GB", "float32", 156.0, "A100 40GB"),  # TF32.
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4, "H100 SXM"),
    ("NVIDIA H100 80GB HBM3", "float32", 494.7, "H100 SXM"),
    ("NVIDIA H100 PCIe", "bfloat16", 756.0, "H100 PCIe"),
    ("NVIDIA H200", "float16", 989.4, "H200 SXM"),
    ("NVIDIA GH200 480GB", "bfloat16", 989.4, "H200 SXM"),
    ("NVIDIA L4", "bfloat16", 121.0, "L4"),
    ("NVIDIA A10", "bfloat16", 125.0, "A10"),
    ("Tesla V100-SXM2-16GB", "float16", 125.0, "V100 SXM2"),
])
def test_peak_table_matches_device_kinds(kind, dtype, tflops, name):
  peak, source = throughput.peak_flops_per_device(fake(kind, "tpu" if "TPU" in kind else "gpu"), dtype)
  assert peak == tflops * 1e12 and source == f"{name} {dtype} table"


def test_unknown_kinds_and_missing_dtypes_are_measured(monkeypatch):
  calls = []
  monkeypatch.setattr(throughput, "_MEASURED", {})
  monkeypatch.setattr(throughput, "measure_matmul_peak", lambda dtype, device: calls.append(dtype) or 7e12)
  for kind, dtype in [("NVIDIA A10G", "bfloat16"), ("TPU v4 lite", "bfloat16"), ("TPU7x", "bfloat16"),
                      ("Tesla V100-SXM2-16GB", "bfloat16"), ("TPU v4", "float16")]:
    assert throughput.peak_flops_per_device(fake(kind), dtype) == (7e12, f"measured {dtype} jnp.dot on gpu")
  assert len(calls) == 5
  assert throughput.peak_flops_per_device(fake("NVIDIA A10G"), jnp.bfloat16)[0] == 7e12
  assert len(calls) == 5  # Cached per (platform, kind, dtype); dtypes may be given as jnp types.
  with pytest.raises(ConfigError, match="dtype='int8'"):
    throughput.peak_flops_per_device(fake("TPU v4"), "int8")


def test_cpu_peak_is_measured_once(monkeypatch):
  monkeypatch.setattr(throughput, "_MEASURED", {})
  t = time.perf_counter()
  peak, source = throughput.peak_flops_per_device(jax.devices("cpu")[0], "float32")
  first = time.perf_counter() - t
  assert source == "measured float32 jnp.dot on cpu"
  assert 1e8 < peak < 1e13, peak  # 0.1 GFLOP/s .. 10 TFLOP/s: any CPU this runs on.
  assert first < 5
  t = time.perf_counter()
  assert throughput.peak_flops_per_device(jax.devices("cpu")[0], "float32") == (peak, source)
  assert time.perf_counter() - t < 0.01


def test_mfu_and_throughput():
  # 8 devices with a 100 TFLOP/s peak; a step of 400 TFLOP in 2 s is 25 TFLOP/s per device, MFU 0.25.
  assert throughput.mfu(400e12, 2.0, 8, 100e12) == pytest.approx(0.25)
  meter = throughput.Throughput(flops_per_step=400e12, tokens_per_step=4096, num_devices=8,
                                peak_flops=100e12, peak_source="test")
  out = meter(steps=10, seconds=20.0)
  assert out == pytest.approx({"step_time_s": 2.0, "tokens_per_s": 2048.0, "tflops_per_device": 25.0,
                               "mfu": 0.25})


def test_throughput_create():
  cfg = config_lib.preset("gpt2_small", dtype="bfloat16")
  meter = throughput.Throughput.create(cfg, 32, 1024, devices=[fake("NVIDIA H100 80GB HBM3")] * 4)
  assert meter.flops_per_step == 32 * 1024 * 854_438_400 and meter.tokens_per_step == 32 * 1024
  assert meter.num_devices == 4 and meter.peak_flops == 989.4e12
  assert meter.peak_source == "H100 SXM bfloat16 table"  # The model's compute dtype.
  # At 40% MFU on 4 H100s a GPT-2 small step of 32 × 1024 tokens takes ~57 ms.
  seconds = 10 * meter.flops_per_step / (0.4 * 4 * 989.4e12)
  assert meter(10, seconds)["mfu"] == pytest.approx(0.4)
  assert "TFLOP per step" in meter.describe() and "× 4" in meter.describe()
