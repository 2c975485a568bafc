"""The memory planner: estimates against XLA's own memory_analysis(), sharding factors, pod-sized presets
planned without a pod, and one-line errors."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bigjax import plan
from bigjax.config import ConfigError
from conftest import REPO, tiny_config

QUICK = os.path.join(REPO, "experiments", "quickstart.py")
T5_SPAN = os.path.join(REPO, "experiments", "t5_span.py")


def small(family: str = "decoder", **overrides):
  """A model small enough to compile in seconds, with a batch and length at which activations dominate."""
  c = tiny_config("unused", **{"model.d_model": 64, "model.num_heads": 4, "model.d_ff": 256, "model.max_len": 128,
                               "data.seq_len": 128, "data.batch_size": 32, "model.scan_layers": True,
                               "mesh.num_devices": 0})
  if family == "encoder_decoder":  # T5 v1.1-style, span corruption on byte tokens (+100 sentinels).
    for key, value in dict(preset="t5_v1_1_small", family="encoder_decoder", positions="relative", norm="rmsnorm",
                           use_bias=False, gated_mlp=True, tie_embeddings=False, head_dim=16,
                           vocab_size=384).items():
      c.model[key] = value
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


@pytest.mark.parametrize("family,remat,mesh,vocab", [
    ("decoder", "full", (2, 2, 2), 264),
    ("encoder_decoder", "none", (1, 8, 1), 384),
    ("decoder", "none", (1, 1, 8), 8192),  # The batch on every device: the loss over the vocabulary in chunks.
])
def test_estimate_agrees_with_xla(family, remat, mesh, vocab):
  """Within 15% of XLA's per-device total; params + optimizer + batch are exactly XLA's arguments (the
  gradients are temporaries). With the CLI test below (the quickstart's unrolled decoder, remat none, on
  (1, 8, 1)): two configs, four meshes, remat none and full, scanned and unrolled layers, the loss in
  chunks (tensor parallel only) and whole (a mesh that splits the batch)."""
  config = small(family, **{"model.remat_policy": remat, "model.vocab_size": vocab,
                            "model.num_heads": 8 if mesh[2] == 8 else 4})
  p = plan.estimate(config, mesh, device_memory=2**34)
  xla = plan.compile_memory(config, mesh)
  assert p.activations + p.peak > 0.5 * p.total  # Activations matter in these configs.
  assert abs(p.params + p.optimizer + p.batch - xla["argument"]) <= 0.01 * xla["argument"]
  assert abs(p.total - xla["total"]) <= 0.15 * xla["total"], (p.figures(), xla)


def test_params_and_optimizer_shrink_by_fsdp_times_tensor():
  config = small(**{"model.d_model": 128, "model.vocab_size": 512, "model.positions": "rotary", "data.batch_size": 8})
  plans = {mesh: plan.estimate(config, mesh) for mesh in [(8, 1, 1), (1, 8, 1), (2, 1, 4), (1, 2, 4)]}
  whole = plans[(8, 1, 1)]  # Pure data parallelism: every device holds everything.
  assert whole.params == pytest.approx(whole.param_count * 4, rel=1e-6)
  for mesh, factor in [((1, 8, 1), 8), ((2, 1, 4), 4), ((1, 2, 4), 8)]:
    p = plans[mesh]
    # Only norm scales and biases are not split over tensor (those of heads and MLP units not over fsdp).
    assert whole.params / p.params == pytest.approx(factor, rel=0.05), mesh
    assert whole.optimizer / p.optimizer == pytest.approx(factor, rel=0.05), mesh
    assert p.gradients == p.params


def preset_config(experiment: str, **model):
  """An experiment file's config with a preset's published sizes (explicit values beat a preset)."""
  spec = importlib.util.spec_from_file_location("experiment", experiment)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in model.items():
    config.model[key] = value
  return config


GPT2_XL = dict(preset="gpt2_xl", vocab_size=50257, d_model=1600, num_layers=48, num_heads=25, d_ff=6400,
               max_len=1024, scan_layers=True, remat_policy="full")
T5_11B = dict(preset="t5_11b", vocab_size=32128, d_model=1024, num_layers=24, num_decoder_layers=24, num_heads=128,
              head_dim=128, d_ff=65536, max_len=512, scan_layers=True, remat_policy="full")


@pytest.mark.parametrize("experiment,model,params,topology,mesh", [
    (QUICK, GPT2_XL, 1_557_611_200, "v5p-128", (1, 64, 1)),
    (T5_SPAN, T5_11B, 11_307_321_344, "v4-256", (1, 128, 1)),
])
def test_pod_plans_for_presets_need_no_pod(experiment, model, params, topology, mesh, capsys):
  config = preset_config(experiment, **model)
  config.data.seq_len, config.data.batch_size = 512, 128
  p = plan.main(config, mesh=",".join(map(str, mesh)), topology=topology)
  out = capsys.readouterr().out
  figures = json.loads(out.strip().splitlines()[-1])
  assert figures["param_count"] == params and figures["xla"] is None  # Planned, not compiled.
  assert figures["devices"] == mesh[1] and figures["mesh"] == list(mesh)
  # Fully sharded: the devices together hold the float32 params once (biases of [mlp] are replicated).
  assert p.params * p.devices == pytest.approx(params * 4, rel=0.03)
  assert p.optimizer == pytest.approx(2 * p.params, rel=0.01)
  assert 0 < p.total < p.device_memory and figures["fits"]
  assert "fits:" in out and topology in out


def test_topology_names():
  assert plan.parse_topology("v4-32")[:2] == (16, 32 * plan.GiB)
  assert plan.parse_topology("v5p-128")[:2] == (64, 95 * plan.GiB)
  assert plan.parse_topology("v5litepod-16")[:2] == plan.parse_topology("v5e-16")[:2] == (16, 16 * plan.GiB)
  assert plan.parse_topology("v6e-64")[:2] == (64, 32 * plan.GiB)
  assert plan.parse_topology("8xA100-80GB")[:2] == (8, 80 * plan.GiB)
  assert plan.parse_topology("8xA100")[:2] == (8, 40 * plan.GiB)
  assert plan.parse_topology("8xH100")[:2] == (8, 80 * plan.GiB)
  assert plan.parse_bytes("16GiB") == 16 * plan.GiB and plan.parse_bytes("80 GB") == 80 * 10**9


def test_a_plan_that_does_not_fit_says_so(capsys):
  p = plan.main(small(), mesh="1,8,1", devices=8, device_memory="4MiB")
  out = capsys.readouterr().out
  assert not p.fits and "does not fit" in out and json.loads(out.splitlines()[-1])["fits"] is False


@pytest.mark.parametrize("call,match", [
    (lambda: plan.parse_topology("v7-8"), "--topology='v7-8' is not a known topology; known: v4-N"),
    (lambda: plan.parse_topology("v4-7"), "use a multiple of 2"),
    (lambda: plan.parse_mesh("2,2"), "--mesh='2,2': must be three sizes"),
    (lambda: plan.parse_bytes("lots"), "--device_memory='lots' is not a size"),
    (lambda: plan.estimate(small(), (2, 2, 1), 8), "mesh.shape=(2, 2, 1) has 4 devices but 8"),
    (lambda: plan.estimate(small(**{"model.num_heads": 2}), (1, 1, 8), 8), "(size 8) do not divide"),
    (lambda: plan.estimate(small(**{"model.vocab_size": 263}), (4, 1, 2), 8), "embedding has a dimension of 263"),
    (lambda: plan.estimate(small(**{"model.d_ff": 250}), (2, 1, 4), 8), "mlp/wi/bias has a dimension of 250"),
    (lambda: plan.estimate(small(**{"data.batch_size": 12}), (1, 8, 1), 8), "data.batch_size=12 does not divide"),
    (lambda: plan.main(small(), devices=8), "--devices=8 needs --device_memory"),
    (lambda: plan.main(small(), topology="v4-8", devices=4), "leave out --devices"),
])
def test_bad_input_is_one_line_naming_the_setting(call, match):
  with pytest.raises(ConfigError) as e:
    call()
  assert match in str(e.value) and "\n" not in str(e.value)


def bigjax(*args):
  return subprocess.run([sys.executable, "-m", "bigjax.main", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def test_cli_plans_and_compiles_quickstart_on_8_cpu_devices():
  """The quickstart (unrolled layers, remat none) on (1, 8, 1): figures, XLA's beside them, within 15%."""
  r = bigjax("plan", "--config", QUICK, "--mesh", "1,8,1")
  assert r.returncode == 0, r.stderr[-3000:]
  for words in ("mesh (data 1, fsdp 8, tensor 1) on 8 devices", "optimizer state", "activations saved",
                "XLA memory_analysis()", "XLA total = argument + temp + output - alias", "fits: "):
    assert words in r.stdout, r.stdout
  figures = json.loads(r.stdout.strip().splitlines()[-1])
  assert figures["mesh"] == [1, 8, 1] and figures["devices"] == 8
  assert abs(figures["total"] - figures["xla"]["total"]) <= 0.15 * figures["xla"]["total"], figures


def test_cli_bad_topology_is_one_line():
  r = bigjax("plan", "--config", QUICK, "--topology", "v7-8")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  errors = [line for line in r.stderr.splitlines() if line.startswith("bigjax: error:")]
  assert len(errors) == 1 and "--topology='v7-8' is not a known topology" in errors[0], r.stderr[-2000:]
