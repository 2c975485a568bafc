r"""Few-shot scoring speed: every label of a query in one row (the prompt computed once) against one row per
(query, label) pair, on `experiments/gpt_code.py`'s model and its `stdlib_packages` task (20 labels).

  python experiments/benchmarks/fewshot.py                       # k = 0, 1, 4 on 200 validation functions
  python experiments/benchmarks/fewshot.py --examples 50 --ks 4

The model is gpt_code's decoder (4 layers, d_model 128, 128 positions, code_sp4k tokenizer) with random
weights: the work, and so the time, does not depend on the weights. For each k, `fewshot.classify` runs
with `share_prompts=True` (`score_label_sets`: the demonstrations and query once, each label's
continuation a branch of the same row) and `share_prompts=False` (`score_continuations`, what
`bigjax eval --fewshot` did before: the whole prompt once per label). Each is timed twice: cold (the
first call, compiling its padded shapes) and warm (the same call again). The two must agree: the largest
|Δ log-prob| and whether the predictions are equal are printed. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--examples", type=int, default=200, help="validation functions scored (0 = all)")
  parser.add_argument("--ks", default="0,1,4", help="numbers of demonstrations")
  parser.add_argument("--batch_size", type=int, default=16)
  args = parser.parse_args()

  from experiments import gpt_code  # pylint: disable=g-import-not-at-top
  from bigjax import config as config_lib, models  # pylint: disable=g-import-not-at-top
  from bigjax.data import tasks, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from bigjax.eval import fewshot  # pylint: disable=g-import-not-at-top

  c = gpt_code.get_config()
  config_lib.validate(c)
  mcfg = config_lib.model_config(c)
  params = jax.jit(models.build(mcfg).init)(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]
  tok = tokenizer_lib.load(c.data.tokenizer)
  task = tasks.TASKS["stdlib_packages"]
  keys = {"code": "text_key", "package": "label_key"}
  train = fewshot._read_records("stdlib_packages", "train", ["code", "package"], keys)  # pylint: disable=protected-access
  evals = fewshot._read_records("stdlib_packages", "validation", ["code", "package"], keys)  # pylint: disable=protected-access
  if args.examples and args.examples < len(evals):
    keep = np.sort(np.random.default_rng(0).choice(len(evals), size=args.examples, replace=False))
    evals = [evals[i] for i in keep]
  labels = sorted({r["package"] for r in train})
  print(f"{len(evals)} queries x {len(labels)} labels, context {c.data.seq_len}, jax {jax.__version__} "
        f"on {jax.devices()[0].platform} ({os.cpu_count()} cores)")

  results = []
  for k in [int(x) for x in args.ks.split(",")]:
    row = {"k": k}
    outputs = {}
    for share in (True, False):
      run = lambda share=share: fewshot.classify(
          mcfg, params, tok, train, evals, text_key="code", label_key="package", labels=labels, k=k,
          template=task.fewshot_template, max_len=c.data.seq_len, batch_size=args.batch_size,
          share_prompts=share, return_info=True)
      name = "shared" if share else "per_label"
      t0 = time.perf_counter()
      outputs[name] = run()
      row[f"{name}_cold_s"] = round(time.perf_counter() - t0, 3)
      t0 = time.perf_counter()
      run()
      row[f"{name}_warm_s"] = round(time.perf_counter() - t0, 3)
    row["speedup_cold"] = round(row["per_label_cold_s"] / row["shared_cold_s"], 2)
    row["speedup_warm"] = round(row["per_label_warm_s"] / row["shared_warm_s"], 2)
    row["max_abs_diff"] = float(np.max(np.abs(outputs["shared"][2]["log_probs"] - outputs["per_label"][2]["log_probs"])))
    row["same_predictions"] = outputs["shared"][0] == outputs["per_label"][0]
    print(f"k={k}: shared prompt {row['shared_warm_s']:.2f} s warm ({row['shared_cold_s']:.2f} s cold), "
          f"one row per label {row['per_label_warm_s']:.2f} s ({row['per_label_cold_s']:.2f} s): "
          f"{row['speedup_warm']:.2f}x warm, {row['speedup_cold']:.2f}x cold; max |Δ log-prob| "
          f"{row['max_abs_diff']:.1e}, predictions equal: {row['same_predictions']}")
    results.append(row)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
