"""Optimizer: schedule shape, weight-decay mask, clipping."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import config as config_lib
from bigjax import models
from bigjax import optim


def _config(**optim_overrides):
  c = config_lib.default_config()
  c.train.steps = 100
  c.optim.warmup_steps = 10
  c.optim.learning_rate = 1e-3
  c.optim.end_lr_ratio = 0.1
  for k, v in optim_overrides.items():
    c.optim[k] = v
  return c


def test_linear_rsqrt_and_constant_schedules():
  lin = optim.schedule(_config(schedule="linear"))
  assert [float(lin(t)) for t in (0, 5, 10, 55, 100)] == pytest.approx([0.0, 5e-4, 1e-3, 5.5e-4, 1e-4])
  rsqrt = optim.schedule(_config(schedule="rsqrt"))  # T5: 1/sqrt(max(step, 10k)) is peak 0.01, warmup 10k.
  assert [float(rsqrt(t)) for t in (0, 10, 40, 90)] == pytest.approx([1e-3, 1e-3, 5e-4, 1e-3 / 3])
  const = optim.schedule(_config(schedule="constant"))
  assert [float(const(t)) for t in (0, 5, 10, 99)] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
  with pytest.raises(config_lib.ConfigError, match=r"optim.schedule='step': allowed values are 'cosine'"):
    optim.schedule(_config(schedule="step"))


def test_warmup_then_cosine_to_the_end_ratio():
  s = optim.schedule(_config())
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(5e-4)
  assert float(s(10)) == pytest.approx(1e-3)
  assert float(s(55)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-5)
  assert float(s(100)) == pytest.approx(1e-4)


def test_decay_mask_spares_biases_norms_and_embeddings():
  cfg = config_lib.ModelConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2, d_ff=32, max_len=8)
  params = nn.meta.unbox(models.build(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  mask = optim.decay_mask(params)
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  decayed = sorted(k for k, m in flat.items() if m)
  assert decayed and all(k.endswith("['kernel']") for k in decayed)
  assert not any(m for k, m in flat.items() if "bias" in k or "scale" in k or "embedding" in k)


def test_adamw_decays_only_masked_params_and_clips():
  tx = optim.make(_config(weight_decay=0.5, clip_norm=1.0, warmup_steps=0))
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  state = tx.init(params)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)  # Zero gradient: only weight decay moves params.
  np.testing.assert_allclose(updates["dense"]["bias"], 0.0)
  lr = float(optim.schedule(_config(warmup_steps=0))(0))
  np.testing.assert_allclose(updates["dense"]["kernel"], -lr * 0.5 * np.ones((2, 2)), rtol=1e-6)
  # With b1 = 0 Adam's first moment is the (clipped) gradient itself, so its norm shows the clipping.
  huge = jax.tree_util.tree_map(lambda x: 1e6 * jnp.ones_like(x), params)
  for clip_norm, want in ((1.0, 1.0), (0.0, 1e6 * np.sqrt(6.0))):
    tx = optim.make(_config(weight_decay=0.0, clip_norm=clip_norm, b1=0.0, warmup_steps=0))
    _, new_state = tx.update(huge, tx.init(params), params)
    mu = optax.tree_utils.tree_get(new_state, "mu")
    assert float(optax.global_norm(mu)) == pytest.approx(want, rel=1e-5)


def test_decay_steps_fix_the_horizon_when_train_steps_grow():
  steps = (0, 5, 10, 40, 55, 80, 99, 100)
  for name in ("cosine", "linear"):
    first = optim.schedule(_config(schedule=name))  # train.steps 100: the first run's horizon.
    longer = _config(schedule=name, decay_steps=100)
    longer.train.steps = 300  # A resume that trains on, with the horizon pinned: the same curve.
    resumed = optim.schedule(longer)
    assert [float(resumed(t)) for t in steps] == [float(first(t)) for t in steps]
    assert [float(resumed(t)) for t in (100, 150, 299)] == pytest.approx([1e-4] * 3)  # Held at the end.
    longer.optim.decay_steps = 0  # Unpinned, the curve would stretch to the new train.steps.
    assert float(optim.schedule(longer)(55)) > 1.2 * float(resumed(55))


def test_describe_schedule_and_bad_decay_steps():
  assert optim.describe_schedule(_config()) == (
      "cosine: warmup 10 steps to 0.001, decay to 0.0001 at step 100 (train.steps), then held")
  assert optim.describe_schedule(_config(schedule="linear", decay_steps=520)) == (
      "linear: warmup 10 steps to 0.001, decay to 0.0001 at step 520 (optim.decay_steps), then held")
  assert optim.describe_schedule(_config(decay_steps=4)) == (
      "cosine: warmup 10 steps to 0.001, decay to 0.0001 at step 11 (optim.decay_steps=4, raised past "
      "warmup_steps), then held")
  assert optim.describe_schedule(_config(schedule="rsqrt")) == (
      "rsqrt: 0.001 for 10 steps, then 0.001 * sqrt(10 / step)")
  assert optim.describe_schedule(_config(schedule="constant")) == "constant: warmup 10 steps to 0.001, then held"
  with pytest.raises(config_lib.ConfigError, match=r"optim.decay_steps=-5: must be an integer >= 0"):
    optim.schedule(_config(decay_steps=-5))


def _boxed_params():
  """A small param tree in logical-partitioning boxes, as the models' init returns it."""
  rng = np.random.default_rng(0)
  box = lambda shape, names: nn.Partitioned(jnp.asarray(rng.normal(size=shape), jnp.float32), names)
  return {"wi": {"kernel": box((64, 256), ("embed", "mlp")), "bias": box((256,), ("mlp",))},
          "attn": {"kernel": box((64, 4, 16), ("embed", "heads", "kv"))},
          "ln": {"scale": box((64,), ("embed",))}, "embed": {"embedding": box((300, 64), ("vocab", "embed"))}}


