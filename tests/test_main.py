"""The CLI as a user meets it: help, and one-line errors with exit status 2 for bad input."""

import os
import subprocess
import sys

import pytest

from conftest import REPO

QUICK = os.path.join(REPO, "experiments", "quickstart.py")


def bigjax(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "bigjax.main", *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300)


def test_help_explains_itself():
  r = bigjax("--help")
  assert r.returncode == 0
  for word in ("bigjax train --config", "--workdir", "--config.a.b=value", "tokenizer train"):
    assert word in r.stdout


@pytest.mark.parametrize("args,match", [
    (["train", "--config", "no/such/config.py", "--workdir", "{w}"], "no/such/config.py"),
    (["train", "--config", QUICK, "--workdir", "{w}", "--config.train.stepz=3"], "stepz"),
    (["train", "--config", QUICK, "--workdir", "{w}", "--config.train.steps=abc"], "steps"),
    (["train", "--config", QUICK, "--workdir", "{w}", "--config.mesh.shape=(3,1,1)"], "mesh.shape=(3, 1, 1)"),
    (["train", "--config", QUICK, "--workdir", "{w}", "--config.data.batch_size=3", "--config.mesh.shape=(2,1,1)",
      "--config.mesh.num_devices=2"], "data.batch_size=3 does not divide"),
    (["train", "--config", QUICK, "--workdir", "{w}", "--config.data.source=/no/such/*.txt"], "data.source="),
    (["train", "--config", QUICK, "--workdir", "{w}", "--config.data.seq_len=512"], "data.seq_len=512"),
    (["train", "--config", QUICK, "--workdir", "{w}", "--config.model.vocab_size=100"], "model.vocab_size=100"),
    (["train", "--config", QUICK], "--workdir is required"),
    (["fly"], "unknown command 'fly'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, match):
  workdir = tmp_path / "w"
  r = bigjax(*[a.replace("{w}", str(workdir)) for a in args])
  assert r.returncode == 2, r.stderr[-2000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith("bigjax: error:")]
  assert len(errors) == 1 and match in errors[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert not workdir.exists() or not any(workdir.iterdir())  # Nothing was written.


def test_cli_trains_then_resumes_in_a_relative_workdir(tmp_path, text_file):
  tiny = ["--config.model.d_model=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
          "--config.model.d_ff=64", "--config.model.vocab_size=259", "--config.data.tokenizer=byte",
          f"--config.data.source={text_file}", "--config.data.seq_len=32", "--config.data.batch_size=8",
          "--config.data.eval_batches=1", "--config.train.log_every=1", "--config.train.eval_every=2",
          "--config.train.checkpoint_every=2", "--config.train.num_samples=1", "--config.mesh.num_devices=1"]
  first = bigjax("train", "--config", QUICK, "--workdir", "run", "--config.train.steps=2", *tiny, cwd=tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "state from scratch" in first.stdout and "train step 2/2" in first.stdout
  assert "eval  step 2" in first.stdout and "Traceback" not in first.stderr
  second = bigjax("train", "--config", QUICK, "--workdir", "run", "--config.train.steps=4", *tiny, cwd=tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "state from this workdir's checkpoint at step 2" in second.stdout
  assert "train step 3/4" in second.stdout and "train step 1/" not in second.stdout
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "4"]
