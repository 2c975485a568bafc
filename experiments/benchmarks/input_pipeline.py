r"""Input pipeline speed: tokens per second each objective's training stream delivers, beside the tokens
per second the quickstart's train step consumes, measured in the same sitting.

  python experiments/benchmarks/input_pipeline.py                 # every objective, then the train step
  python experiments/benchmarks/input_pipeline.py --seconds 5 --objectives causal_lm,masked_lm --no_train

Each objective runs the real pipeline (`bigjax.data.pipeline.build` on an experiment config, then the
training iterator `train.iterate(0)`, which builds batches ahead of the step in a thread pool).
Tokenizing a split is done once and cached (the first run of a config pays it; it is reported as
`prepare_s` and not counted in the rate). After 5 warm-up batches, batches are drawn for
`--seconds`; a batch's tokens are its real input tokens (all positions of a window; non-padding
positions of packed or padded rows). Window objectives read the embedded `stdlib_code` corpus; record
objectives read the code → docstring task made from it (`bigjax.data.tasks`), written to a temp dir.

The train-step figure is the quickstart itself (`experiments/quickstart.py`, 60 steps, no eval or
samples in between), its `tokens_per_s` as the trainer logs it at step 60. The last line is one JSON
object: `<objective>_tokens_per_s`, `quickstart_train_tokens_per_s`, and each objective's ratio to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def experiment(name: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "experiments", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def configs(task_dir: str) -> dict:
  """One config per objective: the experiments' own, changed only where the objective needs it."""
  out = {"causal_lm": experiment("quickstart"), "masked_lm": experiment("bert_mlm"),
         "span_corruption": experiment("t5_span")}
  c = experiment("quickstart")
  c.data.objective = "prefix_lm"
  out["prefix_lm"] = c
  c = experiment("t5_span")
  c.data.update(objective="text_to_text", source=os.path.join(task_dir, "functions", "*.jsonl"), text_key="code",
                target_key="summary", seq_len=256, target_len=64)
  out["text_to_text"] = c
  c = experiment("bert_mlm")
  c.data.update(objective="classification", source=os.path.join(task_dir, "packages", "*.jsonl"), text_key="code",
                target_key="package")
  c.model.encoder_head = "classifier"
  out["classification"] = c
  return out


def real_tokens(batch) -> int:
  for key in ("segment_ids", "attention_mask"):
    if key in batch:
      return int((batch[key] > 0).sum())
  return int(batch["inputs"].size)


def measure(config, seconds: float) -> dict:
  from bigjax.data import pipeline  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  data = pipeline.build(config)
  prepare = time.perf_counter() - t0
  it = data.train.iterate(0)
  for _ in range(5):
    next(it)
  tokens = batches = 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    batch, _ = next(it)
    tokens += real_tokens(batch)
    batches += 1
  dt = time.perf_counter() - t0
  return {"tokens_per_s": tokens / dt, "batches_per_s": batches / dt, "prepare_s": prepare,
          "tokens_per_batch": tokens / batches}


def train_step_rate() -> float:
  from bigjax import train  # pylint: disable=g-import-not-at-top
  c = experiment("quickstart")
  c.train.update(steps=60, log_every=20, eval_every=10_000, checkpoint_every=10_000, num_samples=0)
  with tempfile.TemporaryDirectory() as workdir:
    train.train(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
  return [r for r in rows if r["split"] == "train"][-1]["tokens_per_s"]


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--objectives", default="causal_lm,masked_lm,span_corruption,prefix_lm,text_to_text,classification")
  ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per objective")
  ap.add_argument("--no_train", action="store_true", help="skip the quickstart train-step measurement")
  args = ap.parse_args()

  from bigjax.data import tasks  # pylint: disable=g-import-not-at-top
  from bigjax.data import pipeline  # pylint: disable=g-import-not-at-top
  results = {}
  with tempfile.TemporaryDirectory() as task_dir:
    t0 = time.perf_counter()
    counts = tasks.write_stdlib_functions(task_dir)
    print(f"task records {counts} written in {time.perf_counter() - t0:.1f}s", flush=True)
    all_cfgs = configs(task_dir)
    all_cfgs["classification"].model.num_labels = len(tasks.PACKAGES)
    all_cfgs["classification"].data.labels = ",".join(tasks.PACKAGES)
    del pipeline
    for name in args.objectives.split(","):
      r = measure(all_cfgs[name], args.seconds)
      c = all_cfgs[name]
      print(f"{name:16s} {r['tokens_per_s']:>12,.0f} tokens/s  ({r['batches_per_s']:.1f} batches/s of "
            f"{c.data.batch_size} x {c.data.seq_len}, {r['tokens_per_batch']:.0f} real tokens each; "
            f"prepare {r['prepare_s']:.1f}s)", flush=True)
      results[f"{name}_tokens_per_s"] = round(r["tokens_per_s"], 1)
  if not args.no_train:
    rate = train_step_rate()
    print(f"quickstart train step consumes {rate:,.0f} tokens/s", flush=True)
    results["quickstart_train_tokens_per_s"] = round(rate, 1)
    for name in args.objectives.split(","):
      results[f"{name}_ratio_to_train"] = round(results[f"{name}_tokens_per_s"] / rate, 1)
  print(json.dumps(results))


if __name__ == "__main__":
  sys.exit(main())
