"""Multi-host training: two local processes (2 fake CPU devices each, gloo over 127.0.0.1) train exactly
like one process over the same 4 devices; checkpoints move between process counts and meshes; SIGTERM to
one process stops both at one step and the same command resumes bit-exactly; a process killed mid-run ends
its partner with one line.

The runs are real `bigjax train` commands, started once for the module and read by several tests. A run is
mostly start-up and compilation, so runs go side by side and share JAX's persistent compilation cache (the
suite's, from conftest): the uninterrupted two- and one-process runs first, then (their programs compiled) a
preempted pair and a pair that loses a process, and each resume as soon as its source has ended. Every child
is killed when the module ends, and a run that fails or hangs fails with its stderr tail.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TEST_XLA_FLAGS, cut_after
from bigjax import partitioning
from bigjax.config import ConfigError

TIMEOUT_S = 300  # All the runs take well under a minute; a stuck gloo must not hang the suite.
# JAX's heartbeat timeout in the runs that lose a process (100 s by default). 20, not 10: the pair starts
# while five other processes train on this project's two cores, and on a slow day (CI, 2026-12-03) both of
# its processes missed 10 s of heartbeats before their first step and each reported the other lost.
HEARTBEAT_S = 20
STEPS = 12
HELPER = os.path.join(os.path.dirname(__file__), "multihost_helpers.py")

CONFIG = '''"""A tiny decoder run for tests/test_multihost.py, on all the devices a process has."""
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config


def get_config(arg=None):
  return tiny_config({text_file!r}, **{{"mesh.num_devices": 0, "train.steps": {steps}, "train.eval_every": 6,
                                        "train.checkpoint_every": 6}})
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Run:
  """One `bigjax train` run as `processes` local processes with `4 // processes` CPU devices each."""

  def __init__(self, config: str, workdir: str, *overrides: str, processes: int = 1, devices: int = 4,
               env: dict | None = None):
    self.workdir, self.procs, self.logs, self.command = workdir, [], [], (config, overrides, processes, env)
    # The suite's fast-compiling flags (conftest); every run compared here uses the same ones.
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices // processes} {TEST_XLA_FLAGS}")
    port = _free_port()
    n = len([p for p in os.listdir(os.path.dirname(workdir)) if p.startswith(os.path.basename(workdir) + ".")])
    for i in range(processes):
      dist = (["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(processes), "--process_id",
               str(i)] if processes > 1 else [])
      out, err = open(f"{workdir}.{n}.p{i}.out", "w"), open(f"{workdir}.{n}.p{i}.err", "w")
      self.logs.append((out.name, err.name))
      self.procs.append(subprocess.Popen(
          [sys.executable, HELPER, "train", "--config", config, "--workdir", workdir, *dist, *overrides],
          cwd=REPO, env=env, stdout=out, stderr=err))
      out.close(), err.close()

  def again(self) -> "Run":
    """The same command again (a resume), in the same workdir."""
    config, overrides, processes, env = self.command
    return Run(config, self.workdir, *overrides, processes=processes, env=env)

  def wait_for(self, text: str, deadline: float, i: int = 0) -> None:
    """Until process `i`'s stdout shows `text`."""
    while text not in self.stdout(i):
      if time.time() > deadline or any(p.poll() is not None for p in self.procs):
        raise AssertionError(f"{self.workdir}: {text!r} never came\n{self.tails()}")
      time.sleep(0.1)

  def wait(self, deadline: float, expect: int | None = 0) -> "Run":
    """Waits for every process; a failure or a timeout kills the rest and shows each one's stderr tail.
    `expect=None` accepts any exit status (the caller checks them)."""
    failed_at = None
    while any(p.poll() is None for p in self.procs):
      if failed_at is None and expect == 0 and any(p.poll() for p in self.procs):
        failed_at = time.time()  # The others may wait for it in a collective: give them a moment to end.
      if time.time() > deadline or (failed_at and time.time() > failed_at + 20):
        self.kill()
        break
      time.sleep(0.2)
    codes = [p.returncode for p in self.procs]
    if expect is not None and any(c != expect for c in codes):
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

  def stderr(self, i: int = 0) -> str:
    return read(self.logs[i][1])


def read(path: str) -> str:
  with open(path, errors="replace") as f:
    return f.read()


def metrics(workdir: str, split: str = "train") -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def losses(workdir: str, split: str = "train") -> dict[int, float]:
  return {r["step"]: r["loss"] for r in metrics(workdir, split)}


