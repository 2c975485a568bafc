r"""int8 beside float32 on a trained workdir: matmul-weight bytes and decoding tokens/s.

  python experiments/benchmarks/quantize.py --workdir workdirs/quickstart

The workdir's params are quantized in memory (`bigjax.quantize`, as `bigjax quantize` writes them) as
int8_weight and int8_dynamic; each variant, and float32 with the int8 KV cache, decodes the same random
prompts greedily (batch 1 and 8, `--prompt_len` tokens, `--new_tokens` new, no EOS) with the KV cache,
timed after a warm-up (compile) call, best of `--repeats`. The eval losses come from `bigjax eval` on the
`bigjax quantize` workdirs (README, Compression). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import flax
import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdirs/quickstart")
  parser.add_argument("--prompt_len", type=int, default=16)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  from bigjax import decode, quantize  # pylint: disable=g-import-not-at-top
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  restored = workdir_lib.latest_params(args.workdir)
  cfg = dataclasses.replace(restored.model_config, scan_layers=False)
  from bigjax import models  # pylint: disable=g-import-not-at-top
  params = jax.tree_util.tree_map(jax.numpy.asarray, models.unscan_params(restored.params)
                                  if restored.model_config.scan_layers else restored.params)
  variants = {"float32": (cfg, params), "float32 + int8 KV cache": (dataclasses.replace(cfg, kv_cache_dtype="int8"), params)}
  for mode in quantize.MODES:
    qcfg = dataclasses.replace(cfg, quantize=mode)
    variants[mode] = (qcfg, quantize.quantize_params(qcfg, params))
  flat_f = flax.traverse_util.flatten_dict(params, sep="/")
  flat_q = flax.traverse_util.flatten_dict(variants["int8_weight"][1], sep="/")
  quantized = {k.rsplit("/kernel/", 1)[0] for k in flat_q if "/kernel/array/" in k}
  float_bytes = sum(quantize.stored_bytes(v) for k, v in flat_f.items() if k.endswith("/kernel") and k[:-7] in quantized)
  int8_bytes = sum(quantize.stored_bytes(v) for k, v in flat_q.items() if "/kernel/array/" in k)
  print(f"{args.workdir} step {restored.step}: {len(quantized)} matmul weights {float_bytes:,} → {int8_bytes:,} bytes "
        f"({float_bytes / int8_bytes:.2f}x smaller); jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({os.cpu_count()} cores)")
  rng = np.random.default_rng(0)
  result = {"float_matmul_bytes": float_bytes, "int8_matmul_bytes": int8_bytes}
  for batch in (1, 8):
    prompts = rng.integers(3, cfg.vocab_size, (batch, args.prompt_len)).tolist()
    outputs = {}
    for name, (c, p) in variants.items():
      run = lambda c=c, p=p: decode.for_model(c, p, prompts, max_new_tokens=args.new_tokens, eos_id=-1, pad_id=0)
      outputs[name] = run()  # Warm-up: compile.
      best = float("inf")
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
      rate = batch * args.new_tokens / best
      same = np.mean([a == b for x, y in zip(outputs[name], outputs["float32"]) for a, b in zip(x, y)])
      result[f"{name} b{batch} tokens_per_s"] = round(rate, 1)
      result[f"{name} b{batch} same_tokens"] = round(float(same), 3)
      print(f"batch {batch}: {name:24s} {rate:8.1f} tokens/s; tokens equal to float32's: {same:.3f}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
