r"""Train-step speed: bigjax against transformers' PyTorch models, every family, two shapes, one sitting.

  python experiments/benchmarks/train_step.py            # 4 families x 2 shapes, 8 timed steps each
  python experiments/benchmarks/train_step.py --quick    # 3 timed steps each
  python experiments/benchmarks/train_step.py --families decoder,llama --shapes small

Each case is one architecture built twice with the same random weights: a transformers model from its
config (`GPT2LMHeadModel`, `LlamaForCausalLM`, `BertForMaskedLM`, `T5ForConditionalGeneration` with
T5 v1.1's gated GELU and untied head), saved, and converted with `bigjax.convert.from_hf`, so both sides
compute exactly the same function. Both train without dropout on the same random batch, in float32 and
(`--dtypes`) in bfloat16 mixed precision — float32 weights and AdamW state, bigjax with `model.dtype=
bfloat16`, PyTorch with the forward under `torch.autocast("cpu", torch.bfloat16)`:
cross-entropy averaged over the weighted target tokens (every position for the language models, 15% of
positions for BERT's masked LM, all targets for T5, whose targets are a quarter of the inputs' length, as
span corruption's are), gradient clipping at norm 1, AdamW. bigjax runs its own jitted train step
(`bigjax.steps.make_train_step` with `bigjax.optim.make`, state donated); PyTorch runs eagerly with
`torch.optim.AdamW` and `clip_grad_norm_`, on as many threads as JAX uses (every core).

A step's time is the median of `--steps` timed whole steps after 2 warm-up steps (compilation for
bigjax), each ended by a device sync (`block_until_ready`; PyTorch on CPU is synchronous). The two sides
alternate step by step and the ratio is the median of the per-pair ratios, so that this machine's slow
stretches (step times here move by 10-50% within minutes) fall on both sides of a pair. Tokens are
batch x input length for every family (T5's convention: the targets' FLOPs are counted, their tokens
are not). MFU is bigjax's model FLOPs (`bigjax.throughput.flops_per_step`) per second over the peak of
a `jnp.dot` of the case's dtype measured here first (`throughput.measure_matmul_peak`). The last line is
one JSON list of {"family", "shape", "dtype", "bigjax_tokens_per_s", "hf_tokens_per_s", "ratio_vs_hf", "mfu"}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

SHAPES = {  # name: (layers, d_model, heads, seq_len, batch); d_ff = 4 d_model, vocab 8192.
    "small": (4, 128, 4, 64, 12),
    "mid": (6, 512, 8, 256, 8),
}
VOCAB = 8192
FAMILIES = ("decoder", "llama", "encoder", "encoder_decoder")
DTYPES = ("float32", "bfloat16")


def hf_model(family: str, layers: int, d: int, heads: int, seq: int):
  import transformers as tr  # pylint: disable=g-import-not-at-top
  if family == "decoder":
    return tr.GPT2LMHeadModel(tr.GPT2Config(n_embd=d, n_layer=layers, n_head=heads, n_inner=4 * d, vocab_size=VOCAB,
                                            n_positions=seq, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
  if family == "llama":
    return tr.LlamaForCausalLM(tr.LlamaConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                              num_key_value_heads=heads, intermediate_size=4 * d, vocab_size=VOCAB,
                                              max_position_embeddings=seq, tie_word_embeddings=False))
  if family == "encoder":
    return tr.BertForMaskedLM(tr.BertConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                            intermediate_size=4 * d, vocab_size=VOCAB, max_position_embeddings=seq,
                                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
  return tr.T5ForConditionalGeneration(tr.T5Config(d_model=d, d_kv=d // heads, d_ff=4 * d, num_layers=layers,
                                                   num_heads=heads, vocab_size=VOCAB, dropout_rate=0.0,
                                                   feed_forward_proj="gated-gelu", tie_word_embeddings=False))


def make_batch(family: str, seq: int, batch: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  ids = lambda *shape: rng.integers(3, VOCAB, shape).astype(np.int32)
  if family == "encoder_decoder":
    t = seq // 4
    return {"inputs": ids(batch, seq), "decoder_input_ids": ids(batch, t), "targets": ids(batch, t),
            "weights": np.ones((batch, t), np.float32)}
  weights = ((rng.random((batch, seq)) < 0.15) if family == "encoder" else np.ones((batch, seq))).astype(np.float32)
  return {"inputs": ids(batch, seq), "targets": ids(batch, seq), "weights": weights}


def time_paired(ours, theirs, n: int) -> tuple[float, float, float]:
  """Medians of `n` timed calls of `ours()` and of `theirs()`, after 2 warm-up calls of each, and the median
  of the per-pair ratios theirs/ours. The two alternate call by call (ours first in even pairs, theirs in
  odd ones), so a slow stretch of this shared machine slows both sides of a pair alike."""
  for _ in range(2):
    ours()
    theirs()
  t_ours, t_theirs = [], []
  for i in range(n):
    for fn, times in ((ours, t_ours), (theirs, t_theirs))[::1 if i % 2 == 0 else -1]:
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
  ratio = statistics.median(b / a for a, b in zip(t_ours, t_theirs))
  return statistics.median(t_ours), statistics.median(t_theirs), ratio


def bigjax_step(cfg, params, batch: dict, dtype: str = "float32"):
  """One bigjax train step as a callable that returns when it is done."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bigjax import config as config_lib, models, optim, steps  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.replace(cfg, dtype=dtype)  # Compute dtype; params (and AdamW's state) stay float32.
  config = config_lib.default_config()
  config.model.update(cfg.to_dict())
  config.train.steps = 1000
  config.optim.warmup_steps = 10
  module, tx, schedule = models.build(cfg), optim.make(config), optim.schedule(config)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  state = [steps.TrainState(jnp.zeros([], jnp.int32), params, tx.init(params))]
  train_step = jax.jit(steps.make_train_step(module, tx, schedule, 0), donate_argnums=0)
  device_batch = {k: jnp.asarray(v) for k, v in batch.items()}

  def step():
    state[0], metrics = train_step(state[0], device_batch)
    jax.block_until_ready(metrics)

  return step


