"""The CLI as a user meets it: help, and one-line errors with exit status 2 for bad input."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

QUICK = os.path.join(REPO, "experiments", "quickstart.py")


# `python -m bigjax.main ARGS`, then a last stdout line naming the TensorFlow modules the command loaded.
_REPORTING_MAIN = """
import sys
from bigjax import main
try:
  main.main(["bigjax"] + sys.argv[1:])
finally:
  loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
  print("tensorflow modules loaded:", loaded[:3], flush=True)
"""
NO_TF = "tensorflow modules loaded: []"


def bigjax(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-c", _REPORTING_MAIN, *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300)


def test_help_explains_itself():
  r = bigjax("--help")
  assert r.returncode == 0
  for word in ("bigjax train --config", "--workdir", "--config.a.b=value", "tokenizer train"):
    assert word in r.stdout


# Every bad-input case as a process of its own, forked from one that has imported bigjax (and the trainer)
# once: each case still gets a fresh interpreter state, its own exit status and its own stderr (a file),
# without paying the imports ten times. JAX's backend starts only in the children.
_EACH_MAIN = """
import json, os, sys, tempfile
from bigjax import main, train  # noqa: F401  (loaded before the forks)
out = []
for argv in json.loads(sys.argv[1]):
  err = tempfile.NamedTemporaryFile("w+", suffix=".err", delete=False)
  pid = os.fork()
  if pid == 0:
    os.dup2(err.fileno(), 2)
    code, sys.argv = 0, ["bigjax"] + argv  # As a started process has it (config_flags reads sys.argv).
    try:
      main.main(sys.argv)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # An uncaught error: its traceback, as Python would show it.
      import traceback
      traceback.print_exc()
      code = 1
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)
  _, status = os.waitpid(pid, 0)
  out.append({"status": os.waitstatus_to_exitcode(status), "stderr": open(err.name).read()})
  os.remove(err.name)
