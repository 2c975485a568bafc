r"""Decoding speed: bigjax (KV cache and no cache) against Hugging Face `generate`, same random weights.

  python experiments/benchmarks/decode.py            # GPT-2 small shape, batch 1 and 8
  python experiments/benchmarks/decode.py --preset gpt2_small --prompt_len 16 --new_tokens 64

A random GPT-2 is built in transformers (torch, CPU), converted with `bigjax.convert.from_hf`, and both
decode the same prompts greedily for exactly `new_tokens` tokens (no EOS). Tokens/s counts generated
tokens over the whole batch, timed after one warm-up call (compilation for JAX, allocator warm-up for
torch); each figure is the best of `--repeats` runs. Greedy outputs are checked to agree first, so the
two sides do the same work. The last line is one JSON object with every figure.
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


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="gpt2_small")
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--prompt_len", type=int, default=16)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from bigjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from bigjax import convert, decode, models  # pylint: disable=g-import-not-at-top

  cfg = config_lib.preset(args.preset)
  torch.manual_seed(0)
  hf_cfg = transformers.GPT2Config(n_embd=cfg.d_model, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                                   n_positions=cfg.max_len, vocab_size=cfg.vocab_size, resid_pdrop=0.0,
                                   embd_pdrop=0.0, attn_pdrop=0.0)
  model = transformers.GPT2LMHeadModel(hf_cfg).eval()
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(os.path.join(tmp, "hf"))
    cfg, params = convert.from_hf(os.path.join(tmp, "hf"))
  params = jax.device_put(params)
  total = args.prompt_len + args.new_tokens
  no_eos = -1  # Every row decodes exactly new_tokens tokens, on both sides.

  results = {"preset": args.preset, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
             "torch_threads": torch.get_num_threads(), "jax_devices": str(jax.devices()[0].platform)}
  for batch in map(int, args.batches.split(",")):
    prompts = np.random.default_rng(batch).integers(0, cfg.vocab_size, (batch, args.prompt_len)).astype(np.int32)
    lengths = jnp.full((batch,), args.prompt_len, jnp.int32)
    settings = dict(max_new_tokens=args.new_tokens, eos_id=no_eos, pad_id=0, temperature=0.0,
                    prefill_len=args.prompt_len)
    # Params are jit arguments (not constants folded into the program), as in bigjax.decode.for_model.
    cached = jax.jit(lambda w, p, c: decode.generate(models.step_fn(cfg, w), c, p, lengths,
                                                     jax.random.PRNGKey(0), **settings))
    cache0 = models.init_cache(cfg, batch, total)
    empty = models.uncached_step_fn(cfg, params, total)[1]
    uncached = jax.jit(lambda w, p, c: decode.generate(models.uncached_step_fn(cfg, w, total)[0], c, p, lengths,
                                                       jax.random.PRNGKey(0), **settings))
    ids = torch.tensor(prompts, dtype=torch.long)

    def hf(use_cache: bool):
      with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, do_sample=False, use_cache=use_cache,
                              pad_token_id=0)

    ours = np.asarray(cached(params, jnp.asarray(prompts), cache0))
    theirs = hf(True).numpy()
    agree = float(np.mean(ours[:, args.prompt_len:] == theirs[:, args.prompt_len:]))
    results[f"greedy_agreement_b{batch}"] = agree

    n = batch * args.new_tokens
    timings = {
        "bigjax_cache": lambda: cached(params, jnp.asarray(prompts), cache0).block_until_ready(),
        "bigjax_no_cache": lambda: uncached(params, jnp.asarray(prompts), empty(batch)).block_until_ready(),
        "hf_cache": lambda: hf(True),
        "hf_no_cache": lambda: hf(False),
    }
    for name, fn in timings.items():
      t = best_time(fn, args.repeats)
      results[f"{name}_b{batch}_tokens_per_s"] = round(n / t, 1)
      print(f"batch {batch:2d} {name:16s} {n / t:9.1f} tokens/s ({t:.2f}s for {n} tokens)", flush=True)
    print(f"batch {batch:2d} greedy tokens equal to HF's: {agree:.1%}", flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
