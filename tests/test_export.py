"""bigjax export: every family's workdir as StableHLO and as a TensorFlow SavedModel, each reloaded in a
process that never imports bigjax (jax and numpy; tensorflow) and scored at batch and length sizes the export
never saw, against bigjax's logits; the CLI and its refusals."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from bigjax import convert
from bigjax import export
from bigjax import models
from bigjax import partitioning
from bigjax.config import ConfigError, ModelConfig

FAMILIES = {
    "gpt2": ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=32),
    "llama": ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64, max_len=64,
                         positions="rotary", norm="rmsnorm", gated_mlp=True, activation="silu", use_bias=False,
                         tie_embeddings=False, sliding_window=5, scan_layers=True),
    "bert_mlm": ModelConfig(family="encoder", vocab_size=61, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                            max_len=32, norm_position="post", type_vocab_size=2),
    "bert_classifier": ModelConfig(family="encoder", vocab_size=61, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                                   max_len=32, norm_position="post", encoder_head="classifier", num_labels=3),
    "t5": ModelConfig(family="encoder_decoder", vocab_size=61, d_model=32, num_layers=2, num_heads=4, head_dim=8,
                      d_ff=64, positions="relative", norm="rmsnorm", use_bias=False, gated_mlp=True,
                      tie_embeddings=False),
}
SHAPES = [(1, 5, 3), (3, 11, 7)]  # (batch, length, decoder length): neither is a size the export traced.

RELOAD = r'''
import json, os, sys
import numpy as np
root, fmt = sys.argv[1], sys.argv[2]
out = {}
for name in sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n))):
  d = os.path.join(root, name, fmt)
  inputs = dict(np.load(os.path.join(root, name, "inputs.npz")))
  if fmt == "stablehlo":
    import jax
    exp = jax.export.deserialize(open(os.path.join(d, "model.stablehlo"), "rb").read())
    params = dict(np.load(os.path.join(d, "params.npz")))
    names = json.load(open(os.path.join(d, "export.json")))["inputs"]
    for key in sorted({k.split("_", 1)[0] for k in inputs}):
      out[f"{name}/{key}"] = np.asarray(exp.call(params, *[inputs[f"{key}_{n}"] for n in names]))
  else:
    import tensorflow as tf
    serve = tf.saved_model.load(d).signatures["serving_default"]
    names = json.load(open(os.path.join(d, "export.json")))["inputs"]
    for key in sorted({k.split("_", 1)[0] for k in inputs}):
      out[f"{name}/{key}"] = serve(**{n: tf.constant(inputs[f"{key}_{n}"]) for n in names})["logits"].numpy()
assert not any(m == "bigjax" or m.startswith("bigjax.") for m in sys.modules), "bigjax was imported"
np.savez(os.path.join(root, f"out_{fmt}.npz"), **out)
'''


def _inputs(cfg, batch, length, dec_len, rng):
  ids = rng.integers(0, cfg.vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[-1, length // 2:] = 0
  out = {"input_ids": ids, "attention_mask": mask}
  if cfg.family == "encoder_decoder":
    out["decoder_input_ids"] = rng.integers(0, cfg.vocab_size, (batch, dec_len)).astype(np.int32)
    out["decoder_attention_mask"] = np.ones((batch, dec_len), np.int32)
  return out


def _ours(cfg, params, x):
  module = models.build(cfg)
  if cfg.family == "encoder_decoder":
    return np.asarray(module.apply({"params": params}, x["input_ids"], x["decoder_input_ids"],
                                   attention_mask=x["attention_mask"],
                                   decoder_attention_mask=x["decoder_attention_mask"]))
  return np.asarray(module.apply({"params": params}, x["input_ids"], attention_mask=x["attention_mask"]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """Each family as a workdir, exported in both formats; the inputs and bigjax's logits beside them."""
  root = tmp_path_factory.mktemp("export")
  rng = np.random.default_rng(0)
  want = {}
  for name, cfg in FAMILIES.items():
    one = jnp.zeros((1, 4), jnp.int32)
    args = (one, one) if cfg.family == "encoder_decoder" else (one,)
    params = partitioning.unbox(jax.jit(models.build(cfg).init)(jax.random.PRNGKey(1), *args)["params"])
    workdir = str(root / "workdirs" / name)
    convert.to_workdir(cfg, params, workdir, source="test")
    for fmt in ("stablehlo", "saved_model"):
      record = export.export(workdir, fmt, str(root / "out" / name / fmt))
      assert record["format"] == fmt and record["family"] == cfg.family
    inputs = {}
    for i, shape in enumerate(SHAPES):
      x = _inputs(cfg, *shape, rng)
      inputs.update({f"s{i}_{k}": v for k, v in x.items()})
      want[f"{name}/s{i}"] = _ours(cfg, params, x)
    np.savez(root / "out" / name / "inputs.npz", **inputs)
  return root, want


@pytest.mark.parametrize("fmt", ["stablehlo", "saved_model"])
def test_exported_models_reload_without_bigjax_and_give_its_logits(exported, fmt):
  root, want = exported
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  r = subprocess.run([sys.executable, "-c", RELOAD, str(root / "out"), fmt], capture_output=True, text=True,
                     timeout=300, cwd="/", env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  got = dict(np.load(root / "out" / f"out_{fmt}.npz"))
  assert got.keys() == want.keys()
  for key in want:
    assert got[key].shape == want[key].shape, key
    np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
  record = json.loads((root / "out" / "t5" / fmt / "export.json").read_text())
  assert record["platforms"] == ["cpu", "cuda", "tpu"] and record["step"] == 0


def test_cli_exports_and_refuses_what_it_cannot_do(exported, tmp_path):
  root, _ = exported
  workdir = str(root / "workdirs" / "gpt2")
  run = lambda *a: subprocess.run([sys.executable, "-m", "bigjax.main", "export", *a], cwd=REPO,
                                  capture_output=True, text=True, timeout=300)
  r = run("--workdir", workdir, "--format", "hf", "--out", str(tmp_path / "hf"))
  assert r.returncode == 0 and "exported" in r.stdout, r.stderr[-2000:]
  assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "export.json").exists()
  r = run("--workdir", workdir, "--format", "onnx", "--out", str(tmp_path / "x"))
  assert r.returncode == 2 and "--format='onnx': allowed values are stablehlo, saved_model, hf" in r.stderr
  r = run("--workdir", workdir, "--format", "stablehlo", "--out", str(tmp_path / "hf"))
  assert r.returncode == 2 and "exists and is not empty" in r.stderr
  assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "export.json", "model.safetensors"]
  with pytest.raises(ConfigError, match=r"--platforms=metal: each must be one of cpu, cuda, tpu"):
    export.export(workdir, "stablehlo", str(tmp_path / "y"), platforms=("metal",))
