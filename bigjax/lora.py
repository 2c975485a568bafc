"""LoRA: low-rank adapters (Hu et al. 2021) trained while every other weight stays frozen.

`train.lora_rank` > 0 builds the model with `layers.Lora(rank, alpha, targets, dropout)`: each Dense layer
of the blocks whose module path `train.lora_targets` finds (a regular expression searched in e.g.
"decoder/block_0/attention/query"; default Hu et al.'s W_q and W_v) gains `lora_a` `[in..., rank]` and
`lora_b` `[rank, out...]` and computes x W + (alpha / rank) · dropout(x) A B. The train step takes
gradients of the adapters only (`split` / `combine`), the optimizer's state exists for them only, and the
base weights pass through the step untouched (bitwise). A checkpoint holds base and adapters; every reader
of the workdir (`workdir.latest_params`: eval, decode, convert, init_from) gets them merged, W + (alpha /
rank) · A B (`merge`), so `bigjax convert --workdir W --to_hf DIR` writes a model transformers loads.

Written on flax's own tools, after reading Qwix 0.1.8's `LoraProvider` (`qwix/_src/providers/lora.py`): it
intercepts every `dot_general`/`einsum` of a module whose right operand is one of its params (so it would
find bigjax's Dense kernels, casts included) and adds adapters there; but its adapter dropout is built with
`deterministic=False`, so with dropout it needs a dropout rng and drops at eval and decoding too, where
bigjax's are deterministic; and the frozen/trainable split, the optimizer on adapters only and the merge
for `to_hf` are the codebase's to write either way. Inside `layers.Dense` the adapter is twenty lines, its
params carry logical axis names (`lora_rank` replicated, the others their kernel's) so they shard by the
same rules, and no pre-1.0 dependency joins the stack.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from bigjax.config import ConfigError
from bigjax.models import layers

ADAPTERS = ("lora_a", "lora_b")


def spec(config) -> layers.Lora | None:
  """The run's `layers.Lora` from `train.lora_*`, or None without LoRA (rank 0, or a config from before)."""
  t = config.get("train", {})
  rank = t.get("lora_rank", 0) if hasattr(t, "get") else 0
  if not rank:
    return None
  return layers.Lora(int(rank), float(t.get("lora_alpha", 16.0)), str(t.get("lora_targets", "")),
                     float(t.get("lora_dropout", 0.0)))


def is_adapter(name: str) -> bool:
  """Whether a flat param name ("decoder/block_0/attention/query/lora_a") is an adapter's."""
  return name.rsplit("/", 1)[-1] in ADAPTERS


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _unflat(d):
  return flax.traverse_util.unflatten_dict(d, sep="/")


def split(params) -> tuple[dict, dict]:
  """(adapters, frozen): two nested dicts holding `params`' adapter leaves and the rest."""
  flat = _flat(params)
  return (_unflat({k: v for k, v in flat.items() if is_adapter(k)}),
          _unflat({k: v for k, v in flat.items() if not is_adapter(k)}))


def combine(adapters, frozen) -> dict:
  """The params tree again from `split`'s two halves."""
  return _unflat({**_flat(frozen), **_flat(adapters)})


def check_targets(params, lora: layers.Lora) -> int:
  """The number of adapted layers; a ConfigError naming `train.lora_targets` when it finds none."""
  flat = _flat(params)
  n = sum(1 for k in flat if k.endswith("/lora_a"))
  if not n:
    dense = sorted({k.rsplit("/", 1)[0] for k in flat if k.endswith("/kernel")})
    raise ConfigError(f"train.lora_targets={lora.targets!r} names no layer of the blocks; their projections "
                      f"are e.g. {', '.join(dense[:4])}")
  return n


def merge(params, lora: layers.Lora) -> dict:
  """`params` without adapters, each adapted kernel replaced by W + (alpha / rank) · A B (computed in float32,
  stored in the kernel's dtype). Works on scanned params too (a leading `layers` axis on all three)."""
  flat = _flat(params)
  out = {k: v for k, v in flat.items() if not is_adapter(k)}
  scale = lora.alpha / lora.rank
  for name in [k for k in flat if k.endswith("/lora_a")]:
    base = name[:-len("/lora_a")]
    w, a, b = flat[f"{base}/kernel"], flat[name], flat[f"{base}/lora_b"]
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.ndim - 1 + b.ndim - 1 == w.ndim:
      delta = jnp.tensordot(a32, b32, axes=1)
    else:  # Scanned: one product per layer.
      delta = jax.vmap(lambda x, y: jnp.tensordot(x, y, axes=1))(a32, b32)
    out[f"{base}/kernel"] = (jnp.asarray(w, jnp.float32) + scale * delta).astype(w.dtype)
  return _unflat(out)


def describe(params: Any, lora: layers.Lora) -> str:
  """One start-up line: how many layers are adapted and how many parameters train."""
  adapters, frozen = split(params)
  count = lambda t: sum(x.size for x in jax.tree_util.tree_leaves(t))
  trained, total = count(adapters), count(adapters) + count(frozen)
  return (f"bigjax: LoRA rank {lora.rank} (alpha {lora.alpha:g}, dropout {lora.dropout:g}) on "
          f"{check_targets(params, lora)} layers matching {lora.targets!r}: {trained:,} of {total:,} params train "
          f"({100 * trained / total:.3f}%); the rest are frozen")
