"""Runs you can trust: preemption, crash-safe saves, non-finite steps, accumulation, mixed precision,
checkpoint policy and the errors of bad checkpoints and workdirs."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, tiny_config
from bigjax import checkpoint as ckpt_lib
from bigjax import config as config_lib
from bigjax import models
from bigjax import optim
from bigjax import steps
from bigjax import train
from bigjax import workdir as workdir_lib
from bigjax.config import ConfigError
from bigjax.data import pipeline


def losses_by_step(workdir):
  """The last loss logged for each step (a crashed run may have logged steps that the rerun redoes)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if r["split"] == "train":
        out[r["step"]] = r["loss"]
  return out


LONG = {"train.steps": 150, "train.log_every": 1, "train.eval_every": 1000, "train.checkpoint_every": 50,
        "train.num_samples": 0}


def start_cli(cfg, workdir, tmp_path):
  """`bigjax train` on `cfg` in a real process (the config passes through a JSON file)."""
  cfg_json = tmp_path / "cfg.json"
  cfg_json.write_text(cfg.to_json_best_effort())
  cfg_py = tmp_path / "cfg.py"
  cfg_py.write_text("import json, ml_collections\n\n\ndef get_config(arg=None):\n"
                    f"  return ml_collections.ConfigDict(json.load(open({str(cfg_json)!r})))\n")
  return subprocess.Popen([sys.executable, "-u", "-m", "bigjax.main", "train", "--config", str(cfg_py),
                           "--workdir", str(workdir)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def read_until(proc, needle, timeout=240):
  seen, t0 = [], time.time()
  for line in proc.stdout:
    seen.append(line)
    if needle in line:
      return seen
    assert time.time() - t0 < timeout, "".join(seen[-30:])
  pytest.fail(f"the run ended before printing {needle!r}:\n" + "".join(seen[-30:]))


@pytest.fixture(scope="module")
def finished(text_file, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished"))
  train.train(tiny_config(text_file, **{"train.num_samples": 0}), workdir)
  return workdir


@pytest.fixture(scope="module")
def straight(text_file, tmp_path_factory):
  """The uninterrupted run the interrupted ones must reproduce bit for bit."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  train.train(tiny_config(text_file, **LONG), workdir)
  return losses_by_step(workdir)


def test_sigterm_checkpoints_exits_0_and_resumes_exactly(text_file, straight, tmp_path):
  """A real `bigjax train` process sent SIGTERM mid-run: exit status 0, then the same command finishes."""
  workdir = tmp_path / "run"
  cfg = tiny_config(text_file, **LONG)
  proc = start_cli(cfg, workdir, tmp_path)
  read_until(proc, "train step 5/")
  proc.send_signal(signal.SIGTERM)
  rest = proc.stdout.read()
  assert proc.wait(timeout=120) == 0, rest[-3000:]
  stopped = [l for l in rest.splitlines() if "stopped by" in l]
  assert len(stopped) == 1 and "SIGTERM" in stopped[0], rest[-3000:]
  step = int(stopped[0].split("after step ")[1].split(";")[0])
  assert 5 <= step < LONG["train.steps"]  # Stopped early, at the step in flight.
  assert str(step) in os.listdir(workdir / "checkpoints")
  assert max(losses_by_step(workdir)) == step
  # The same command again continues at the next step; every step's loss equals the straight run's.
  out = train.train(cfg, str(workdir))
  assert not out["preempted"] and out["stopped_at"] == LONG["train.steps"]
  assert losses_by_step(workdir) == straight


def test_ctrl_c_stops_after_the_step_in_flight(text_file, straight, tmp_path, monkeypatch, capsys):
  """SIGINT (in this process, raised while step 7 is logged): the step finishes, is saved, train returns."""
  write = workdir_lib.MetricsWriter.write

  def write_then_interrupt(self, step, split, values):
    write(self, step, split, values)
    if split == "train" and step == 7:
      os.kill(os.getpid(), signal.SIGINT)
  monkeypatch.setattr(workdir_lib.MetricsWriter, "write", write_then_interrupt)
  workdir = str(tmp_path / "run")
  cfg = tiny_config(text_file, **LONG)
  out = train.train(cfg, workdir)
  assert out["preempted"] and out["stopped_at"] in (7, 8)
  assert "stopped by SIGINT" in capsys.readouterr().out
  assert str(out["stopped_at"]) in os.listdir(os.path.join(workdir, "checkpoints"))
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Restored after the run.
  monkeypatch.undo()
  train.train(cfg, workdir)
  assert losses_by_step(workdir) == straight


def test_kill_during_save_leaves_the_previous_checkpoint(text_file, straight, tmp_path, capsys):
  cfg = tiny_config(text_file, **{**LONG, "train.checkpoint_every": 1})
  workdir = tmp_path / "run"
  ckpts = workdir / "checkpoints"
  for _ in range(3):  # A save is in flight nearly all the time; retry should the kill land between two.
    proc = start_cli(cfg, workdir, tmp_path)
    read_until(proc, "train step 10/")
    t0, partial = time.time(), []
    while not partial and time.time() - t0 < 30:
      partial = [p for p in os.listdir(ckpts) if "tmp" in p]
    proc.kill()
    proc.wait()
    proc.stdout.close()
    if [p for p in os.listdir(ckpts) if "tmp" in p]:
      break
  partial = [p for p in os.listdir(ckpts) if "tmp" in p]
  assert partial, "no kill landed during a save"
  complete = max(int(p) for p in os.listdir(ckpts) if p.isdigit())
  cfg.train.checkpoint_every = 50  # Not pinned, and does not change the run: the rest goes faster.
  out = train.train(cfg, str(workdir))
  log = capsys.readouterr().out
  assert f"removed {len(partial)} incomplete checkpoint(s)" in log and f"the last complete one is step {complete}" in log
  assert f"checkpoint at step {complete}" in log
  assert out["stopped_at"] == LONG["train.steps"] and not [p for p in os.listdir(ckpts) if "tmp" in p]
  assert losses_by_step(workdir) == straight


def test_metrics_beyond_the_restored_step_are_dropped(text_file, finished, tmp_path):
  """A run killed after logging steps it never checkpointed: the rerun logs them again, once."""
  import shutil
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:  # As if steps 7, 8 had run before a kill.
    f.write(json.dumps({"step": 7, "split": "train", "loss": 1.0}) + "\n")
    f.write(json.dumps({"step": 8, "split": "eval", "loss": 1.0}) + "\n")
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  train.train(tiny_config(text_file, **{"train.steps": 7, "train.num_samples": 0}), workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  steps = [r["step"] for r in rows if r["split"] == "train"]
  assert steps == [1, 2, 3, 4, 5, 6, 7] and rows[-1]["loss"] != 1.0


NONFINITE = {"optim.learning_rate": 1e30, "optim.warmup_steps": 4, "optim.clip_norm": 0.0,
             "train.checkpoint_every": 1, "train.num_samples": 0}


def test_nonfinite_loss_stops_naming_the_step_and_keeps_good_checkpoints(text_file, tmp_path):
  # Warmup makes step 1's rate 0 and step 2's 2.5e29: params blow up, step 3's loss is NaN.
  workdir = str(tmp_path / "nan")
  with pytest.raises(FloatingPointError, match=r"at step 3; last finite loss \d+\.\d+ at step 2.*kept: \[1, 2\]"):
    train.train(tiny_config(text_file, **NONFINITE), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_nonfinite_steps_are_skipped_when_asked(text_file, tmp_path):
  workdir = str(tmp_path / "skip")
  out = train.train(tiny_config(text_file, **NONFINITE, **{"train.on_nonfinite": "skip"}), workdir)
  assert out["train_skipped_steps"] == 4 and out["stopped_at"] == 6
  # Skipped updates left the step-2 state in place: every checkpoint after it holds the same, finite params.
  ck = ckpt_lib.Checkpointer(workdir)
  p2, p6 = (jax.device_get(ck.restore_params(s, ck.param_metadata(s))) for s in (4, 6))
  ck.close()
  for a, b in zip(jax.tree_util.tree_leaves(p2), jax.tree_util.tree_leaves(p6)):
    assert np.all(np.isfinite(b)) and np.array_equal(a, b)


def _step_parts(text_file, mesh_shape=(1, 1, 1), **overrides):
  cfg = tiny_config(text_file, **{"model.dropout_rate": 0.0, "data.batch_size": 16, **overrides})
  mcfg = config_lib.validate(cfg)
  data = pipeline.build(cfg, 0, 1)
  module, tx = models.build(mcfg), optim.make(cfg)
  batch = data.train.example_batch()
  return cfg, mcfg, module, tx, batch


@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_gradient_accumulation_equals_one_big_batch(text_file, family):
  from test_train import FAMILIES
  from bigjax import partitioning
  cfg, mcfg, module, tx, batch = _step_parts(text_file, **FAMILIES.get(family, {}))
  params = steps.init_params(module, jax.random.PRNGKey(0))
  params = jax.tree_util.tree_map(lambda x: x, nn_unbox(params))
  state = steps.TrainState(jnp.zeros([], jnp.int32) + 5, params, tx.init(params))
  mesh = partitioning.make_mesh((2, 2, 2), 0)
  out = {}
  for k in (1, 4):
    with partitioning.activate(mesh, partitioning.RULES):
      step = jax.jit(steps.make_train_step(module, tx, optim.schedule(cfg), 0, grad_accum_steps=k))
      new, metrics = step(state, partitioning.global_batch(batch, mesh))
    out[k] = (jax.device_get(new.params), jax.device_get(metrics))
  (p1, m1), (p4, m4) = out[1], out[4]
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
  delta = lambda p: np.concatenate([(a - b).ravel() for a, b in zip(jax.tree_util.tree_leaves(p),
                                                                      jax.tree_util.tree_leaves(params))])
  d1, d4 = delta(p1), delta(p4)
  assert np.linalg.norm(d4 - d1) <= 1e-5 * np.linalg.norm(d1)  # The same update, to float summation order.


def nn_unbox(tree):
  import flax.linen as nn
  return nn.meta.unbox(tree)


def test_gradient_accumulation_holds_one_microbatch_of_activations(text_file):
  cfg, mcfg, module, tx, batch = _step_parts(text_file, **{"model.d_model": 64, "model.d_ff": 256,
                                                           "data.seq_len": 64, "data.batch_size": 32,
                                                           "model.max_len": 64})
  abstract = jax.eval_shape(lambda: (lambda p: steps.TrainState(jnp.zeros([], jnp.int32), p, tx.init(p)))(
      nn_unbox(steps.init_params(module, jax.random.PRNGKey(0)))))
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  temp = {}
  for k in (1, 8):
    step = jax.jit(steps.make_train_step(module, tx, optim.schedule(cfg), 0, grad_accum_steps=k))
    temp[k] = step.lower(abstract, spec).compile().memory_analysis().temp_size_in_bytes
  assert temp[8] < temp[1] / 3, temp  # Activations of 4 rows instead of 32 (params, grads stay).


def test_grad_accum_steps_must_divide_the_batch(text_file, tmp_path):
  with pytest.raises(ConfigError, match=r"train.grad_accum_steps=3 does not divide data.batch_size=8"):
    train.train(tiny_config(text_file, **{"train.grad_accum_steps": 3}), str(tmp_path / "a"))
  with pytest.raises(ConfigError, match=r"train.grad_accum_steps=4: microbatches of 2 rows .* 8 devices"):
    train.train(tiny_config(text_file, **{"train.grad_accum_steps": 4, "mesh.num_devices": 0}), str(tmp_path / "b"))
  assert not os.path.exists(tmp_path / "a" / "config.json")


def test_accumulated_run_equals_the_plain_run(text_file, finished, tmp_path):
  workdir = str(tmp_path / "accum")
  train.train(tiny_config(text_file, **{"train.grad_accum_steps": 4, "train.num_samples": 0}), workdir)
  np.testing.assert_allclose(list(losses_by_step(workdir).values()), list(losses_by_step(finished).values()),
                             rtol=1e-5)


def test_bfloat16_tracks_float32(text_file, tmp_path):
  """bfloat16 compute (float32 params, optimizer state, softmax and loss) on the tiny model: measured
  per-step |Δloss| 1.6e-4 over 12 steps, eval 2e-5 (the quickstart's: 0.011 over 30 steps)."""
  runs = {}
  for dtype in ("float32", "bfloat16"):
    out = train.train(tiny_config(text_file, **{"model.dtype": dtype, "train.steps": 12, "train.eval_every": 12,
                                                "train.checkpoint_every": 12, "train.num_samples": 0,
                                                "data.eval_batches": 1}), str(tmp_path / dtype))
    runs[dtype] = (np.array(list(losses_by_step(tmp_path / dtype).values())), out["eval_loss"])
  (l32, e32), (l16, e16) = runs["float32"], runs["bfloat16"]
  assert l32[-1] < l32[0] - 0.3  # It learns.
  assert np.max(np.abs(l16 - l32)) < 0.01 and abs(e16 - e32) < 0.01, (l16 - l32, e16, e32)
  assert np.any(l16 != l32)  # The compute really was bfloat16.
  # Parameters and optimizer state stay float32.
  ck = ckpt_lib.Checkpointer(str(tmp_path / "bfloat16"))
  dtypes = {str(m.dtype) for m in jax.tree_util.tree_leaves(ck.state_metadata(12)) if hasattr(m, "dtype")}
  ck.close()
  assert dtypes == {"float32", "int32"}  # int32: the step counter and the optimizer's count.


def test_best_checkpoint_is_kept_besides_the_latest(text_file, tmp_path):
  workdir = str(tmp_path / "best")
  # "Best" as the highest eval loss: step 1's (the loss falls), kept beside the latest 2.
  train.train(tiny_config(text_file, **{"train.eval_every": 1, "train.checkpoint_every": 1, "train.keep_checkpoints": 2,
                                        "train.best_metric": "loss", "train.best_mode": "max",
                                        "train.num_samples": 0}), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["1", "5", "6"]
  with pytest.raises(ConfigError, match=r"train.best_metric='bleu': allowed values are '', 'loss'"):
    train.train(tiny_config(text_file, **{"train.best_metric": "bleu"}), str(tmp_path / "x"))


def test_synchronous_saves_give_the_same_run(text_file, finished, tmp_path):
  workdir = str(tmp_path / "sync")
  train.train(tiny_config(text_file, **{"train.num_samples": 0, "train.async_checkpoints": False}), workdir)
  assert losses_by_step(workdir) == losses_by_step(finished)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


def test_checkpoint_of_another_shape_is_named(text_file, finished, tmp_path):
  import shutil
  workdir = str(tmp_path / "other")
  shutil.copytree(finished, workdir)
  os.remove(os.path.join(workdir, "config.json"))  # Nothing left to say the shapes differ, but the arrays.
  with pytest.raises(ckpt_lib.CheckpointError, match=r"holds \['params'\]\['token_embed'\]\['embedding'\] of shape "
                                                     r"\(264, 32\), but this model's is \(300, 32\)"):
    train.train(tiny_config(text_file, **{"model.vocab_size": 300, "train.num_samples": 0}), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


def test_corrupted_checkpoint_is_a_one_line_error_and_kept(text_file, finished, tmp_path):
  import shutil
  workdir = str(tmp_path / "broken")
  shutil.copytree(finished, workdir)
  state = os.path.join(workdir, "checkpoints", "6", "state")
  for root, _, files in os.walk(state):  # Truncate every array file of the latest checkpoint.
    for name in files:
      if name not in ("_METADATA", "_CHECKPOINT_METADATA", "_sharding"):
        open(os.path.join(root, name), "wb").close()
  with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoints/6 is corrupted or incomplete .*resume from step 3") as e:
    train.train(tiny_config(text_file, **{"train.num_samples": 0, "train.steps": 8}), workdir)
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


def test_unwritable_workdir_and_full_disk(text_file, finished, tmp_path, monkeypatch):
  with pytest.raises(ckpt_lib.CheckpointError, match=r"--workdir=/proc/bigjax/run is not writable"):
    train.train(tiny_config(text_file), "/proc/bigjax/run")
  import shutil
  workdir = str(tmp_path / "full")
  shutil.copytree(finished, workdir)

  def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(ckpt_lib.ocp.CheckpointManager, "save", no_space)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"saving checkpoint 9 .* No space left on device; the "
                                                     r"checkpoints already there are kept"):
    train.train(tiny_config(text_file, **{"train.num_samples": 0, "train.steps": 9}), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


def test_no_pickle_in_checkpoint_loading():
  import ast
  for root in ("bigjax",):
    for dirpath, _, files in os.walk(os.path.join(REPO, root)):
      for name in files:
        if name.endswith(".py"):
          text = open(os.path.join(dirpath, name)).read()
          tree = ast.parse(text)
          imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                      for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
          assert not imported & {"pickle", "cloudpickle", "dill", "joblib"}, name
          assert "allow_pickle=True" not in text, name
