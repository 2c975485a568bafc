"""The same training on every mesh: (8,1,1), (1,8,1), (2,2,2), (1,2,4) and one device agree on per-step
losses and final params (the decoder on all of them, the other families on (2,2,2) and (1,2,4)), and
sharded state really shrinks per device."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from bigjax import config as config_lib
from bigjax import models
from bigjax import optim
from bigjax import partitioning
from bigjax import steps

MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]
# The decoder on every mesh; the other families, whose blocks are the decoder's layers plus their own parts
# (type embeddings, the MLM head; relative position bias, cross-attention), on the meshes that shard every
# axis at once: (2, 2, 2) and tensor 4 beside fsdp 2.
FAMILY_MESHES = {"decoder": MESHES, "encoder": [(1, 1, 1), (2, 2, 2), (1, 2, 4)],
                 "encoder_decoder": [(1, 1, 1), (2, 2, 2), (1, 2, 4)],
                 # 2 key/value heads: sharded over tensor 2, replicated over tensor 4 (partitioning.fit_kv_heads).
                 "open_models": MESHES,
                 "adafactor": [(1, 1, 1), (2, 2, 2), (1, 2, 4)]}
STEPS = 5

FAMILIES = {  # Every sharded dimension divides by 8 (fsdp) or 4 (tensor): embed 64, heads 4, mlp 128, vocab 96.
    "decoder": {},
    "encoder": {"model.family": "encoder", "model.norm_position": "post", "model.type_vocab_size": 2},
    "encoder_decoder": {"model.family": "encoder_decoder", "model.positions": "relative", "model.norm": "rmsnorm",
                        "model.use_bias": False, "model.gated_mlp": True, "model.tie_embeddings": False,
                        "model.num_decoder_layers": 1},
    # Every switch of the Llama line at once: grouped-query heads, Mistral's window (shorter than the rows),
    # Qwen2's q/k/v biases, Qwen3's q/k norms, Gemma's 1 + w norms and scaled embeddings.
    "open_models": {"model.positions": "rotary", "model.norm": "rmsnorm", "model.gated_mlp": True,
                    "model.activation": "silu", "model.use_bias": False, "model.num_kv_heads": 2,
                    "model.sliding_window": 6, "model.qkv_bias": True, "model.qk_norm": True,
                    "model.norm_plus_one": True, "model.embed_scale": True},
    # The decoder trained by Adafactor, matrices of 64 x 128 factored: its statistics shard like their params.
    "adafactor": {"optim.name": "adafactor", "optim.adafactor_min_dim_to_factor": 32},
}


def _config(family):
  # Scanned blocks (one block to compile per mesh) keep this file fast; test_train runs unscanned ones on a mesh.
  return tiny_config("unused", **{"model.vocab_size": 96, "model.d_model": 64, "model.num_heads": 4,
                                  "model.d_ff": 128, "model.max_len": 16, "model.scan_layers": True,
                                  "data.seq_len": 16, **FAMILIES[family]})


def _batches(family, n, batch=8, length=16, vocab=96):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    b = {"inputs": rng.integers(3, vocab, (batch, length)).astype(np.int32),
         "targets": rng.integers(3, vocab, (batch, length)).astype(np.int32),
         "weights": (rng.random((batch, length)) < 0.8).astype(np.float32)}
    if family == "encoder_decoder":
      b["decoder_input_ids"] = rng.integers(3, vocab, (batch, length)).astype(np.int32)
    out.append(b)
  return out


_RUNS = {}


def _run_cached(family, shape):
  if (family, shape) not in _RUNS:
    _RUNS[family, shape] = _run(_config(family), shape, _batches(family, 1) * STEPS)
  return _RUNS[family, shape]


def _run(config, shape, batches):
  """Per-step losses, final params (host) and the sharded state of STEPS steps on a mesh."""
  mcfg = config_lib.model_config(config)
  mesh = partitioning.make_mesh(shape, 1 if shape == (1, 1, 1) else 0)
  module, tx, schedule = models.build(mcfg), optim.make(config), optim.schedule(config)

  def init_state(rng):
    params = steps.init_params(module, rng)
    return steps.TrainState(jnp.zeros([], jnp.int32), params, tx.init(params))

  rules = partitioning.fit_kv_heads(partitioning.RULES, mcfg, mesh)[0]
  with partitioning.activate(mesh, rules):
    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    sh = partitioning.logical_shardings(abstract, mesh, rules)
    partitioning.check_divisible(abstract, sh)
    state = jax.jit(lambda r: nn.meta.unbox(init_state(r)), out_shardings=sh)(jax.random.PRNGKey(0))
    step = jax.jit(steps.make_train_step(module, tx, schedule, 0), in_shardings=(sh, partitioning.batch_sharding(mesh)),
                   out_shardings=(sh, partitioning.replicated(mesh)), donate_argnums=0)
    losses = []
    for b in batches:
      state, metrics = step(state, partitioning.global_batch(b, mesh))
      losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params), state


@pytest.mark.parametrize("family", ["decoder", "encoder", "encoder_decoder", "open_models", "adafactor"])
def test_every_mesh_gives_the_same_losses_and_params(family):
  # One batch again and again: the loss must fall, on every mesh.
  ref_losses, ref_params, _ = _run_cached(family, (1, 1, 1))
  assert ref_losses[-1] < ref_losses[0]
  for shape in FAMILY_MESHES[family][1:]:
    losses, params, _ = _run_cached(family, shape)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=f"mesh {shape}")
    # Relative difference of the whole parameter vector. (Per leaf, params whose gradient is zero in exact
    # arithmetic, like attention key biases, hold only Adam-amplified rounding noise on any mesh.)
    diff = np.sqrt(sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
                       for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params))))
    norm = np.sqrt(sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in jax.tree_util.tree_leaves(ref_params)))
    assert diff / norm <= 1e-5, (shape, diff / norm)


def _device_bytes(tree) -> int:
  return sum(x.addressable_shards[0].data.nbytes for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "shape"))


def test_per_device_state_shrinks_by_fsdp_times_tensor():
  _, _, one = _run_cached("decoder", (1, 1, 1))
  total_params, total_opt = _device_bytes(one.params), _device_bytes(one.opt_state)
  for shape in MESHES[1:]:
    _, _, state = _run_cached("decoder", shape)
    factor = shape[1] * shape[2]
    # Exactly what the specs say: each array's bytes over the mesh axes that shard it.
    want = 0
    for x in jax.tree_util.tree_leaves(state.params):
      axes = [a for part in x.sharding.spec if part for a in ((part,) if isinstance(part, str) else part)]
      want += x.nbytes // math.prod([x.sharding.mesh.shape[a] for a in axes] or [1])
    assert _device_bytes(state.params) == want
    # Overall: biases and norms are sharded on one axis only, so the shrink is close to, not exactly, the factor.
    for mine, total, what in ((_device_bytes(state.params), total_params, "params"),
                              (_device_bytes(state.opt_state), total_opt, "optimizer state")):
      assert total / mine >= 0.85 * factor, (shape, what, total / mine)
      assert total / mine <= factor + 1e-9, (shape, what, total / mine)



def test_adafactor_statistics_are_sharded_like_their_params():
  _, _, state = _run_cached("adafactor", (2, 2, 2))
  factored = [x for x in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "v_row"))
              if hasattr(x, "v_row")][0]
  wi = factored.v_row["decoder"]["blocks"]["mlp"]["wi"]["kernel"]  # Scanned [layers, embed 64, mlp 128] → rows.
  assert wi.ndim == 2 and tuple(wi.sharding.spec) == (None, "fsdp"), wi.sharding.spec
  col = factored.v_col["decoder"]["blocks"]["mlp"]["wi"]["kernel"]
  assert tuple(col.sharding.spec) == (None, "tensor"), col.sharding.spec
  adam = _run_cached("decoder", (2, 2, 2))[2].opt_state
  assert _device_bytes(state.opt_state) < 0.6 * _device_bytes(adam)  # One factored moment instead of two full.
