"""End to end: train → checkpoint → resume, exactness, meshes, workdir safety."""

import json
import os
import shutil

import flax
import jax
import numpy as np
import pytest

from conftest import cut_after, tiny_config
from bigjax import train
from bigjax import workdir as workdir_lib
from bigjax.config import ConfigError


def read_metrics(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r["split"] == split]


def flat_params(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def eval_in_numpy(config, workdir):
  """(loss, accuracy) of `workdir`'s latest params on `config`'s eval batches, from the model's logits in
  numpy (float64 log-softmax, weighted by each target's weight): the trainer's eval, recomputed."""
  from bigjax import config as config_lib, models, steps  # pylint: disable=g-import-not-at-top
  from bigjax.data import pipeline  # pylint: disable=g-import-not-at-top
  params = workdir_lib.latest_params(workdir).params
  module = models.build(config_lib.model_config(config))
  apply = jax.jit(lambda p, b: steps.logits(module, p, b, deterministic=True))
  nll = hits = count = 0.0
  for b in pipeline.build(config).eval:
    logits = np.asarray(apply(params, b), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    w = b["weights"]
    nll -= np.sum(w * np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0])
    hits += np.sum(w * (logits.argmax(-1) == b["targets"]))
    count += np.sum(w)
  assert count > 0
  return nll / count, hits / count


@pytest.fixture(scope="module")
def uninterrupted(text_file, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  out = train.train(tiny_config(text_file), workdir)
  return workdir, out


def test_workdir_records_the_run(text_file, uninterrupted):
  workdir, out = uninterrupted
  for name in ("config.json", "metrics.jsonl", "samples.txt", "checkpoints", "tensorboard"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int)[-1] == "6"
  rows = read_metrics(workdir)
  # TensorBoard reads the same scalars as metrics.jsonl, step by step.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
  events.Reload()
  for split in ("train", "eval"):
    want = [(r["step"], r["loss"]) for r in read_metrics(workdir, split)]
    got = [(e.step, e.value) for e in events.Scalars(f"{split}/loss")]
    assert [s for s, _ in got] == [s for s, _ in want] and want
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert set(rows[0]) == {"step", "split", "loss", "learning_rate", "grad_norm", "tokens_per_s", "step_time_s",
                          "tflops_per_device", "mfu"}
  # Speed from its definitions: 8 x 32 tokens a step; model FLOPs by hand (nanoGPT's 6N + 12·L·H·Q·T per
  # token, N = 2 layers of 4·32² + 2·32·64 weights and the 264 x 32 output layer); MFU over the device peak.
  from bigjax import throughput
  n_weights = 2 * (4 * 32 * 32 + 2 * 32 * 64) + 264 * 32
  flops = (6 * n_weights + 12 * 2 * 4 * 8 * 32) * 8 * 32
  peak, _ = throughput.peak_flops_per_device(jax.devices()[0], "float32")  # Measured once per process.
  for r in rows:
    assert r["step_time_s"] > 0
    assert r["tokens_per_s"] * r["step_time_s"] == pytest.approx(8 * 32, rel=1e-9)
    assert r["tflops_per_device"] * 1e12 * r["step_time_s"] == pytest.approx(flops, rel=1e-9)
    assert r["mfu"] == pytest.approx(r["tflops_per_device"] * 1e12 / peak, rel=1e-9)
  evals = read_metrics(workdir, "eval")
  assert [r["step"] for r in evals] == [3, 6]
  assert set(evals[0]) == {"step", "split", "loss", "unigram_loss", "bits_per_byte", "perplexity", "accuracy"}
  assert rows[-1]["loss"] < rows[0]["loss"]  # It learns.
  e = evals[-1]
  assert e["perplexity"] == pytest.approx(np.exp(e["loss"]), rel=1e-12)
  # The eval targets from the file itself: byte b is id b + 3, each split's text ends with EOS (id 1); the
  # last 5% of lines are validation, cut into windows of 33 tokens 32 apart, the first 2 x 8 evaluated.
  lines = open(text_file, encoding="utf-8").read().splitlines(keepends=True)
  ids = lambda text: np.append(np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64) + 3, 1)
  train_ids, val_ids = ids("".join(lines[:-len(lines) // 20])), ids("".join(lines[-len(lines) // 20:]))
  targets = np.concatenate([val_ids[32 * k + 1:32 * k + 33] for k in range(16)])
  # Bits/byte: the loss's nats over the bytes the targets stand for (EOS stands for none).
  assert e["bits_per_byte"] == pytest.approx(e["loss"] * targets.size / np.log(2) / np.sum(targets >= 3),
                                             rel=1e-9)
  # The unigram floor: the targets' mean nats under the train ids' add-one-smoothed frequencies.
  counts = np.bincount(train_ids, minlength=264) + 1.0
  assert e["unigram_loss"] == pytest.approx(-np.mean(np.log(counts / counts.sum())[targets]), rel=1e-9)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["model"]["d_model"] == 32 and saved["train"]["steps"] == 6
  samples = open(os.path.join(workdir, "samples.txt")).read()
  assert "=== step 3" in samples and "=== step 6" in samples and "[sample]" in samples
  assert out["eval_loss"] == pytest.approx(e["loss"])


def test_resume_is_exact_and_continues(text_file, uninterrupted, tmp_path):
  full_dir, _ = uninterrupted
  straight = [r["loss"] for r in read_metrics(full_dir)]
  # An interruption after step 3: the straight run's workdir without its step-6 checkpoint and the lines
  # after step 3 (what the same run stopped there would have left: runs are deterministic).
  workdir = str(tmp_path / "resumed")
  shutil.copytree(full_dir, workdir)
  cut_after(workdir, 3)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  train.train(tiny_config(text_file, **{"train.steps": 5}), workdir)  # Resumed, to step 5 only ...
  assert [r["loss"] for r in read_metrics(workdir)] == straight[:5]  # ... bit for bit (the horizon is pinned).
  train.train(tiny_config(text_file), workdir)  # The finished run's target raised: it trains on past step 5.
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert [r["loss"] for r in rows] == straight  # Bit for bit.


def test_one_device_and_eight_devices_agree(text_file, uninterrupted, tmp_path):
  """The trainer on a (2, 2, 2) mesh (sharded state, batch from process-local rows) gives the one-device
  losses; every family on five meshes is tests/test_meshes.py, resuming on a mesh the family test below."""
  full_dir, _ = uninterrupted
  import jax
  assert jax.device_count() == 8
  one = [r["loss"] for r in read_metrics(full_dir)]  # tiny_config runs on 1 device.
  workdir = str(tmp_path / "mesh222")
  train.train(tiny_config(text_file, **{"mesh.shape": (2, 2, 2), "mesh.num_devices": 0}), workdir)
  np.testing.assert_allclose([r["loss"] for r in read_metrics(workdir)], one, rtol=1e-5)


def test_workdir_of_another_shape_is_refused_and_kept(text_file, uninterrupted):
  workdir, _ = uninterrupted
  before = {p: open(os.path.join(workdir, p), "rb").read() for p in ("config.json", "metrics.jsonl")}
  with pytest.raises(ConfigError, match=r"model\.d_model=32.*model\.d_model=64"):
    train.train(tiny_config(text_file, **{"model.d_model": 64}), workdir)
  after = {p: open(os.path.join(workdir, p), "rb").read() for p in before}
  assert before == after
  assert "6" in os.listdir(os.path.join(workdir, "checkpoints"))


def test_init_from_loads_params_and_checks_shapes(text_file, uninterrupted, tmp_path, monkeypatch):
  src, _ = uninterrupted
  started = {}  # What train.init_from hands the run (its step-0 state, never saved), copied as returned.
  real = train.init_from
  monkeypatch.setattr(train, "init_from", lambda *a, **kw: started.update(flat_params(p := real(*a, **kw))) or p)
  workdir = str(tmp_path / "finetune")
  out = train.train(tiny_config(text_file, **{"train.init_from": src, "train.steps": 1,
                                              "train.eval_every": 1}), workdir)
  # The same model: every parameter starts at the source's latest (step 6) params, bit for bit.
  theirs = flat_params(workdir_lib.latest_params(src).params)
  assert sorted(started) == sorted(theirs)
  for name in theirs:
    np.testing.assert_array_equal(started[name], theirs[name], err_msg=name)
  scratch = [r["loss"] for r in read_metrics(src)][0]
  # And the run used them: step 1 from pre-trained params has a much lower loss than step 1 from scratch.
  assert read_metrics(workdir)[0]["loss"] < scratch - 0.3
  # Its eval: the logged line, and recomputed from the step-1 checkpoint's logits.
  logged = read_metrics(workdir, "eval")[-1]
  assert (out["eval_loss"], out["eval_accuracy"]) == (logged["loss"], logged["accuracy"])
  loss, accuracy = eval_in_numpy(tiny_config(text_file), workdir)
  assert (out["eval_loss"], out["eval_accuracy"]) == (pytest.approx(loss, rel=1e-5), pytest.approx(accuracy, abs=1e-12))
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
def test_every_family_trains_and_resumes_exactly_on_a_mesh(text_file, tmp_path, family):
  """On a (2, 2, 2) mesh (that meshes agree is tests/test_meshes.py): stopped after step 2 and resumed, the
  losses are bit-identical to the straight run's; a one-device scanned model fine-tunes from the
  mesh-trained unscanned checkpoint (layout and shardings convert on load)."""
  on_mesh = {"mesh.shape": (2, 2, 2), "mesh.num_devices": 0}
  cfg = lambda **kw: tiny_config(text_file, **{**FAMILIES[family], **on_mesh, "train.steps": 4,
                                               "train.eval_every": 4, "train.checkpoint_every": 2,
                                               "optim.decay_steps": 4, **kw})
  full = str(tmp_path / "full")
  out = train.train(cfg(), full)
  losses = [r["loss"] for r in read_metrics(full)]
  assert losses[-1] < losses[0]
  assert out["eval_loss"] == read_metrics(full, "eval")[-1]["loss"]
  assert not os.path.exists(os.path.join(full, "samples.txt"))  # Only language models sample.
  part = str(tmp_path / "part")
  train.train(cfg(**{"train.steps": 2}), part)
  train.train(cfg(), part)
  assert [r["loss"] for r in read_metrics(part)] == losses
  tuned = str(tmp_path / "tuned")
  train.train(cfg(**{"model.scan_layers": True, "train.init_from": full, "train.steps": 1, "mesh.shape": (1, 1, 1),
                     "mesh.num_devices": 1}), tuned)
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
  assert losses[-1] < losses[0]
  logged = read_metrics(full, "eval")[-1]
  assert (out["eval_loss"], out["eval_accuracy"]) == (logged["loss"], logged["accuracy"])
  # Recomputed from the step-4 params' logits on the eval batches (unpacked records, teacher-forced).
  loss, accuracy = eval_in_numpy(cfg(), full)
  assert out["eval_accuracy"] == pytest.approx(accuracy, abs=1e-12)
  assert out["eval_loss"] == pytest.approx(loss, rel=1e-5)
  part = str(tmp_path / "part")  # Stopped after step 2: the straight run's workdir as it was then.
  shutil.copytree(full, part)
  cut_after(part, 2)
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
  assert set(ev) == {"step", "split", "loss", "unigram_loss", "accuracy"}
  assert (out["eval_loss"], out["eval_accuracy"]) == (ev["loss"], ev["accuracy"])
  loss, accuracy = eval_in_numpy(cfg, str(tmp_path / "cls"))  # From the label logits of the 2 x 8 records.
  assert (ev["loss"], ev["accuracy"]) == (pytest.approx(loss, rel=1e-5), pytest.approx(accuracy, abs=1e-12))
  with pytest.raises(ConfigError, match="model.num_labels=2"):
    train.train(tiny_config(os.path.join(labelled_files, "*.csv"), **{
        **FAMILIES["encoder"], "model.encoder_head": "classifier", "model.num_labels": 3,
        "data.objective": "classification", "data.target_key": "label", "data.labels": "alpha,beta"}),
        str(tmp_path / "bad"))
  with pytest.raises(ConfigError, match="data.target_key"):
    train.train(tiny_config(os.path.join(labelled_files, "*.csv"), **{"data.objective": "text_to_text"}),
                str(tmp_path / "bad2"))
  prefix = tiny_config(text_file, **{"data.objective": "prefix_lm", "train.steps": 2, "train.eval_every": 2})
  out = train.train(prefix, str(tmp_path / "prefix"))
  ev = read_metrics(str(tmp_path / "prefix"), "eval")[-1]
  assert (out["eval_loss"], out["eval_accuracy"]) == (ev["loss"], ev["accuracy"])
  loss, accuracy = eval_in_numpy(prefix, str(tmp_path / "prefix"))  # Split points seeded per eval window.
  assert (ev["loss"], ev["accuracy"]) == (pytest.approx(loss, rel=1e-5), pytest.approx(accuracy, abs=1e-12))
