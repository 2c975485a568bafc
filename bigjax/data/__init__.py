"""Input pipelines: sources → tokenizer → objective → batches (tf.data, numpy out)."""

import contextlib
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


with quiet_native_stderr():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # tf.data only: TensorFlow must never take an accelerator (or its memory) from JAX.
  tf.config.set_visible_devices([], "GPU")
  try:
    tf.config.set_visible_devices([], "TPU")
  except (ValueError, RuntimeError):
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
