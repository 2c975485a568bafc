"""Pruning: the masks as optimizer state (exact counts by rank, global and per layer, N:M groups, Zhu & Gupta's
schedule), a real run whose pruned weights are exactly zero with the sparsity in metrics.jsonl, and a pruned
run stopped and resumed bit-identical to one that never stopped."""

import json
import os
import re
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import checkpoint_params, cut_after, tiny_config
from bigjax import prune
from bigjax import train
from bigjax.config import ConfigError

flat = lambda tree: flax.traverse_util.flatten_dict(tree, sep="/")


def spec(**kw):
  base = dict(kind="magnitude", sparsity=0.5, scope="global", n=2, m=4, start=0, end=10, every=5,
              targets=prune.DEFAULT_TARGETS)
  return prune.Spec(**{**base, **kw})


def test_schedule_masks_and_exact_zeros():
  s = spec(start=2, end=12)
  assert float(prune.target_sparsity(s, 0)) == 0 and float(prune.target_sparsity(s, 12)) == 0.5
  assert float(prune.target_sparsity(s, 7)) == pytest.approx(0.5 * (1 - 0.5 ** 3))
  rng = np.random.default_rng(0)
  params = {"decoder": {"block_0": {"attention": {"query": {"kernel": jnp.asarray(rng.normal(size=(8, 2, 4)))},
                                                  "out": {"kernel": jnp.asarray(rng.normal(size=(2, 4, 8)))}},
                                    "mlp": {"wi": {"kernel": jnp.asarray(rng.normal(size=(8, 12))),
                                                   "bias": jnp.asarray(rng.normal(size=(12,)))}}}}}
  tx = prune.transformation(optax.sgd(0.01), s)
  state = tx.init(params)
  step = jax.jit(lambda p, st, g: (lambda u, st2: (optax.apply_updates(p, u), st2))(*tx.update(g, st, p)))
  seen = []
  for _ in range(14):
    grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    params, state = step(params, state, grads)
    seen.append(float(prune.sparsity(params, s)))
  targets = [k for k in flat(params) if k.endswith("kernel")]
  total = sum(flat(params)[k].size for k in targets)
  assert seen[-1] == np.floor(0.5 * total) / total  # Exactly the stated count, by rank.
  assert seen[0] == seen[5] == 0 and 0 < seen[6] < seen[11] == seen[-1]  # Masks at steps 2 (s=0), 7, 12: gradual.
  assert not np.any(flat(params)["decoder/block_0/mlp/wi/bias"] == 0)  # Biases are never pruned.
  for k in targets:  # The masks say exactly which weights are zero.
    np.testing.assert_array_equal(np.asarray(flat(params)[k]) == 0, ~np.asarray(state.masks[k]))
  # Per layer: each matrix at the sparsity on its own; N:M: 2 of every 4 along the last input axis.
  weights = {k: flat(params)[k] + 1.0 for k in targets}
  per_layer = prune.masks_for(spec(scope="layer"), weights, 0.25)
  for k, m in per_layer.items():
    assert int((~m).sum()) == int(np.floor(0.25 * m.size)), k
  nm = prune.masks_for(spec(kind="n:m"), weights, 0.5)
  axes = {"decoder/block_0/attention/query/kernel": 0, "decoder/block_0/attention/out/kernel": 1,
          "decoder/block_0/mlp/wi/kernel": 0}
  for k, m in nm.items():
    groups = np.moveaxis(np.asarray(m), axes[k], -1).reshape(-1, 4)
    assert (groups.sum(-1) == 2).all(), k
    kept = np.moveaxis(np.abs(np.asarray(weights[k])), axes[k], -1).reshape(-1, 4)
    assert (np.where(groups, kept, np.inf).min(-1) >= np.where(groups, -np.inf, kept).max(-1)).all()  # Largest kept.


def _cfg(text_file, **kw):
  return tiny_config(text_file, **{"train.prune": "magnitude", "train.prune_sparsity": 0.5, "train.steps": 8,
                                   "train.prune_end": 6, "train.prune_every": 2, "train.checkpoint_every": 4,
                                   "train.eval_every": 4, "optim.decay_steps": 8, **kw})


def _params(workdir, step):
  return flat(checkpoint_params(workdir, step))


@pytest.mark.parametrize("kind", ["magnitude", "n:m"])
def test_pruned_run_is_exactly_sparse_logged_and_resumes_bit_exactly(text_file, tmp_path, kind):
  straight, part = str(tmp_path / "straight"), str(tmp_path / "part")
  out = train.train(_cfg(text_file, **{"train.prune": kind}), straight)
  params = _params(straight, 8)
  targets = [k for k in params if re.search(prune.DEFAULT_TARGETS, k)]
  zeros = sum(int((params[k] == 0).sum()) for k in targets)
  total = sum(params[k].size for k in targets)
  assert zeros == total // 2  # Exactly 50%: by rank (magnitude), 2 of each 4 (n:m).
  with open(os.path.join(straight, "metrics.jsonl")) as f:
    logged = [r["sparsity"] for r in map(json.loads, f) if r["split"] == "train"]
  assert logged[-1] == out["train_sparsity"] == zeros / total
  if kind == "magnitude":
    assert 0 < logged[1] < logged[5] == logged[-1]  # Gradual to step 6, then held.
  assert not any((params[k] == 0).any() for k in params if k.endswith("embedding") or "ln_" in k)
  shutil.copytree(straight, part)
  cut_after(part, 4)
  train.train(_cfg(text_file, **{"train.prune": kind}), part)
  again = _params(part, 8)
  assert all(np.array_equal(again[k], params[k]) for k in params)


def test_bad_pruning_settings_are_named(text_file, tmp_path):
  for kw, error in ((dict(prune="random"), r"train.prune='random': allowed values are 'none', 'magnitude', 'n:m'"),
                    (dict(prune_sparsity=1.0), r"train.prune_sparsity=1.0: must be in \(0, 1\)"),
                    (dict(prune="n:m", prune_n_m="4:2"), r"train.prune_n_m='4:2': must be N:M"),
                    (dict(prune_targets="nothing"), r"train.prune_targets='nothing' names no parameter"),
                    (dict(prune="n:m", prune_n_m="3:7"), r"not a multiple of 7")):
    with pytest.raises(ConfigError, match=error):
      train.train(_cfg(text_file, **{f"train.{k}": v for k, v in kw.items()}), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "config.json")
