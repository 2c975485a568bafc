"""Multi-host training: two local processes (2 fake CPU devices each, gloo over 127.0.0.1) train exactly
like one process over the same 4 devices, and checkpoints move between process counts and meshes.

The runs are real `bigjax train` commands, made once for the module and read by several tests (a run is
mostly start-up and compilation): the two-process and one-process runs side by side, then the two resumes.
Every child is killed when the module ends, and a run that fails or hangs fails with its stderr tail.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from bigjax import partitioning
from bigjax.config import ConfigError

TIMEOUT_S = 420  # A run takes about a minute on a busy 2-core machine; a stuck gloo must not hang the suite.

CONFIG = '''"""A tiny decoder run for tests/test_multihost.py, on all the devices a process has."""
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config


def get_config(arg=None):
  return tiny_config({text_file!r}, **{{"mesh.num_devices": 0}})
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Run:
  """One `bigjax train` run as `processes` local processes with `4 // processes` CPU devices each."""

  def __init__(self, config: str, workdir: str, *overrides: str, processes: int = 1, devices: int = 4):
    self.workdir, self.procs, self.logs = workdir, [], []
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices // processes}")
    port = _free_port()
    for i in range(processes):
      dist = (["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(processes), "--process_id",
               str(i)] if processes > 1 else [])
      out, err = open(f"{workdir}.p{i}.out", "w"), open(f"{workdir}.p{i}.err", "w")
      self.logs.append((out.name, err.name))
      self.procs.append(subprocess.Popen(
          [sys.executable, "-m", "bigjax.main", "train", "--config", config, "--workdir", workdir, *dist,
           *overrides], cwd=REPO, env=env, stdout=out, stderr=err))
      out.close(), err.close()

  def wait(self, deadline: float) -> "Run":
    """Waits for every process; a failure or a timeout kills the rest and shows each one's stderr tail."""
    failed_at = None
    while any(p.poll() is None for p in self.procs):
      if failed_at is None and any(p.poll() for p in self.procs):
        failed_at = time.time()  # The others may wait for it in a collective: give them a moment to end.
      if time.time() > deadline or (failed_at and time.time() > failed_at + 20):
        self.kill()
        break
      time.sleep(0.5)
    codes = [p.returncode for p in self.procs]
    if any(codes):
      raise AssertionError(f"{self.workdir}: exit status {codes} (negative: killed at the deadline or after "
                           f"another process failed)\n{self.tails()}")
    return self

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def tails(self) -> str:
    return "\n".join(f"--- process {i} stderr:\n{read(err)[-3000:]}\n--- process {i} stdout:\n{read(out)[-1500:]}"
                     for i, (out, err) in enumerate(self.logs))

  def stdout(self, i: int = 0) -> str:
    return read(self.logs[i][0])


def read(path: str) -> str:
  with open(path, errors="replace") as f:
    return f.read()


def metrics(workdir: str, split: str = "train") -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def losses(workdir: str, split: str = "train") -> dict[int, float]:
  return {r["step"]: r["loss"] for r in metrics(workdir, split)}


def interrupted_copy(workdir: str, dest: str, step: int) -> str:
  """The workdir as if the run had stopped after `step`: later checkpoints and metrics never happened."""
  shutil.copytree(workdir, dest)
  for name in os.listdir(os.path.join(dest, "checkpoints")):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(os.path.join(dest, "checkpoints", name))
  with open(os.path.join(dest, "metrics.jsonl")) as f:
    kept = [line for line in f if json.loads(line)["step"] <= step]
  with open(os.path.join(dest, "metrics.jsonl"), "w") as f:
    f.writelines(kept)
  return dest