def hf_step(model, family: str, batch: dict, dtype: str = "float32"):
  """One transformers train step (eager, synchronous on the CPU) as a callable."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  model.train()
  # Mixed precision as PyTorch does it: float32 weights, the forward (and so the backward) under autocast.
  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
  t = {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v) for k, v in batch.items()}

  def step():
    opt.zero_grad(set_to_none=True)
    kw = {"decoder_input_ids": t["decoder_input_ids"]} if family == "encoder_decoder" else {}
    with autocast():
      logits = model(input_ids=t["inputs"], **kw).logits
    xent = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), t["targets"].flatten(), reduction="none")
    loss = (xent * t["weights"].flatten()).sum() / t["weights"].sum().clamp(min=1.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  return step


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="3 timed steps a case instead of --steps")
  parser.add_argument("--steps", type=int, default=8, help="timed steps per case (median reported)")
  parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
  parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
  parser.add_argument("--dtypes", default=",".join(DTYPES),
                      help=f"comma-separated compute dtypes, of {', '.join(DTYPES)} (weights stay float32)")
  args = parser.parse_args(argv)
  families, shapes, dtypes = args.families.split(","), args.shapes.split(","), args.dtypes.split(",")
  for name, allowed, what in ((families, FAMILIES, "--families"), (shapes, SHAPES, "--shapes"),
                              (dtypes, DTYPES, "--dtypes")):
    bad = [x for x in name if x not in allowed]
    if bad:
      parser.error(f"{what}: {', '.join(bad)} not among {', '.join(allowed)}")
  n = 3 if args.quick else args.steps

  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from bigjax import convert, throughput  # pylint: disable=g-import-not-at-top
  transformers.utils.logging.disable_progress_bar()
  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  peaks = {dt: throughput.measure_matmul_peak(dt, budget_s=2.0) for dt in dtypes}
  print("jnp.dot peak here: " + ", ".join(f"{dt} {p / 1e12:.3f} TFLOP/s" for dt, p in peaks.items()) +
        f"; torch threads {threads}; jax {jax.__version__}, torch {torch.__version__}; {n} timed steps a case")
  rows = []
  for shape, dtype in ((s, d) for d in dtypes for s in shapes):
    layers, d, heads, seq, batch_size = SHAPES[shape]
    for family in families:
      torch.manual_seed(0)
      model = hf_model(family, layers, d, heads, seq)
      with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        cfg, params = convert.from_hf(tmp)
      batch = make_batch(family, seq, batch_size)
      target_len = batch["targets"].shape[1] if family == "encoder_decoder" else None
      ours, theirs, ratio = time_paired(bigjax_step(cfg, params, batch, dtype), hf_step(model, family, batch, dtype), n)
      tokens = batch_size * seq
      flops = throughput.flops_per_step(cfg, batch_size, seq, target_len)
      row = {"family": family, "shape": shape, "dtype": dtype, "bigjax_tokens_per_s": round(tokens / ours, 1),
             "hf_tokens_per_s": round(tokens / theirs, 1), "ratio_vs_hf": round(ratio, 3),
             "mfu": round(flops / ours / peaks[dtype], 4)}
      rows.append(row)
      print(f"{family:16s} {shape:5s} {dtype:8s}: bigjax {1000 * ours:8.1f} ms/step {row['bigjax_tokens_per_s']:10,.0f} tok/s "
            f"(MFU {100 * row['mfu']:.1f}%) | transformers {1000 * theirs:8.1f} ms/step "
            f"{row['hf_tokens_per_s']:10,.0f} tok/s | {row['ratio_vs_hf']:.2f}x", flush=True)
  print(json.dumps(rows))


if __name__ == "__main__":
  main()
