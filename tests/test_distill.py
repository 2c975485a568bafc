"""Distillation: the soft loss against numpy, a half-width student distilled from a trained teacher (the
logged loss is alpha T² KL + (1 - alpha) xent, alpha 0 is plain training, the teacher is untouched), the same
distilled losses on a (2, 2, 2) mesh as on one device, and the one-line refusals."""

import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from bigjax import distill
from bigjax import train
from bigjax.config import ConfigError


def test_soft_loss_equals_numpy():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 5, 7)).astype(np.float32), rng.normal(size=(2, 5, 7)).astype(np.float32)
  targets, weights = rng.integers(0, 7, (2, 5)), (rng.random((2, 5)) < 0.7).astype(np.float32)
  kl, xent = distill.kl_and_xent(s, t, targets, weights, 2.0)
  softmax = lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
  p, q = softmax(t.astype(np.float64) / 2), softmax(s.astype(np.float64) / 2)
  want_kl = ((p * (np.log(p) - np.log(q))).sum(-1) * weights).sum()
  logp = np.log(softmax(s.astype(np.float64)))
  want_xent = (-np.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum()
  np.testing.assert_allclose([float(kl), float(xent)], [want_kl, want_xent], rtol=1e-5)


@pytest.fixture(scope="module")
def teacher(text_file, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("teacher") / "w")
  train.train(tiny_config(text_file, **{"model.d_model": 64, "model.d_ff": 128, "train.steps": 12,
                                        "train.eval_every": 12, "train.checkpoint_every": 12}), workdir)
  return workdir


def student(text_file, teacher_dir, **kw):
  return tiny_config(text_file, **{"train.teacher": teacher_dir, "train.distill_alpha": 0.7,
                                   "train.distill_temperature": 2.0, "train.steps": 4, "train.eval_every": 4,
                                   "train.checkpoint_every": 4, "train.num_samples": 0, **kw})


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"]


def test_a_half_width_student_learns_from_the_teacher(text_file, teacher, tmp_path):
  before = {p: open(os.path.join(teacher, p), "rb").read() for p in ("config.json", "metrics.jsonl")}
  out = train.train(student(text_file, teacher), str(tmp_path / "distilled"))
  rows = metrics(str(tmp_path / "distilled"))
  for r in rows:  # The logged loss is the distillation objective.
    assert r["loss"] == pytest.approx(0.7 * 4 * r["kl"] + 0.3 * r["xent"], rel=1e-5)
  assert rows[-1]["kl"] < rows[0]["kl"] and np.isfinite(out["eval_loss"])
  plain = train.train(student(text_file, teacher, **{"train.distill_alpha": 0.0}), str(tmp_path / "alpha0"))
  alone = train.train(student(text_file, ""), str(tmp_path / "alone"))
  assert plain["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-6)  # alpha 0: cross-entropy only.
  assert [r["xent"] for r in metrics(str(tmp_path / "alpha0"))] == pytest.approx(
      [r["loss"] for r in metrics(str(tmp_path / "alone"))], rel=1e-6)
  assert before == {p: open(os.path.join(teacher, p), "rb").read() for p in ("config.json", "metrics.jsonl")}


def test_distillation_on_a_mesh_equals_one_device(text_file, teacher, tmp_path):
  one = train.train(student(text_file, teacher), str(tmp_path / "one"))
  mesh = train.train(student(text_file, teacher, **{"mesh.num_devices": 0, "mesh.shape": (2, 2, 2)}),
                     str(tmp_path / "mesh"))
  assert [r["loss"] for r in metrics(str(tmp_path / "mesh"))] == pytest.approx(
      [r["loss"] for r in metrics(str(tmp_path / "one"))], rel=1e-5)
  assert mesh["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)


def test_bad_teachers_are_named(text_file, teacher, tmp_path):
  cases = [
      (dict(**{"model.vocab_size": 300}), r"has model.vocab_size=264, the student 300: teacher and student must share"),
      (dict(**{"data.tokenizer": "code_sp4k.model", "model.vocab_size": 4096}), r"data.tokenizer='byte'"),
      (dict(**{"train.distill_alpha": 1.5}), r"train.distill_alpha=1.5: must be in \[0, 1\]"),
      (dict(**{"train.teacher": str(tmp_path / "nothing")}), r"neither a bigjax workdir nor a Hugging Face"),
      (dict(**{"model.family": "encoder", "data.objective": "masked_lm", "model.norm_position": "post"}),
       r"is a model.family='decoder' model; the student is 'encoder'"),
  ]
  for kw, error in cases:
    with pytest.raises(ConfigError, match=error):
      train.train(student(text_file, teacher, **kw), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "config.json")