@pytest.fixture(scope="module")
def config_file(text_file, tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("config") / "tiny.py"
  path.write_text(CONFIG.format(tests=os.path.dirname(__file__), text_file=text_file))
  return str(path)


@pytest.fixture(scope="module")
def runs(config_file, tmp_path_factory):
  """Decoder runs of 2 x 2 and 1 x 4 devices for 6 steps (checkpoints at 3 and 6), then each one's
  step-3 checkpoint resumed with the other process count on a (1, 2, 2) mesh."""
  d = tmp_path_factory.mktemp("multihost")
  deadline = time.time() + TIMEOUT_S
  started = []
  try:
    two = Run(config_file, str(d / "two"), processes=2)
    one = Run(config_file, str(d / "one"), "--config.train.num_samples=0")
    started += [two, one]
    two.wait(deadline), one.wait(deadline)
    mesh = ["--config.mesh.shape=(1,2,2)", "--config.train.num_samples=0"]
    two_to_one = Run(config_file, interrupted_copy(two.workdir, str(d / "two_to_one"), 3), *mesh)
    one_to_two = Run(config_file, interrupted_copy(one.workdir, str(d / "one_to_two"), 3), *mesh, processes=2)
    started += [two_to_one, one_to_two]
    two_to_one.wait(deadline), one_to_two.wait(deadline)
    yield {"two": two, "one": one, "two_to_one": two_to_one, "one_to_two": one_to_two}
  finally:
    for r in started:
      r.kill()


def test_two_processes_train_like_one(runs):
  two, one = runs["two"].workdir, runs["one"].workdir
  assert "bigjax: process 0 of 2, coordinator 127.0.0.1:" in runs["two"].stdout(0)
  assert "4 cpu device(s), 2 process(es)" in runs["two"].stdout(0)
  assert "1 process (no --coordinator_address" in runs["one"].stdout()
  assert "train step" not in runs["two"].stdout(1)  # Only process 0 logs ...
  assert sorted(losses(two)) == [1, 2, 3, 4, 5, 6]  # ... and writes metrics, once a step.
  for split in ("train", "eval"):
    a, b = losses(two, split), losses(one, split)
    assert sorted(a) == sorted(b)
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=1e-5)
  samples = read(os.path.join(two, "samples.txt"))
  assert samples.count("=== step 3 ") == 1 and samples.count("=== step 6 ") == 1
  assert json.load(open(os.path.join(two, "config.json")))["mesh"]["num_devices"] == 0
  for step in ("3", "6"):  # Both processes took part in each checkpoint, and it is complete.
    assert os.path.exists(os.path.join(two, "checkpoints", step, "commit_success.txt"))


def test_checkpoints_move_between_process_counts_and_meshes(runs):
  want = losses(runs["one"].workdir)
  for name, source in (("two_to_one", "2 x 2 devices → 1 x 4"), ("one_to_two", "1 x 4 devices → 2 x 2")):
    run = runs[name]
    assert "state from this workdir's checkpoint at step 3" in run.stdout(), source
    assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in run.stdout(), source
    got = losses(run.workdir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6], source
    np.testing.assert_allclose([got[s] for s in (4, 5, 6)], [want[s] for s in (4, 5, 6)], rtol=1e-5,
                               err_msg=source)
    np.testing.assert_allclose(losses(run.workdir, "eval")[6], losses(runs["one"].workdir, "eval")[6], rtol=1e-5)


# ------------------------------------------------------------------------------- flags and checks

@pytest.mark.parametrize("flags,match", [
    (("127.0.0.1:1234", None, None), "--coordinator_address given without --num_processes, --process_id"),
    ((None, 2, 0), "--num_processes, --process_id given without --coordinator_address"),
    (("127.0.0.1:1234", 2, 2), r"--process_id=2: must be in \[0, 2\)"),
    (("127.0.0.1:1234", 2, -1), r"--process_id=-1: must be in \[0, 2\)"),
    (("127.0.0.1:1234", 0, 0), "--num_processes=0: must be at least 1"),
    (("127.0.0.1", 2, 0), "--coordinator_address='127.0.0.1': must be HOST:PORT"),
    (("host:99999", 2, 0), "--coordinator_address='host:99999': must be HOST:PORT"),
])
def test_bad_flags_are_one_line_before_jax_starts(flags, match):
  with pytest.raises(ConfigError, match=match) as e:
    partitioning.initialize_distributed(*flags)
  assert "\n" not in str(e.value)