print(json.dumps(out))
"""

BAD_INPUT = [
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
]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
  """Each case in a workdir of its own, each a process of its own (forked, see _EACH_MAIN); the first also
  started as a user starts it, with the same result."""
  argvs = [[a.replace("{w}", str(tmp_path / f"w{i}")) for a in args] for i, (args, _) in enumerate(BAD_INPUT)]
  first = bigjax(*argvs[0])
  assert first.returncode == 2 and "Traceback" not in first.stderr, first.stderr[-2000:]
  r = subprocess.run([sys.executable, "-c", _EACH_MAIN, json.dumps(argvs)], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads(r.stdout.strip().splitlines()[-1])
  assert results[0]["stderr"].strip() == first.stderr.strip().splitlines()[-1]  # The same line both ways.
  for i, ((_, match), got) in enumerate(zip(BAD_INPUT, results)):
    assert got["status"] == 2, (argvs[i], got)
    errors = [line for line in got["stderr"].splitlines() if line.startswith("bigjax: error:")]
    assert len(errors) == 1 and match in errors[0], (argvs[i], got["stderr"][-2000:])
    assert "Traceback" not in got["stderr"], got["stderr"]
    workdir = tmp_path / f"w{i}"
    assert not workdir.exists() or not any(workdir.iterdir()), argvs[i]  # Nothing was written.


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
  assert NO_TF in second.stdout  # Its token cache exists: training needs no TensorFlow.
  startup = [line for line in second.stdout.splitlines() if line.startswith("bigjax: start-up ")]
  assert len(startup) == 1 and "to the end of the first step (imports " in startup[0], second.stdout
  # The first run's horizon (its 2 steps, raised past the quickstart's warmup), pinned and said at start.
  assert "(optim.decay_steps=2, raised past warmup_steps)" in second.stdout
  assert "train step 3/4" in second.stdout and "train step 1/" not in second.stdout
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "4"]
  decoded = bigjax("decode", "--workdir", "run", "--prompt", "0001 The", "--max_new_tokens", "5", cwd=tmp_path)
  assert decoded.returncode == 0, decoded.stderr[-3000:]
  assert "[prompt] 0001 The" in decoded.stdout and "[output] " in decoded.stdout


def test_help_of_convert_and_decode():
  for command, words in (("convert", ("--from_hf", "--to_hf", "init_from", "GPT2LMHeadModel")),
                         ("decode", ("--prompt", "--num_beams", "--top_p", "KV cache"))):
    r = bigjax(command, "--help")
    assert r.returncode == 0 and all(w in r.stdout for w in words), r.stdout


def test_convert_both_ways_fine_tune_and_decode(tmp_path, text_file):
  """A Hugging Face GPT-2 → a workdir → fine-tuned by `bigjax train`, decoded by `bigjax decode`
  (same tokens as transformers' greedy generate), and written back to a directory transformers loads."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  import numpy as np  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf_cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_inner=64, vocab_size=259, n_positions=64,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  model = transformers.GPT2LMHeadModel(hf_cfg).eval()
  model.save_pretrained(tmp_path / "hf")
  conv = str(tmp_path / "conv")
  r = bigjax("convert", "--from_hf", str(tmp_path / "hf"), "--workdir", conv)
  assert r.returncode == 0 and f"--config.train.init_from={conv}" in r.stdout, r.stderr[-2000:]
  assert NO_TF in r.stdout  # convert and decode --hf start without TensorFlow (measured 2.5 → 1.6 s, 6.6 → 2.5 s).
  again = bigjax("convert", "--from_hf", str(tmp_path / "hf"), "--workdir", conv)
  assert again.returncode == 2 and "already holds a run" in again.stderr

  r = bigjax("convert", "--workdir", conv, "--to_hf", str(tmp_path / "back"))
  assert r.returncode == 0 and NO_TF in r.stdout, r.stderr[-2000:]
  back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
  ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
  with torch.no_grad():
    np.testing.assert_allclose(back(ids).logits.numpy(), model(ids).logits.numpy(), atol=1e-5)

  r = bigjax("decode", "--workdir", conv, "--prompt_ids", "5,6,7", "--prompt_ids", "40,41", "--max_new_tokens", "6")
  assert r.returncode == 0, r.stderr[-2000:]
  straight = bigjax("decode", "--hf", str(tmp_path / "hf"), "--prompt_ids", "5,6,7", "--max_new_tokens", "6")
  assert straight.returncode == 0 and NO_TF in straight.stdout, straight.stderr[-2000:]
  with torch.no_grad():
    for prompt in ([5, 6, 7], [40, 41]):
      want = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0)[0]
      assert f"[ids] {','.join(map(str, want.tolist()))}" in r.stdout, r.stdout
      if prompt == [5, 6, 7]:  # Straight from the Hugging Face directory: the same tokens.
        assert f"[ids] {','.join(map(str, want.tolist()))}" in straight.stdout, straight.stdout
  bf16 = bigjax("decode", "--hf", str(tmp_path / "hf"), "--prompt_ids", "5,6,7", "--max_new_tokens", "6",
                "--dtype", "bfloat16")  # Rounded weights may pick other tokens; the run and its shape are checked.
  ids = [line for line in bf16.stdout.splitlines() if line.startswith("[ids] ")]
  assert bf16.returncode == 0 and len(ids) == 1 and ids[0][6:].split(",")[:3] == ["5", "6", "7"], bf16.stderr[-2000:]
  assert len(ids[0][6:].split(",")) <= 9

  tiny = ["--config.model.d_model=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
          "--config.model.d_ff=64", "--config.model.vocab_size=259", "--config.model.max_len=64",
          "--config.data.tokenizer=byte", f"--config.data.source={text_file}", "--config.data.seq_len=32",
          "--config.data.batch_size=8", "--config.data.eval_batches=1", "--config.train.steps=1",
          "--config.train.num_samples=0", "--config.mesh.num_devices=1"]
  tuned = bigjax("train", "--config", QUICK, "--workdir", str(tmp_path / "tuned"),
                 f"--config.train.init_from={conv}", *tiny)
  assert tuned.returncode == 0, tuned.stderr[-3000:]
  assert f"init_from {conv}" in tuned.stdout and "parameters loaded" in tuned.stdout
  refused = bigjax("train", "--config", QUICK, "--workdir", conv, *tiny)
  assert refused.returncode == 2 and "holds a model converted from" in refused.stderr
