"""End to end: train → checkpoint → resume, exactness, meshes, workdir safety."""

import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from bigjax import train
from bigjax.config import ConfigError


def read_metrics(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r["split"] == split]


@pytest.fixture(scope="module")
def uninterrupted(text_file, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  out = train.train(tiny_config(text_file), workdir)
  return workdir, out


def test_workdir_records_the_run(uninterrupted):
  workdir, out = uninterrupted
  for name in ("config.json", "metrics.jsonl", "samples.txt", "checkpoints", "tensorboard"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int)[-1] == "6"
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert set(rows[0]) == {"step", "split", "loss", "learning_rate", "grad_norm", "tokens_per_s", "step_time_s",
                          "tflops_per_device", "mfu"}
  assert all(r["tflops_per_device"] > 0 and 0 < r["mfu"] for r in rows)
  evals = read_metrics(workdir, "eval")
  assert [r["step"] for r in evals] == [3, 6]
  assert set(evals[0]) == {"step", "split", "loss", "unigram_loss", "bits_per_byte", "perplexity", "accuracy"}
  assert rows[-1]["loss"] < rows[0]["loss"]  # It learns.
  e = evals[-1]
  assert e["perplexity"] == pytest.approx(np.exp(e["loss"]))
  # Byte tokens: one token is one byte, so bits/byte is loss / ln 2 up to the EOS targets.
  assert e["bits_per_byte"] == pytest.approx(e["loss"] / np.log(2), rel=0.05)
  assert 0 < e["unigram_loss"] < np.log(264)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["model"]["d_model"] == 32 and saved["train"]["steps"] == 6
  samples = open(os.path.join(workdir, "samples.txt")).read()
  assert "=== step 3" in samples and "=== step 6" in samples and "[sample]" in samples
  assert out["eval_loss"] == pytest.approx(e["loss"])


def test_resume_is_exact_and_continues(text_file, uninterrupted, tmp_path):
  full_dir, _ = uninterrupted
  workdir = str(tmp_path / "resumed")
  train.train(tiny_config(text_file, **{"train.steps": 3}), workdir)
  first = read_metrics(workdir)
  assert [r["step"] for r in first] == [1, 2, 3]
  train.train(tiny_config(text_file, **{"train.steps": 5}), workdir)
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # Continues past the last step.

  # An interruption after step 3: the step-6 checkpoint and the lines after step 3 never happened.
  interrupted = str(tmp_path / "interrupted")
  cfg = tiny_config(text_file)
  train.train(cfg, interrupted)
  import shutil
  shutil.rmtree(os.path.join(interrupted, "checkpoints", "6"))
  with open(os.path.join(interrupted, "metrics.jsonl")) as f:
    kept = [line for line in f if json.loads(line)["step"] <= 3]
  with open(os.path.join(interrupted, "metrics.jsonl"), "w") as f:
    f.writelines(kept)
  train.train(cfg, interrupted)
  resumed = [r["loss"] for r in read_metrics(interrupted)]
  straight = [r["loss"] for r in read_metrics(full_dir)]
  assert resumed == straight  # Bit for bit.


def test_one_device_and_eight_devices_agree(text_file, uninterrupted, tmp_path):
  full_dir, _ = uninterrupted
  import jax
  assert jax.device_count() == 8
  one = [r["loss"] for r in read_metrics(full_dir)]  # tiny_config runs on 1 device.
  for shape in [(8, 1, 1), (2, 2, 2)]:
    workdir = str(tmp_path / ("mesh" + "".join(map(str, shape))))
    train.train(tiny_config(text_file, **{"mesh.shape": shape, "mesh.num_devices": 0}), workdir)
    many = [r["loss"] for r in read_metrics(workdir)]
    np.testing.assert_allclose(many, one, rtol=1e-5)
  # Stopped after step 3 on the (2, 2, 2) mesh and resumed there: bit-identical to the mesh's own run.
  part = str(tmp_path / "mesh_part")
  on_mesh = {"mesh.shape": (2, 2, 2), "mesh.num_devices": 0}
  # The first part names the whole run's schedule horizon (else it would be its own 3 steps, pinned).
  train.train(tiny_config(text_file, **on_mesh, **{"train.steps": 3, "optim.decay_steps": 6}), part)
  train.train(tiny_config(text_file, **on_mesh), part)
  assert [r["loss"] for r in read_metrics(part)] == many


def test_workdir_of_another_shape_is_refused_and_kept(text_file, uninterrupted):
  workdir, _ = uninterrupted
  before = {p: open(os.path.join(workdir, p), "rb").read() for p in ("config.json", "metrics.jsonl")}
  with pytest.raises(ConfigError, match=r"model\.d_model=32.*model\.d_model=64"):
    train.train(tiny_config(text_file, **{"model.d_model": 64}), workdir)
  after = {p: open(os.path.join(workdir, p), "rb").read() for p in before}
  assert before == after
  assert "6" in os.listdir(os.path.join(workdir, "checkpoints"))


def test_init_from_loads_params_and_checks_shapes(text_file, uninterrupted, tmp_path):
  src, _ = uninterrupted
  workdir = str(tmp_path / "finetune")
  out = train.train(tiny_config(text_file, **{"train.init_from": src, "train.steps": 1,
                                              "train.eval_every": 1}), workdir)
  scratch = [r["loss"] for r in read_metrics(src)][0]
  # Step 1 from pre-trained params has a much lower loss than step 1 from scratch.
  assert read_metrics(workdir)[0]["loss"] < scratch - 0.3
  assert np.isfinite(out["eval_loss"])
  with pytest.raises(ConfigError, match="token_embed"):
    train.train(tiny_config(text_file, **{"train.init_from": src, "model.vocab_size": 300}),
                str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "config.json")  # The failed start pinned nothing.


def test_nothing_to_do_when_already_at_target(text_file, uninterrupted, capsys):
  workdir, _ = uninterrupted
  n = len(read_metrics(workdir))
  train.train(tiny_config(text_file), workdir)
  assert len(read_metrics(workdir)) == n
  assert "nothing to do" in capsys.readouterr().out


FAMILIES = {
    "encoder": {"model.family": "encoder", "model.norm_position": "post", "model.type_vocab_size": 2},
    "encoder_decoder": {"model.family": "encoder_decoder", "model.positions": "relative", "model.norm": "rmsnorm",
                        "model.use_bias": False, "model.gated_mlp": True, "model.tie_embeddings": False,
                        "model.vocab_size": 360, "model.num_decoder_layers": 1},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_resumes_exactly_and_agrees_across_meshes(text_file, tmp_path, family):
  cfg = lambda **kw: tiny_config(text_file, **{**FAMILIES[family], "train.steps": 4, "train.eval_every": 4,
                                               "train.checkpoint_every": 2, "optim.decay_steps": 4, **kw})
  full = str(tmp_path / "full")
  out = train.train(cfg(), full)
  losses = [r["loss"] for r in read_metrics(full)]
  assert losses[-1] < losses[0] and np.isfinite(out["eval_loss"])
  assert not os.path.exists(os.path.join(full, "samples.txt"))  # Only language models sample.
  # Stopped after step 2, resumed: bit-identical losses.
  part = str(tmp_path / "part")
  train.train(cfg(**{"train.steps": 2}), part)
  train.train(cfg(), part)
  assert [r["loss"] for r in read_metrics(part)] == losses
  # Eight devices on a (2, 2, 2) mesh: the same losses; stopped and resumed there, bit-identical to it.
  on_mesh = {"mesh.shape": (2, 2, 2), "mesh.num_devices": 0}
  mesh = str(tmp_path / "mesh")
  train.train(cfg(**on_mesh), mesh)
  np.testing.assert_allclose([r["loss"] for r in read_metrics(mesh)], losses, rtol=1e-5)
  mesh_part = str(tmp_path / "mesh_part")
  train.train(cfg(**on_mesh, **{"train.steps": 2}), mesh_part)
  train.train(cfg(**on_mesh), mesh_part)
  assert [r["loss"] for r in read_metrics(mesh_part)] == [r["loss"] for r in read_metrics(mesh)]
  # Fine-tuning a scanned model (blocks under nn.scan) from the unscanned run: layouts convert on load.
  tuned = str(tmp_path / "tuned")
  train.train(cfg(**{"model.scan_layers": True, "train.init_from": full, "train.steps": 1}), tuned)
  assert read_metrics(tuned)[0]["loss"] < losses[0] - 0.1


WORDS = ("alpha", "beta", "gamma", "delta", "omega")


@pytest.fixture(scope="module")
def labelled_files(tmp_path_factory):
  """A JSONL text-to-text task (code → summary) and a CSV classification task, split by file name."""
  import csv
  d = tmp_path_factory.mktemp("labelled")
  rng = np.random.default_rng(0)
  for split, n in (("train", 160), ("validation", 24)):
    with open(d / f"{split}.jsonl", "w") as f:
      for i in range(n):
        a, b = rng.choice(WORDS, 2)
        code = f"def f{i}({a}, {b}):\n    return {a} + {b}" + " " * int(rng.integers(0, 30))
        f.write(json.dumps({"code": code, "summary": f"add {a} and {b}", "id": i}) + "\n")
    with open(d / f"{split}.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["text", "label"])
      for i in range(n):
        label = WORDS[i % 3]
        w.writerow([f"{label} {' '.join(rng.choice(WORDS, 4))}, and more", label])
  return str(d)


def test_text_to_text_packed_trains_and_resumes_exactly(labelled_files, tmp_path):
  cfg = lambda **kw: tiny_config(os.path.join(labelled_files, "*.jsonl"), **{
      **FAMILIES["encoder_decoder"], "data.objective": "text_to_text", "data.text_key": "code",
      "data.target_key": "summary", "data.seq_len": 128, "data.target_len": 48, "train.steps": 4,
      "optim.decay_steps": 4, "train.eval_every": 4, "train.checkpoint_every": 2, **kw})
  full = str(tmp_path / "full")
  out = train.train(cfg(), full)
  losses = [r["loss"] for r in read_metrics(full)]
  assert losses[-1] < losses[0] and 0 <= out["eval_accuracy"] <= 1
  part = str(tmp_path / "part")
  train.train(cfg(**{"train.steps": 2}), part)
  from bigjax import checkpoint
  meta = checkpoint.Checkpointer(part).restore_meta(2)
  assert meta["data"]["position"]["next_example"] > 2 * 8  # Packed: more examples than rows (batch 8).
  train.train(cfg(), part)
  assert [r["loss"] for r in read_metrics(part)] == losses  # Resumed from the saved data position.
  with pytest.raises(ConfigError, match="data.pack"):  # The stream's shape is pinned in the workdir.
    train.train(cfg(**{"data.pack": False, "train.steps": 6}), part)


def test_classification_and_prefix_lm_train(labelled_files, text_file, tmp_path):
  cfg = tiny_config(os.path.join(labelled_files, "*.csv"), **{
      **FAMILIES["encoder"], "model.encoder_head": "classifier", "model.num_labels": 3,
      "data.objective": "classification", "data.target_key": "label", "data.seq_len": 32,
      "train.steps": 3, "train.eval_every": 3})
  out = train.train(cfg, str(tmp_path / "cls"))
  ev = read_metrics(str(tmp_path / "cls"), "eval")[-1]
  assert ev["unigram_loss"] == pytest.approx(np.log(3), rel=0.02)  # Balanced labels: the prior is log 3.
  assert set(ev) == {"step", "split", "loss", "unigram_loss", "accuracy"} and 0 <= out["eval_accuracy"] <= 1
  with pytest.raises(ConfigError, match="model.num_labels=2"):
    train.train(tiny_config(os.path.join(labelled_files, "*.csv"), **{
        **FAMILIES["encoder"], "model.encoder_head": "classifier", "model.num_labels": 3,
        "data.objective": "classification", "data.target_key": "label", "data.labels": "alpha,beta"}),
        str(tmp_path / "bad"))
  with pytest.raises(ConfigError, match="data.target_key"):
    train.train(tiny_config(os.path.join(labelled_files, "*.csv"), **{"data.objective": "text_to_text"}),
                str(tmp_path / "bad2"))
  out = train.train(tiny_config(text_file, **{"data.objective": "prefix_lm", "train.steps": 2,
                                              "train.eval_every": 2}), str(tmp_path / "prefix"))
  assert np.isfinite(out["eval_loss"])