def interrupted_copy(workdir: str, dest: str, step: int) -> str:
  """A copy of the workdir as if the run had stopped after `step`."""
  shutil.copytree(workdir, dest)
  cut_after(dest, step)
  return dest


@pytest.fixture(scope="module")
def config_file(text_file, tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("config") / "tiny.py"
  path.write_text(CONFIG.format(tests=os.path.dirname(__file__), text_file=text_file, steps=STEPS))
  return str(path)


@pytest.fixture(scope="module")
def runs(config_file, tmp_path_factory):
  """Decoder runs of STEPS steps (eval and checkpoint every 6): 2 x 2 devices whose process 1 gets SIGTERM
  after step 2 (first: its resume is the longest chain), 2 x 2 and 1 x 4 uninterrupted, and once the 2 x 2
  pair has trained a step (its programs are then in the compilation cache) a pair whose process 1 is killed
  after step 1. As each source ends: the preempted pair again, and on a (1, 2, 2) mesh its checkpoint resumed
  on 1 process and the 1 x 4 run's step-6 checkpoint on 2."""
  d = tmp_path_factory.mktemp("multihost")
  quiet, mesh = ("--config.train.num_samples=0",), ("--config.mesh.shape=(1,2,2)", "--config.train.num_samples=0")
  t0 = time.time()
  deadline = t0 + TIMEOUT_S
  out, started = {}, []

  def start(name, *args, **kwargs):
    out[name] = Run(config_file, *args, **kwargs)
    started.append(out[name])
    return out[name]

  def ended(name):
    return name in out and all(p.poll() is not None for p in out[name].procs)

  def resume(name, run):
    out[name] = run.again()
    started.append(out[name])

  def stopped(run):
    saved = os.path.join(run.workdir, "checkpoints")
    return {"stdout": run.stdout(), "steps": sorted(losses(run.workdir)),
            "complete": sorted(int(s) for s in os.listdir(saved) if s.isdigit() and
                               os.path.exists(os.path.join(saved, s, "commit_success.txt")))}

  try:
    start("preempted", str(d / "preempted"), *quiet, processes=2)
    start("two", str(d / "two"), processes=2)
    start("one", str(d / "one"), *quiet)
    out["two"].wait_for("train step 1/", deadline)
    lost = start("lost", str(d / "lost"), *quiet, "--config.train.eval_every=100",
                 "--config.train.checkpoint_every=100", processes=2, env={"BIGJAX_TEST_HEARTBEAT_S": str(HEARTBEAT_S)})
    killed_at = sigterm = None
    restart_sigterm = False
    while True:
      if time.time() > deadline:
        raise AssertionError("the multi-host runs took longer than TIMEOUT_S\n" +
                             "\n".join(f"=== {n}\n{r.tails()}" for n, r in out.items() if isinstance(r, Run)))
      if killed_at is None and "train step 1/" in lost.stdout(0):
        lost.procs[1].kill()  # SIGKILL once the pair trained a step; its partner's end is timed.
        killed_at = time.time()
      if killed_at and "lost_after_s" not in out and ended("lost"):
        out["lost_after_s"] = time.time() - killed_at
      if sigterm is None and "train step 2/" in out["preempted"].stdout(0):
        out["preempted"].procs[1].send_signal(signal.SIGTERM)
        sigterm = time.time()
      if "resumed" not in out and ended("preempted"):
        out["stopped"] = stopped(out["preempted"].wait(deadline))
        source = shutil.copytree(out["preempted"].workdir, str(d / "two_to_one"))  # Before the resume writes.
        resume("resumed", out["preempted"])
        start("two_to_one", source, *mesh)
      if "resumed" in out and not restart_sigterm and "bigjax: process 0 of 2" in out["resumed"].stdout(0):
        out["resumed"].procs[1].send_signal(signal.SIGTERM)  # While it starts: before its first step.
        restart_sigterm = True
      if "resumed_again" not in out and ended("resumed"):
        out["stopped_again"] = stopped(out["resumed"].wait(deadline))
        resume("resumed_again", out["resumed"])
      if "one_to_two" not in out and ended("one"):
        start("one_to_two", interrupted_copy(out["one"].wait(deadline).workdir, str(d / "one_to_two"), 6), *mesh,
              processes=2)
      if all(ended(n) for n in ("two", "one", "lost", "resumed_again", "two_to_one", "one_to_two")):
        break
      time.sleep(0.05)
    for name in ("two", "resumed_again", "two_to_one", "one_to_two"):
      out[name].wait(deadline)
    out["seconds"] = time.time() - t0
    print(f"multi-host runs: {out['seconds']:.0f} s")
    yield out
  finally:
    for run in started:
      run.kill()


def test_two_processes_train_like_one(runs):
  two, one = runs["two"].workdir, runs["one"].workdir
  assert "bigjax: process 0 of 2, coordinator 127.0.0.1:" in runs["two"].stdout(0)
  assert "4 cpu device(s), 2 process(es)" in runs["two"].stdout(0)
  assert "bigjax: 1 process (no --coordinator_address, and jax.distributed.initialize found no" in runs["one"].stdout()
  assert "train step" not in runs["two"].stdout(1)  # Only process 0 logs ...
  assert sorted(losses(two)) == list(range(1, STEPS + 1))  # ... and writes metrics, once a step.
  for split in ("train", "eval"):
    a, b = losses(two, split), losses(one, split)
    assert sorted(a) == sorted(b)
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=1e-5)
  samples = read(os.path.join(two, "samples.txt"))
  assert samples.count("=== step 6 ") == 1 and samples.count(f"=== step {STEPS} ") == 1
  assert json.load(open(os.path.join(two, "config.json")))["mesh"]["num_devices"] == 0
  for step in (6, STEPS):  # Both processes took part in each checkpoint, and it is complete.
    assert os.path.exists(os.path.join(two, "checkpoints", str(step), "commit_success.txt"))


