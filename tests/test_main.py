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
