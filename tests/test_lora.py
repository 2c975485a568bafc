"""LoRA: a random-weight LlamaForCausalLM converted, fine-tuned with adapters on a JSONL text-to-text task by
`bigjax train`, then read merged: the eval loss falls, the frozen weights are bitwise the converted ones, the
optimizer holds state for the adapters only, merged and unmerged logits agree, to_hf gives a model whose
greedy `generate` equals bigjax's; adapter dropout; bad targets named."""

import json
import math
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import checkpoint_params as raw_params, tiny_config  # noqa: E402
from bigjax import config as config_lib  # noqa: E402
from bigjax import convert  # noqa: E402
from bigjax import decode  # noqa: E402
from bigjax import lora  # noqa: E402
from bigjax import models  # noqa: E402
from bigjax import optim  # noqa: E402
from bigjax import partitioning  # noqa: E402
from bigjax import steps  # noqa: E402
from bigjax import train  # noqa: E402
from bigjax.config import ConfigError  # noqa: E402
from bigjax.models import layers  # noqa: E402

WORDS = ("alpha", "beta", "gamma", "delta", "omega")
flat = lambda tree: flax.traverse_util.flatten_dict(tree, sep="/")


def lora_config(task, hf_dir, **kw):
  return tiny_config(os.path.join(task, "*.jsonl"), **{
      "model.positions": "rotary", "model.norm": "rmsnorm", "model.gated_mlp": True, "model.activation": "silu",
      "model.use_bias": False, "model.tie_embeddings": False, "model.num_kv_heads": 2, "model.layer_norm_eps": 1e-6,
      "model.max_len": 128, "data.objective": "text_to_text", "data.text_key": "code",
      "data.target_key": "summary", "data.seq_len": 64, "train.init_from": hf_dir, "train.lora_rank": 8,
      "train.lora_targets": "attention|mlp", "optim.learning_rate": 1e-2, "train.steps": 30, "train.eval_every": 1,
      "train.checkpoint_every": 30, "train.num_samples": 0, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("lora")
  rng = np.random.default_rng(0)
  for split, n in (("train", 160), ("validation", 16)):
    with open(root / f"{split}.jsonl", "w") as f:
      for i in range(n):
        a, b = rng.choice(WORDS, 2)
        f.write(json.dumps({"code": f"def f{i}({a}, {b}):\n    return {a} + {b}", "summary": f"add {a} and {b}"}) + "\n")
  torch.manual_seed(0)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, max_position_embeddings=128)).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  hf.save_pretrained(root / "hf")
  workdir = str(root / "tuned")
  out = train.train(lora_config(str(root), str(root / "hf")), workdir)
  return root, workdir, out


def read(workdir, kind):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == kind]


def test_adapters_learn_while_the_base_stays_bitwise(run):
  root, workdir, out = run
  evals = read(workdir, "eval")
  # Step 0's learning rate is 0 (warmup), so the step-1 eval is the converted model's own.
  assert evals[0]["step"] == 1 and out["eval_loss"] < evals[0]["loss"] - 0.25, (evals[0], out)
  print(f"LoRA eval loss {evals[0]['loss']:.3f} (converted model) -> {out['eval_loss']:.3f} after 30 steps")
  _, converted = convert.from_hf(str(root / "hf"))
  saved = flat(raw_params(workdir, 30))
  base = flat(converted)
  assert {k for k in saved if not lora.is_adapter(k)} == set(base)
  for k, v in base.items():
    assert np.array_equal(np.asarray(saved[k]), np.asarray(v)), k  # Frozen: the same bytes.
  assert sum(lora.is_adapter(k) for k in saved) == 2 * 2 * 7  # 2 layers x (q, k, v, out, wi_0, wi_1, wo).
  assert any(np.abs(saved[k]).max() > 0 for k in saved if k.endswith("lora_b"))


def test_optimizer_state_is_the_adapters_only():
  """At rank 8 on Llama-3.2-1B's shape (by shape only), AdamW's state is under 5% of full fine-tuning's."""
  c = config_lib.default_config()
  mesh = jax.sharding.AbstractMesh((1, 1, 1), partitioning.MESH_AXES)
  cfg = config_lib.preset("llama3_2_1b")
  nbytes = lambda t: sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(t))
  full = steps.abstract_state(cfg, mesh, partitioning.RULES, optim.make(c))
  ratios = {}
  for targets in ("attention/(query|value)$", "attention|mlp"):
    adapted = steps.abstract_state(cfg, mesh, partitioning.RULES, optim.make(c),
                                   lora=layers.Lora(8, 16.0, targets))
    ratios[targets] = nbytes(adapted.state.opt_state) / nbytes(full.state.opt_state)
    assert flat(adapted.state.opt_state[1][0].mu).keys() == {k for k in flat(adapted.state.params) if lora.is_adapter(k)}
  print(f"optimizer state with LoRA rank 8 / full fine-tuning, Llama-3.2-1B: {ratios}")
  assert max(ratios.values()) <= 0.05