def _stopped_at(stopped: dict) -> int:
  lines = [line for line in stopped["stdout"].splitlines() if line.startswith("bigjax: stopped by")]
  assert len(lines) == 1 and lines[0].startswith("bigjax: stopped by SIGTERM after step "), stopped["stdout"][-2000:]
  step = int(lines[0].split("after step ")[1].split(";")[0])
  assert step < STEPS and stopped["steps"] == list(range(1, step + 1)), stopped
  assert stopped["complete"][-1] == step, stopped  # Both processes wrote their shards (both exit 0: `wait`).
  return step


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(runs):
  """Process 1 alone gets SIGTERM after step 2; JAX's preemption service agrees a step with process 0, both
  save it and exit 0. The same command continues; SIGTERM to its process 1 while it starts (before its first
  step) stops both after that first step; the same command again finishes, and every loss equals the
  uninterrupted pair's, bit for bit."""
  first = _stopped_at(runs["stopped"])
  assert first >= 2
  assert f"state from this workdir's checkpoint at step {first}" in runs["resumed"].stdout()
  second = _stopped_at(runs["stopped_again"])
  assert first < second <= first + 2, (first, second)  # Its first step (the second, if the notice was slow).
  assert f"state from this workdir's checkpoint at step {second}" in runs["resumed_again"].stdout()
  assert losses(runs["resumed_again"].workdir) == losses(runs["two"].workdir)  # Bit for bit.
  # A run stopped at an eval step skips that eval (to exit fast); the evals both runs made are equal.
  evals, want = losses(runs["resumed_again"].workdir, "eval"), losses(runs["two"].workdir, "eval")
  assert STEPS in evals and evals == {s: want[s] for s in evals}


def test_checkpoints_move_between_process_counts_and_meshes(runs):
  want = losses(runs["one"].workdir)
  for name, source in (("two_to_one", "2 x 2 devices → 1 x 4"), ("one_to_two", "1 x 4 devices → 2 x 2")):
    run = runs[name]
    start = 6 if name == "one_to_two" else runs["stopped"]["steps"][-1]
    assert f"state from this workdir's checkpoint at step {start}" in run.stdout(), source
    assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in run.stdout(), source
    got = losses(run.workdir)
    assert sorted(got) == list(range(1, STEPS + 1)), source
    later = range(start + 1, STEPS + 1)
    np.testing.assert_allclose([got[s] for s in later], [want[s] for s in later], rtol=1e-5, err_msg=source)
    np.testing.assert_allclose(losses(run.workdir, "eval")[STEPS], losses(runs["one"].workdir, "eval")[STEPS],
                               rtol=1e-5)


