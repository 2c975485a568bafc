r"""Compile time of the train step: `model.scan_layers` against the unrolled stack, by depth.

  python experiments/benchmarks/compile.py                      # decoder, 12 / 24 / 48 layers
  python experiments/benchmarks/compile.py --layers 12,24 --families decoder,encoder_decoder

For each family and depth the same model (d_model 128, 4 heads, seq 64, batch 4, vocab 1024: compile time
grows with the number of operations, not their width) is built twice, with its blocks unrolled
(`block_0 ... block_{L-1}`) and under `nn.scan` (one block, params stacked on a `layers` axis). The whole
jitted train step (`bigjax.steps.make_train_step`, AdamW, clipping) is traced, lowered and compiled for a
concrete batch with JAX's persistent compilation cache off, so every figure is a real compilation on this
machine with XLA's default flags; `trace+lower` and `compile` are reported apart, and one step is run after
to show the step time each layout pays. The last line is one JSON list of {"family", "layers",
"scan_layers", "trace_lower_s", "compile_s", "step_s"}.
"""

from __future__ import annotations

import argparse
import json
import time


def measure(family: str, layers: int, scan: bool) -> dict:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from bigjax import config as config_lib, models, optim, steps  # pylint: disable=g-import-not-at-top
  config = config_lib.default_config()
  m = config.model
  m.family, m.num_layers, m.d_model, m.num_heads, m.d_ff, m.vocab_size, m.max_len = (
      family, layers, 128, 4, 512, 1024, 64)
  m.scan_layers, m.dropout_rate = scan, 0.0
  if family == "encoder_decoder":
    m.decoder_layers, m.norm, m.positions, m.tie_embeddings = layers, "rmsnorm", "relative", False
  config.train.steps, config.optim.warmup_steps, config.data.seq_len = 1000, 10, 64
  cfg = config_lib.validate(config)
  module, tx = models.build(cfg), optim.make(config)
  params = jax.jit(lambda: nn.meta.unbox(steps.init_params(module, jax.random.PRNGKey(0))))()
  state = steps.TrainState(jnp.zeros([], jnp.int32), params, tx.init(params))
  rng = np.random.default_rng(0)
  batch_size, seq = 4, 64
  ids = lambda n: jnp.asarray(rng.integers(3, 1024, (batch_size, n)), jnp.int32)
  if family == "encoder_decoder":
    batch = {"inputs": ids(seq), "decoder_input_ids": ids(seq // 4), "targets": ids(seq // 4),
             "weights": jnp.ones((batch_size, seq // 4), jnp.float32)}
  else:
    batch = {"inputs": ids(seq), "targets": ids(seq), "weights": jnp.ones((batch_size, seq), jnp.float32)}
  step = jax.jit(steps.make_train_step(module, tx, optim.schedule(config), 0))
  t0 = time.perf_counter()
  lowered = step.trace(state, batch).lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  jax.block_until_ready(compiled(state, batch))  # The first run pays one-time allocation.
  t3 = time.perf_counter()
  jax.block_until_ready(compiled(state, batch))
  t4 = time.perf_counter()
  return {"family": family, "layers": layers, "scan_layers": scan, "trace_lower_s": round(t1 - t0, 2),
          "compile_s": round(t2 - t1, 2), "step_s": round(t4 - t3, 4)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--layers", default="12,24,48")
  ap.add_argument("--families", default="decoder")
  args = ap.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_compilation_cache", False)
  rows = []
  for family in args.families.split(","):
    for layers in map(int, args.layers.split(",")):
      pair = {}
      for scan in (False, True):
        r = measure(family, layers, scan)
        rows.append(r)
        pair[scan] = r
        print(f"{family:16s} {layers:3d} layers {'scanned ' if scan else 'unrolled'}: trace+lower "
              f"{r['trace_lower_s']:6.2f} s, compile {r['compile_s']:6.2f} s, step {r['step_s'] * 1e3:7.1f} ms",
              flush=True)
      total = lambda r: r["trace_lower_s"] + r["compile_s"]
      print(f"{family:16s} {layers:3d} layers: scanned is {total(pair[False]) / total(pair[True]):.1f}x faster to "
            f"trace, lower and compile; its step takes {pair[True]['step_s'] / pair[False]['step_s']:.2f}x the "
            "unrolled step's time", flush=True)
  print(json.dumps(rows))


if __name__ == "__main__":
  main()
