"""Params in two layer layouts: unscanned (`block_0`, `block_1`, ... under each stack) and scanned (one
`blocks` subtree whose arrays carry a leading layer axis, what `nn.scan` over the blocks makes when
`model.scan_layers` is set). Checkpoints, Hugging Face conversion and `train.init_from` meet both."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.config import ConfigError, ModelConfig

_BLOCK = re.compile(r"block_(\d+)$")


def scan_params(params: dict) -> dict:
  """Unscanned params (`block_0`, `block_1`, ... under each stack) → scanned (`blocks`, leading layer axis)."""
  if not isinstance(params, dict):
    return params
  blocks = {k: v for k, v in params.items() if _BLOCK.match(k)}
  out = {k: scan_params(v) for k, v in params.items() if k not in blocks}
  if blocks:
    order = sorted(blocks, key=lambda k: int(_BLOCK.match(k).group(1)))
    if [int(_BLOCK.match(k).group(1)) for k in order] != list(range(len(order))):
      raise ConfigError(f"scan_params: blocks {order} are not numbered 0..{len(order) - 1}")
    out["blocks"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs) if isinstance(xs[0], jax.Array)
                                           else np.stack(xs), *[blocks[k] for k in order])
  return out


def unscan_params(params: dict) -> dict:
  """Scanned params (`blocks` with a leading layer axis) → unscanned (`block_0`, `block_1`, ...)."""
  if not isinstance(params, dict):
    return params
  out = {k: unscan_params(v) for k, v in params.items() if k != "blocks"}
  if "blocks" in params:
    n = jax.tree_util.tree_leaves(params["blocks"])[0].shape[0]
    for i in range(n):
      out[f"block_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], params["blocks"])
  return out


def to_layout(cfg: ModelConfig, params: dict) -> dict:
  """`params` in the layout `cfg.scan_layers` asks for, whichever layout they come in."""
  scanned = is_scanned(params)
  if cfg.scan_layers and not scanned:
    return scan_params(params)
  if not cfg.scan_layers and scanned:
    return unscan_params(params)
  return params


def is_scanned(params) -> bool:
  if not isinstance(params, dict):
    return False
  return "blocks" in params or any(is_scanned(v) for v in params.values())