def test_a_process_killed_mid_run_ends_its_partner_in_one_line(runs):
  """SIGKILL to process 1 after a step: process 0 waits in a collective until JAX's coordination service
  misses process 1's heartbeats, and JAX would end it from C++ with a multi-line status and a stack trace;
  it ends with one line naming the lost process instead."""
  run = runs["lost"]
  assert "lost_after_s" in runs, f"process 1 was never killed\n{run.tails()}"
  err = run.stderr(0)
  assert run.procs[0].returncode != 0, err[-2000:]
  assert runs["lost_after_s"] < HEARTBEAT_S + 30, (runs["lost_after_s"], err[-2000:])
  for _ in range(50):  # The filter may write its line just after the process ends.
    if "bigjax: error:" in err:
      break
    time.sleep(0.1)
    err = run.stderr(0)
  assert err.strip().splitlines()[-1].startswith("bigjax: error: process 1 of 2 was lost (no heartbeat for "
                                                  f"{HEARTBEAT_S} s"), err[-3000:]
  assert err.count("bigjax: error:") == 1, err[-3000:]
  for noise in ("Traceback", "Check failure stack trace", "Terminating process", "coordination_service"):
    assert noise not in err, err[-3000:]


# What JAX 0.10.2 writes to stderr as it ends a process whose partner died (the stack trace shortened).
HEARTBEAT_END = """\
E1201 19:56:07.278160   16206 coordination_service.cc:1549] [8060337864528923860] Use error polling to propagate \
the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) \
to debug further. [type.googleapis.com/tensorflow.CoordinationServiceError='']
E1201 19:56:07.278872   16217 coordination_service_agent.cc:289] Polled an error from coordination service (this can \
be an error from this or another task).
F1201 19:56:07.279063   16217 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors. This most likely indicates that another task died; see the other task logs for more details. absl::Status: \
UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) \
to debug further.

RPC: /xla.coordination.CoordinationService/PollForError [type.googleapis.com/tensorflow.CoordinationServiceError='']
*** Check failure stack trace: ***
    @     0x7fc9e3a40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
    @     0x7fc9ec2a71f5  (unknown)
"""
COORDINATOR_END = """\
W1201 20:01:28.970157   28335 preemption_sync_manager.cc:147] Failed to retrieve preemption notice from coordination \
service: UNAVAILABLE: Socket closed
Additional GRPC error information from remote target coordination_service while calling \
/xla.coordination.CoordinationService/GetKeyValue:
:UNKNOWN:Error received from peer  {grpc_message:"Socket closed", grpc_status:14}. This is only expected if one of \
the tasks is unhealthy. Check the logs for the actual root cause.
E1201 20:01:28.970615   28335 coordination_service_agent.cc:289] Polled an error from coordination service (this can \
be an error from this or another task).
F1201 20:01:28.970620   28335 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors. This most likely indicates that another task died; see the other task logs for more details. absl::Status: \
UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was preempted/died/restarted \
unexpectedly or this task is experiencing network issues.
*** Check failure stack trace: ***
    @     0x7fc9e3a40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""


@pytest.mark.parametrize("before,end,want", [
    ("", HEARTBEAT_END, "bigjax: error: process 1 of 2 was lost (no heartbeat for 100 s: killed, crashed"),
    ("a warning of the run\n", COORDINATOR_END, "bigjax: error: process 0 of 2, the coordinator, was lost"),
    ("bigjax: error: process 0 of 2 was lost (Gloo all-reduce failed)\n", COORDINATOR_END, None),
])
def test_jax_ending_a_process_becomes_one_line(before, end, want):
  """The stderr filter of `partitioning.on_lost_process`: JAX's end of a process whose partner died (each
  form JAX writes) becomes one line naming the lost process; a line already said is not said twice."""
  r = subprocess.run([sys.executable, "-S", "-c", partitioning._STDERR_FILTER, "1" if "process 0" in end else "0",
                      "2", "100"], input=before + end + "a line of another thread\n", capture_output=True, text=True,
                     timeout=60)
  lines = r.stdout.splitlines()
  assert r.returncode == 0, r.stderr
  if want is None:  # Python said it first (a gloo error), then JAX ended the process.
    assert lines == before.splitlines(), r.stdout
  else:
    assert lines[:-1] == before.splitlines() and lines[-1].startswith(want), r.stdout
    assert lines[-1].endswith("the run resumes from its last complete checkpoint"), r.stdout


RAISED = """
import sys
import jax
from bigjax import partitioning
jax.process_count = lambda: 2  # As in a run of two processes: the filter is real, nothing is joined.
jax.process_index = lambda: 0
try:
  with partitioning.on_lost_process():
    raise jax.errors.JaxRuntimeError("INTERNAL: another error")
except jax.errors.JaxRuntimeError as e:
  print("passed on:", e, file=sys.stderr)