def test_cli_rejects_partial_flags_with_exit_2(tmp_path):
  r = subprocess.run([sys.executable, "-m", "bigjax.main", "train", "--config",
                      os.path.join(REPO, "experiments", "quickstart.py"), "--workdir", str(tmp_path / "w"),
                      "--num_processes", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith("bigjax: error:")]
  assert len(errors) == 1 and "--num_processes given without --coordinator_address" in errors[0], r.stderr
  assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()


def test_missing_processes_end_in_one_line_not_a_hang():
  """JAX aborts from C++ when not every process registers; the watchdog says why first, in one line."""
  code = ("from bigjax import partitioning\n"
          f"partitioning.initialize_distributed('127.0.0.1:{_free_port()}', 2, 1, timeout_s=2)\n")
  t0 = time.time()
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith("bigjax: error: jax.distributed.initialize with "
                                                      "--coordinator_address=127.0.0.1:"), r.stderr[-2000:]
  assert "not every process joined within 2 s" in r.stderr and time.time() - t0 < 60


def test_cluster_from_env_reads_what_jax_reads():
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  assert partitioning.cluster_from_env({**slurm, "SLURM_NTASKS": "4"}) == "SLURM job 7 (SLURM_NTASKS=4)"
  assert partitioning.cluster_from_env({**slurm, "SLURM_NTASKS": "1"}) is None  # One task: one process.
  assert partitioning.cluster_from_env({"SLURM_NTASKS": "4"}) is None  # Not inside `srun`: JAX finds nothing.
  assert partitioning.cluster_from_env({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "2"}) == \
      "Open MPI (OMPI_COMM_WORLD_SIZE=2)"
  assert partitioning.cluster_from_env({"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3", "TPU_WORKER_ID": "1"}) == \
      "Cloud TPU (TPU_WORKER_HOSTNAMES lists 4 hosts)"
  assert partitioning.cluster_from_env({"TPU_WORKER_HOSTNAMES": "h0", "MEGASCALE_NUM_SLICES": "2"}) == \
      "Cloud TPU (TPU_WORKER_HOSTNAMES lists 1 host x 2 slices)"
  assert partitioning.cluster_from_env({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert partitioning.cluster_from_env({}) is None


def test_each_process_must_hold_its_own_rows():
  """Simulated: 8 devices, process = device id // 4 (or interleaved). A batch axis that spans the processes
  is fine; a mesh that replicates the batch across processes would silently train on another batch."""
  blocks, interleaved = (lambda d: d.id // 4), (lambda d: d.id % 2)
  for shape in [(8, 1, 1), (2, 2, 2), (1, 2, 4), (2, 1, 4)]:
    mesh = partitioning.make_mesh(shape)
    partitioning.check_process_rows(16, mesh, 2, blocks)
    assert partitioning.process_rows(16, mesh, blocks)[1] == set(range(8, 16))
  partitioning.check_process_rows(16, partitioning.make_mesh((8, 1, 1)), 2, interleaved)  # Rows 0, 2, ...: fine.
  with pytest.raises(ConfigError, match=r"mesh.shape=\(1, 1, 8\): process 0's devices hold 16 of the 16 rows"):
    partitioning.check_process_rows(16, partitioning.make_mesh((1, 1, 8)), 2, blocks)
  with pytest.raises(ConfigError, match=r"make data x fsdp \(now 2\) a multiple of the process count, 2"):
    partitioning.check_process_rows(16, partitioning.make_mesh((2, 1, 4)), 2, interleaved)
  with pytest.raises(ConfigError, match="mesh.num_devices=4 leaves out process 1's devices"):
    partitioning.check_process_rows(16, partitioning.make_mesh((4, 1, 1), 4), 2, blocks)
  partitioning.check_batch(16, partitioning.make_mesh((1, 1, 8)), 1)  # One process: nothing to check.
