"""Test set-up: 8 fake CPU devices (before JAX is imported), a private TFDS data dir and a persistent
compilation cache shared by the tests and their subprocesses."""

import os
import tempfile

# The suite is compile-bound, so XLA's CPU backend is asked to compile fast, not to run fast: optimisation
# level 0, and the elemental emitters instead of the fusion emitters (a tiny decoder's train step then
# compiles in 0.9 s instead of 1.9 s at level 0 alone). Results agree to fp32 tolerances (the tests compare
# numbers across meshes and with references, not speed). TEST_XLA_FLAGS is the same for subprocesses.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 " + TEST_XLA_FLAGS)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Embedded corpora and token caches are prepared once per test session in a temporary data dir,
# unless the caller points TFDS_DATA_DIR somewhere (CI reuses one across runs this way).
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(tempfile.gettempdir(), "bigjax_test_tfds"))
# JAX's persistent compilation cache, for this process and every subprocess a test starts (they inherit
# the environment): the suite compiles the same tiny models' steps many times over. Every program is
# cached (no minimum compile time or size); the key covers the program, the flags and the jax version.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "bigjax_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROSE = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.\n"
)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
  """A local text corpus of a few kB (one file, so it is split by lines)."""
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  lines = [f"{i:04d} {PROSE.splitlines()[i % 2]} line {i * 7 % 13}\n" for i in range(400)]
  path.write_text("".join(lines))
  return str(path)


def tiny_config(source: str, **overrides):
  """A run config small enough to train in seconds: byte tokens, 2 layers of width 32."""
  from bigjax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.default_config()
  c.model.vocab_size = 264
  c.model.d_model = 32
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.d_ff = 64
  c.model.max_len = 64
  c.data.source = source
  c.data.tokenizer = "byte"
  c.data.seq_len = 32
  c.data.batch_size = 8
  c.data.eval_batches = 2
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 2
  c.train.steps = 6
  c.train.log_every = 1
  c.train.eval_every = 3
  c.train.checkpoint_every = 3
  c.train.num_samples = 1
  c.train.sample_len = 8
  c.mesh.num_devices = 1  # The 1-CPU reference; tests of meshes set 0 (all 8 fake devices).
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def checkpoint_params(workdir, step: int):
  """The params a workdir's checkpoint at `step` holds, exactly as stored (adapters, masks' zeros and all), on
  this process's first device."""
  import jax  # pylint: disable=g-import-not-at-top
  from bigjax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True)
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                                  ckpt.param_metadata(step))
  params = jax.device_get(ckpt.restore_params(step, target))
  ckpt.close()
  return params


def cut_after(workdir, step: int) -> None:
  """`workdir` as if its run had stopped after `step`: later checkpoints and metrics lines never happened."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  for name in os.listdir(os.path.join(workdir, "checkpoints")):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(os.path.join(workdir, "checkpoints", name))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    kept = [line for line in f if json.loads(line)["step"] <= step]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(kept)


# Files whose tests share one long fixture (real multi-process runs) go first: with two workers taking a file
# each, the long one then runs beside the rest of the suite instead of alone at its end.
_FIRST = ("test_multihost.py", "test_notebooks.py")


def pytest_collection_modifyitems(session, config, items):  # pylint: disable=unused-argument
  items.sort(key=lambda item: os.path.basename(str(item.fspath)) not in _FIRST)  # Stable: order kept otherwise.
