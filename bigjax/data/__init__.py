"""Input pipelines: sources → tokenizer → objective → batches (numpy out).

TensorFlow (tf.data, TFDS) reads and tokenizes a split once, into a token cache on disk; everything after
that — windows, objectives, packing, batches built ahead in threads — is numpy. So importing this package
or any of its modules loads no TensorFlow (it takes seconds): `import_tensorflow()` loads it when a split is
read or tokenized (`sources.documents/records`, `pipeline.tokenize_*` on a cache miss,
`Tokenizer.tf_encoder`), and a run whose caches exist, the planner and the CLI's other commands never do.
The embedded corpora's TFDS builders are in `embedded`.
"""

import contextlib
import fcntl
import functools
import hashlib
import os
import sys


@contextlib.contextmanager
def quiet_native_stderr():
  """Silences TensorFlow's C++ start-up lines (CUDA probing on CPU-only machines), which its absl
  logging writes straight to fd 2 before any log level applies. Python errors still surface."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # No real fd 2 (some notebooks): nothing to silence.
    yield
    return
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


@functools.cache
def import_tensorflow():
  """(tensorflow, tensorflow_datasets), imported once, with TensorFlow kept off every accelerator."""
  with quiet_native_stderr():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # tf.data only: TensorFlow must never take an accelerator (or its memory) from JAX.
    for kind in ("GPU", "TPU"):
      try:
        tf.config.set_visible_devices([], kind)
      except (ValueError, RuntimeError):  # No such device type, or TF already started (it then saw them).
        pass
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
  return tf, tfds


@contextlib.contextmanager
def file_lock(path: str):
  """Holds an exclusive lock on the file `path` (created if missing) for the block, so that of several
  processes preparing the same data one does it and the others wait, then find it done. A remote path
  (gs://) cannot be locked: a lock file under ~/.cache/bigjax/locks then serialises this machine's
  processes (hosts sharing a bucket should prepare once before the others start)."""
  path = str(path)
  if "://" in path:
    name = hashlib.sha256(path.encode()).hexdigest()[:20] + ".lock"
    path = os.path.join(os.path.expanduser("~/.cache/bigjax/locks"), name)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # Released when the file closes, also if the process dies.
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