def test_merged_equals_unmerged_and_to_hf_generates_the_same(run, tmp_path):
  root, workdir, _ = run
  cfg, merged = convert.from_workdir(workdir)  # What `bigjax convert --workdir W --to_hf DIR` writes.
  assert not any(lora.is_adapter(k) for k in flat(merged))
  spec = lora.spec(lora_config(str(root), str(root / "hf")))
  ids = np.random.default_rng(1).integers(3, 264, (2, 24))
  unmerged = models.build(cfg, lora=spec).apply({"params": raw_params(workdir, 30)}, jnp.asarray(ids))
  np.testing.assert_allclose(models.build(cfg).apply({"params": merged}, jnp.asarray(ids)), unmerged, atol=1e-5)
  convert.to_hf(cfg, merged, str(tmp_path / "hf_tuned"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf_tuned").eval()
  prompts = [list(b"def f3(beta, omega):\n    return beta + omega"), list(b"def f9(alpha, gamma):")]
  ours = decode.for_model(cfg, merged, prompts, max_new_tokens=12, eos_id=-1, pad_id=0)
  with torch.no_grad():
    theirs = [hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                          max_new_tokens=12, eos_token_id=None, pad_token_id=0)[0].tolist() for p in prompts]
  assert ours == theirs


def test_adapter_dropout_is_on_the_adapter_path_only():
  cfg = config_lib.ModelConfig(vocab_size=50, d_model=16, num_layers=1, num_heads=2, d_ff=32)
  spec = layers.Lora(4, 8.0, "attention/query$", dropout=0.5)
  module = models.build(cfg, lora=spec)
  params = partitioning.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros((1, 6), jnp.int32))["params"])
  params = jax.tree_util.tree_map_with_path(  # B away from zero, so the adapter contributes.
      lambda p, x: x + 0.3 if jax.tree_util.keystr(p).endswith("['lora_b']") else x, params)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 6)))
  run_with = lambda seed: module.apply({"params": params}, ids, deterministic=False,
                                       rngs={"dropout": jax.random.PRNGKey(seed)})
  assert np.abs(run_with(0) - run_with(1)).max() > 1e-3  # Dropout acts in training ...
  merged = lora.merge(params, spec)
  np.testing.assert_allclose(module.apply({"params": params}, ids), models.build(cfg).apply({"params": merged}, ids),
                             atol=1e-5)  # ... and not at eval, where merged = unmerged.
  no_adapter = spec._replace(targets="nothing matches")
  bare = models.build(cfg, lora=no_adapter).apply({"params": lora.split(params)[1]}, ids, deterministic=False,
                                                   rngs={"dropout": jax.random.PRNGKey(0)})
  np.testing.assert_allclose(bare, models.build(cfg).apply({"params": lora.split(params)[1]}, ids), atol=1e-6)


def test_bad_lora_settings_are_named(run, tmp_path):
  root, _, _ = run
  with pytest.raises(ConfigError, match=r"train.lora_targets='nope' names no layer of the blocks"):
    train.train(lora_config(str(root), str(root / "hf"), **{"train.lora_targets": "nope"}), str(tmp_path / "a"))
  with pytest.raises(ConfigError, match=r"train.lora_targets='\(' is not a regular expression"):
    config_lib.validate(lora_config(str(root), str(root / "hf"), **{"train.lora_targets": "("}))
  with pytest.raises(ConfigError, match=r"train.lora_rank=-1: must be an integer >= 0"):
    config_lib.validate(lora_config(str(root), str(root / "hf"), **{"train.lora_rank": -1}))
  assert not os.path.exists(tmp_path / "a" / "config.json")


def test_lora_from_a_workdir_resumes_bit_exactly(run, tmp_path):
  """init_from a `bigjax convert` workdir; stopped at step 3 and resumed, the run ends with the params (adapters
  and frozen weights) of one that never stopped."""
  root, _, _ = run
  converted = str(tmp_path / "converted")
  convert.to_workdir(*convert.from_hf(str(root / "hf")), converted, str(root / "hf"))
  cfg = lambda steps: lora_config(str(root), converted, **{"train.steps": steps, "optim.decay_steps": 6,
                                                           "train.eval_every": 3, "train.checkpoint_every": 3,
                                                           "train.lora_dropout": 0.1})
  train.train(cfg(6), str(tmp_path / "straight"))
  train.train(cfg(3), str(tmp_path / "resumed"))
  train.train(cfg(6), str(tmp_path / "resumed"))
  a, b = flat(raw_params(str(tmp_path / "straight"), 6)), flat(raw_params(str(tmp_path / "resumed"), 6))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["decoder/block_0/attention/query/lora_b"], 0)