@pytest.mark.parametrize("name", ["adamw", "adafactor", "sgd", "lion"])
def test_every_optimizer_is_optax_own_after_clipping(name):
  """optim.name builds optax's optimizer (T5's Adafactor settings; SGD with Nesterov momentum; Lion), after
  global-norm clipping, with weight decay masked off biases, norms and embeddings: five steps equal optax
  composed by hand on the unboxed params."""
  c = _config(name=name, weight_decay=0.05, nesterov=True, adafactor_min_dim_to_factor=32, clip_norm=0.5)
  params = _boxed_params()
  raw = nn.meta.unbox(params)
  lr = optim.schedule(c)
  inner = {"adamw": optax.adamw(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, mask=optim.decay_mask),
           "lion": optax.lion(lr, b1=0.9, b2=0.95, weight_decay=0.05, mask=optim.decay_mask),
           "sgd": (optax.add_decayed_weights(0.05, mask=optim.decay_mask), optax.sgd(lr, momentum=0.9, nesterov=True)),
           "adafactor": optax.adafactor(lr, min_dim_size_to_factor=32, decay_rate=0.8, clipping_threshold=1.0,
                                        multiply_by_parameter_scale=True, weight_decay_rate=0.05,
                                        weight_decay_mask=optim.decay_mask)}[name]
  want_tx = optax.chain(optax.clip_by_global_norm(0.5), *((inner,) if hasattr(inner, "init") else inner))
  tx = optim.make(c)
  ours, theirs = nn.meta.unbox(tx.init(params)), want_tx.init(raw)
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
  p_ours, p_theirs = raw, raw
  for step in range(5):
    g = jax.tree_util.tree_map(lambda x: jnp.sin(x * (step + 1)), raw)
    u, ours = tx.update(g, ours, p_ours)
    p_ours = optax.apply_updates(p_ours, u)
    u, theirs = want_tx.update(g, theirs, p_theirs)
    p_theirs = optax.apply_updates(p_theirs, u)
  for a, b in zip(jax.tree_util.tree_leaves(p_ours), jax.tree_util.tree_leaves(p_theirs)):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(p_ours["wi"]["kernel"], raw["wi"]["kernel"])


def test_adafactor_statistics_carry_their_parameters_names():
  """Factored rows drop the largest axis and columns the second largest (optax's rule), so each statistic
  is sharded by its parameter's rules; unfactored parameters keep a full second moment with all names."""
  state = optim.make(_config(name="adafactor", adafactor_min_dim_to_factor=32)).init(_boxed_params())
  factored = [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: hasattr(x, "v_row"))
              if hasattr(s, "v_row")][0]
  names = lambda tree: jax.tree_util.tree_map(lambda b: b.names, tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert names(factored.v_row["wi"]["kernel"]) == ("embed",) and names(factored.v_col["wi"]["kernel"]) == ("mlp",)
  assert names(factored.v_row["embed"]["embedding"]) == ("embed",)  # [vocab 300, embed 64]: vocab is largest.
  assert names(factored.v_col["embed"]["embedding"]) == ("vocab",)
  assert names(factored.v["attn"]["kernel"]) == ("embed", "heads", "kv")  # 4 and 16 < 32: not factored.
  assert names(factored.v["wi"]["bias"]) == ("mlp",)
  raw = nn.meta.unbox(factored)
  assert raw.v_row["wi"]["kernel"].shape == (64,) and raw.v["wi"]["kernel"].shape == (1,)
  with pytest.raises(config_lib.ConfigError, match=r"optim.name='adam': allowed values are 'adamw', 'adafactor'"):
    optim.make(_config(name="adam"))
