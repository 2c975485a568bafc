r"""Decoding speed: bigjax (KV cache and no cache) against Hugging Face `generate`, same random weights.

  python experiments/benchmarks/decode.py                          # GPT-2 small shape, batch 1 and 8
  python experiments/benchmarks/decode.py --model t5               # T5 small shape (t5_small)
  python experiments/benchmarks/decode.py --dtype bfloat16         # both sides in bfloat16
  python experiments/benchmarks/decode.py --preset gpt2_small --prompt_len 16 --new_tokens 64
  python experiments/benchmarks/decode.py --prompt_len 960 --cache_only   # a long prompt, cached runs only

A random GPT-2 (or T5) is built in transformers (torch, CPU), converted with `bigjax.convert.from_hf`, and
both decode the same prompts greedily for exactly `new_tokens` tokens (no EOS). Tokens/s counts generated
tokens over the whole batch, timed after one warm-up call (compilation for JAX, allocator warm-up for
torch); each figure is the best of `--repeats` runs. Greedy outputs are checked to agree first, so the
two sides do the same work (in bfloat16 the two sides round differently, so agreement is reported, not
required).

The bandwidth bound: a token cannot come faster than the bytes its step must read (the weights the
decoder uses at every step, and on average half the final KV cache, plus T5's cross-attention cache)
divided by the read bandwidth measured here (`jnp.sum` over a 512 MB array). Each batch's KV-cache figure
is reported as a fraction of that bound. The last line is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def best_time(fn, repeats: int) -> float:
  fn()  # Warm-up: compile / allocate.
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def read_bandwidth(repeats: int = 5) -> float:
  """Bytes/s of reading a 512 MB float32 array (`jnp.sum` over it, every core), best of `repeats`: what a
  decoding step at batch 1 mostly does with its weights."""
  x = jnp.ones((128 * 1024 * 1024,), jnp.float32)
  f = jax.jit(jnp.sum)
  t = best_time(lambda: f(x).block_until_ready(), repeats)
  return x.nbytes / t


def hf_model(name: str, cfg, transformers):
  if name == "gpt2":
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=cfg.d_model, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_positions=cfg.max_len,
        vocab_size=cfg.vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
  return transformers.T5ForConditionalGeneration(transformers.T5Config(
      d_model=cfg.d_model, d_kv=cfg.kv_dim, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
      num_decoder_layers=cfg.decoder_layers, num_heads=cfg.num_heads, vocab_size=cfg.vocab_size,
      dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=1)).eval()


def step_bytes(cfg, params, batch: int, prompt_len: int, new_tokens: int) -> float:
  """Bytes one decoding step reads: every weight the decoder uses (T5: not the encoder's) and, on average,
  half the final KV cache (T5: plus the cross-attention keys and values over the prompt)."""
  itemsize = jnp.dtype(cfg.dtype).itemsize
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  weights = sum(x.nbytes for path, x in leaves if "encoder" not in jax.tree_util.keystr(path))
  if cfg.family == "decoder":
    cache = cfg.num_layers * 2 * batch * (prompt_len + new_tokens / 2) * cfg.num_heads * cfg.kv_dim * itemsize
  else:
    per_token = cfg.decoder_layers * 2 * batch * cfg.num_heads * cfg.kv_dim * itemsize
    cache = per_token * (new_tokens / 2 + prompt_len)
  return weights + cache


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="gpt2", choices=["gpt2", "t5"])
  ap.add_argument("--preset", default="", help="default: gpt2_small for gpt2, t5_small for t5")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--prompt_len", type=int, default=16)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--cache_only", action="store_true",
                  help="skip the runs without a KV cache (they recompute the whole prefix at every token: "
                       "minutes at long prompts)")
  args = ap.parse_args()

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from bigjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from bigjax import convert, decode, models  # pylint: disable=g-import-not-at-top

  preset = args.preset or {"gpt2": "gpt2_small", "t5": "t5_small"}[args.model]
  cfg = config_lib.preset(preset)
  torch.manual_seed(0)
  model = hf_model(args.model, cfg, transformers)
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(os.path.join(tmp, "hf"))
    cfg, params = convert.from_hf(os.path.join(tmp, "hf"))
  if args.dtype != "float32":
    cfg, params = decode.in_dtype(cfg, params, args.dtype)
    model = model.to(getattr(torch, args.dtype))
  params = jax.device_put(params)
  total = args.prompt_len + args.new_tokens
  no_eos = -1  # Every row decodes exactly new_tokens tokens, on both sides.
  bandwidth = read_bandwidth()
  print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)

  results = {"model": args.model, "preset": preset, "dtype": args.dtype, "prompt_len": args.prompt_len,
             "new_tokens": args.new_tokens, "torch_threads": torch.get_num_threads(),
             "jax_devices": str(jax.devices()[0].platform), "read_bandwidth_gb_per_s": round(bandwidth / 1e9, 2)}
  for batch in map(int, args.batches.split(",")):
    prompts = np.random.default_rng(batch).integers(2, cfg.vocab_size, (batch, args.prompt_len)).astype(np.int32)
    lengths = jnp.full((batch,), args.prompt_len, jnp.int32)
    ids = torch.tensor(prompts, dtype=torch.long)

    def hf(use_cache: bool):
      with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, do_sample=False, use_cache=use_cache,
                              pad_token_id=0)

    if args.model == "gpt2":
      settings = dict(max_new_tokens=args.new_tokens, eos_id=no_eos, pad_id=0, temperature=0.0,
                      prefill_len=args.prompt_len)
      # Params are jit arguments (not constants folded into the program), as in bigjax.decode.for_model.
      cached = decode.jit_loop(lambda w, p, c: decode.generate(models.step_fn(cfg, w), c, p, lengths,
                                                               jax.random.PRNGKey(0), **settings))
      cache0 = models.init_cache(cfg, batch, total)
      empty = models.uncached_step_fn(cfg, params, total)[1]
      uncached = jax.jit(lambda w, p, c: decode.generate(models.uncached_step_fn(cfg, w, total)[0], c, p,
                                                         lengths, jax.random.PRNGKey(0), **settings))
      ours = np.asarray(cached(params, jnp.asarray(prompts), cache0))[:, args.prompt_len:]
      timings = {"bigjax_cache": lambda: cached(params, jnp.asarray(prompts), cache0).block_until_ready(),
                 "bigjax_no_cache": lambda: uncached(params, jnp.asarray(prompts), empty(batch)).block_until_ready()}
      theirs = hf(True).numpy()[:, args.prompt_len:]
    else:  # The encoder once, then the decoder with its self- and cross-attention caches (for_model).
      run = lambda: decode.for_model(cfg, params, prompts.tolist(), max_new_tokens=args.new_tokens, eos_id=no_eos,
                                     pad_id=0)
      ours = np.asarray(run())[:, 1:]
      timings = {"bigjax_cache": run}
      theirs = hf(True).numpy()[:, 1:]
    agree = float(np.mean(ours == theirs))
    results[f"greedy_agreement_b{batch}"] = agree
    timings.update({"hf_cache": lambda: hf(True), "hf_no_cache": lambda: hf(False)})
    if args.cache_only:
      timings = {k: fn for k, fn in timings.items() if not k.endswith("no_cache")}

    n = batch * args.new_tokens
    for name, fn in timings.items():
      t = best_time(fn, args.repeats)
      results[f"{name}_b{batch}_tokens_per_s"] = round(n / t, 1)
      print(f"batch {batch:2d} {name:16s} {n / t:9.1f} tokens/s ({t:.2f}s for {n} tokens)", flush=True)
    bound = bandwidth / step_bytes(cfg, params, batch, args.prompt_len, args.new_tokens) * batch
    results[f"bandwidth_bound_b{batch}_tokens_per_s"] = round(bound, 1)
    results[f"bigjax_cache_b{batch}_of_bound"] = round(results[f"bigjax_cache_b{batch}_tokens_per_s"] / bound, 3)
    results[f"bigjax_vs_hf_b{batch}"] = round(results[f"bigjax_cache_b{batch}_tokens_per_s"] /
                                              results[f"hf_cache_b{batch}_tokens_per_s"], 2)
    print(f"batch {batch:2d} greedy tokens equal to HF's: {agree:.1%}; bigjax {results[f'bigjax_vs_hf_b{batch}']}x "
          f"HF, {results[f'bigjax_cache_b{batch}_of_bound']:.0%} of the bandwidth bound ({bound:.1f} tokens/s)",
          flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