with partitioning.on_lost_process():
  print("a line of the run", file=sys.stderr)
  raise jax.errors.JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:547] "
                                   "Connection closed by peer [127.0.0.1]:15794")
"""


def test_a_collective_that_raises_for_a_lost_peer_is_one_line():
  """When the collective does raise (gloo, on the side whose peer closed the connection), that is one line
  and exit status 2, not a traceback; other JAX errors pass on unchanged."""
  r = subprocess.run([sys.executable, "-c", RAISED], cwd=REPO, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.splitlines() == [
      "passed on: INTERNAL: another error", "a line of the run",
      "bigjax: error: process 1 of 2 was lost (UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/"
      "pair.cc:547] Connection closed by peer [127.0.0.1]:15794); the others stop too. Start every process again "
      "with the same command: the run resumes from its last complete checkpoint"], r.stderr


def test_the_filter_passes_everything_else_on(tmp_path):
  """Ordinary stderr, JAX's runtime warnings included (held back a second, then passed), arrives unchanged."""
  text = ("W1201 20:01:28.970157   28335 preemption_sync_manager.cc:147] a warning\ncontinued\n"
          "Traceback (most recent call last):\n  File x\nValueError: y\nno newline at the end")
  r = subprocess.run([sys.executable, "-S", "-c", partitioning._STDERR_FILTER, "0", "2", "100"], input=text,
                     capture_output=True, text=True, timeout=60)
  assert r.stdout == text, r.stdout


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


def test_launcher_is_named_from_the_variables_jax_reads():
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  assert partitioning.launcher_from_env({**slurm, "SLURM_NTASKS": "4"}) == "SLURM job 7 (SLURM_NTASKS=4)"
  assert partitioning.launcher_from_env({"SLURM_NTASKS": "4"}) is None  # Not inside `srun`: JAX finds nothing.
  assert partitioning.launcher_from_env({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "2"}) == \
      "Open MPI (OMPI_COMM_WORLD_SIZE=2)"
  assert partitioning.launcher_from_env({"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3", "TPU_WORKER_ID": "1"}) == \
      "Cloud TPU on GKE (TPU_WORKER_HOSTNAMES lists 4 hosts)"
  assert partitioning.launcher_from_env({"TPU_WORKER_HOSTNAMES": "h0", "MEGASCALE_NUM_SLICES": "2"}) == \
      "Cloud TPU on GKE (TPU_WORKER_HOSTNAMES lists 1 host x 2 slices)"
  assert partitioning.launcher_from_env({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == \
      "a Kubernetes Job (KUBERNETES_SERVICE_HOST)"
  assert partitioning.launcher_from_env({}) is None


def test_a_one_task_cluster_is_one_process_without_joining(monkeypatch):
  """JAX would join a cluster of one and, on GPUs, keep one device of the host (SLURM_LOCALID)."""
  for k, v in {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
               "SLURM_LOCALID": "0"}.items():
    monkeypatch.setenv(k, v)
  assert partitioning.initialize_distributed() == \
      "1 process (no --coordinator_address; SLURM job 7 with SLURM_NTASKS=1: no other process to join)"


JOIN_FROM_SLURM = """
import os
from bigjax import partitioning
from bigjax.config import ConfigError
os.environ["SLURM_PROCID"] = "5"  # Found by JAX, but not a task of 2: one line, and nothing joined yet.
try:
  partitioning.initialize_distributed(timeout_s=60)
except ConfigError as e:
  print("error:", e)
os.environ["SLURM_PROCID"] = os.environ["SLURM_LOCALID"]
print(partitioning.initialize_distributed(timeout_s=60))
"""


def test_jax_finds_a_slurm_cluster_itself():
  """No flags: jax.distributed.initialize reads SLURM's variables (as `srun` sets them) and joins the two
  processes; the start-up line names the launcher, and a cluster it cannot join is a one-line error."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", SLURM_JOB_ID="7", SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="2",
             JAX_COORDINATOR_PORT=str(_free_port()))
  procs = [subprocess.Popen([sys.executable, "-c", JOIN_FROM_SLURM], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(env, SLURM_LOCALID=str(i)))
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (out, err) in enumerate(outs):
    assert procs[i].returncode == 0, err[-2000:]
    lines = out.strip().splitlines()
    assert lines[0].startswith("error: jax.distributed.initialize with the environment of SLURM job 7 "
                               "(SLURM_NTASKS=2) failed: process_id and num_processes"), out
    assert lines[-1] == f"process {i} of 2, launched by SLURM job 7 (SLURM_NTASKS=2)", out


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
