"""tf.data input pipeline: read → tokenize → concatenate and window → shuffle → batch → shard → prefetch.

Data position is a pure function of (seed, step), as in Levanter: a split is tokenized once (inside
the tf.data graph, in parallel) into one token stream, cached on disk, and cut into windows of
`seq_len + 1` tokens. Global example `g` of the training stream is window `perm_e[g mod N]` of
epoch `e = g div N`, where `perm_e` is a permutation seeded by (seed, e). A step's batch is
examples `[step * B, (step + 1) * B)`, and process `p` of `P` takes rows `[p * B/P, (p+1) * B/P)`.
So resuming at step k needs no iterator state and no seek, and every host computes its own
slice without coordination; the union over processes is exactly the single-process batch.

Batches are dicts of numpy arrays: `inputs` and `targets` `[batch, seq_len]` int32 (targets are
inputs shifted by one) and `weights` `[batch, seq_len]` float32 (0 for padding).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
from typing import Iterator

import numpy as np
import tensorflow as tf

from bigjax.config import ConfigError
from bigjax.data import quiet_native_stderr
from bigjax.data import sources
from bigjax.data import tokenizer as tokenizer_lib

_CACHE_VERSION = "v1"


def _cache_dir(data_dir: str) -> str:
  if data_dir and "://" not in data_dir:
    return os.path.join(data_dir, "bigjax_tokens")
  base = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  if "://" in base:
    base = os.path.expanduser("~/.cache/bigjax")
  return os.path.join(base, "bigjax_tokens")


def tokenize_split(source: str, split: str, tok, *, data_dir: str = "", text_key: str = "text") -> np.ndarray:
  """All documents of a split as one int32 token stream, each document followed by EOS.

  Tokenization runs in the tf.data graph (parallel map); the result is cached in the TFDS data
  dir keyed by source, split and tokenizer, so a second run starts at once.
  """
  key = "|".join([_CACHE_VERSION, sources.describe(source), split, text_key, tok.fingerprint])
  name = hashlib.sha256(key.encode()).hexdigest()[:20] + ".npy"
  cache = _cache_dir(data_dir)
  path = os.path.join(cache, name)
  if os.path.exists(path):
    return np.load(path, mmap_mode="r")

  docs = sources.documents(source, split, data_dir_=data_dir, text_key=text_key)
  eos = tf.constant([tok.eos_id], tf.int32)
  with quiet_native_stderr():  # The SentencePiece op logs its normaliser set-up from C++.
    encode = tok.tf_encoder()
    ds = docs.map(lambda t: tf.concat([encode(t), eos], 0),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    pieces = list(ds.as_numpy_iterator())
  tokens = np.concatenate(pieces).astype(np.int32) if pieces else np.zeros([0], np.int32)
  if tokens.size <= len(pieces):  # Nothing but EOS markers.
    raise ConfigError(f"data.source={source!r}: the {split!r} split holds no text")
  os.makedirs(cache, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
  with os.fdopen(fd, "wb") as f:
    np.save(f, tokens)
  os.replace(tmp, path)  # Atomic: a reader never sees half a cache file.
  return np.load(path, mmap_mode="r")


@dataclasses.dataclass
class Windows:
  """A token stream cut into `count` windows of `seq_len + 1` tokens (stride `seq_len`)."""

  tokens: np.ndarray
  seq_len: int

  @property
  def count(self) -> int:
    return max(0, (len(self.tokens) - 1) // self.seq_len)

  def gather(self, idx: np.ndarray) -> np.ndarray:
    offsets = idx.astype(np.int64)[:, None] * self.seq_len + np.arange(self.seq_len + 1)
    return np.asarray(self.tokens[offsets], np.int32)


def _as_batch(x: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": weights}


class TrainStream:
  """The training batches of one process, as a pure function of the step."""

  def __init__(self, windows: Windows, *, global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if windows.count == 0:
      raise ConfigError(f"data.seq_len={windows.seq_len}: the train split has only "
                        f"{len(windows.tokens)} tokens, fewer than one window")
    if global_batch % process_count:
      raise ConfigError(f"data.batch_size={global_batch} does not divide over {process_count} processes")
    self.windows = windows
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.row0 = process_index * self.local_batch
    self.seed = seed

  @functools.lru_cache(maxsize=4)
  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.windows.count)

  def indices(self, step: int) -> np.ndarray:
    """Window indices of this process's rows of the batch at `step`."""
    g = step * self.global_batch + self.row0 + np.arange(self.local_batch, dtype=np.int64)
    n = self.windows.count
    epochs, pos = g // n, g % n
    out = np.empty_like(g)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._permutation(int(e))[pos[sel]]
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    x = self.windows.gather(self.indices(step))
    return _as_batch(x, np.ones(x[:, 1:].shape, np.float32))

  def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches for steps start_step, start_step + 1, ... prepared ahead by tf.data."""
    b, l = self.local_batch, self.windows.seq_len

    def make(step):
      x = self.windows.gather(self.indices(int(step)))
      return x[:, :-1], x[:, 1:]

    ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    ds = ds.map(lambda s: tf.numpy_function(make, [s], (tf.int32, tf.int32), stateful=False),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda i, t: {"inputs": tf.ensure_shape(i, [b, l]), "targets": tf.ensure_shape(t, [b, l]),
                              "weights": tf.ones([b, l], tf.float32)})
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_batches(windows: Windows, *, global_batch: int, num_batches: int,
                 process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` global batches of eval windows in order (0 = all), this process's rows.

  The last batch is filled with weight-0 rows, so every window counts exactly once.
  """
  total = windows.count if num_batches == 0 else min(windows.count, num_batches * global_batch)
  if total == 0:
    raise ConfigError(f"data.seq_len={windows.seq_len}: the eval split has only {len(windows.tokens)} "
                      "tokens, fewer than one window")
  local = global_batch // process_count
  out = []
  for start in range(0, total, global_batch):
    rows = np.arange(start + process_index * local, start + (process_index + 1) * local)
    valid = rows < total
    x = windows.gather(np.where(valid, rows, 0))
    w = np.broadcast_to(valid[:, None], x[:, 1:].shape).astype(np.float32)
    out.append(_as_batch(x, w))
  return out


@dataclasses.dataclass
class Data:
  """Everything the trainer needs from the data side of a config."""

  tokenizer: object
  train: TrainStream
  eval: list
  train_tokens: np.ndarray
  eval_windows: Windows


def build(config, process_index: int = 0, process_count: int = 1) -> Data:
  d = config.data
  tok = tokenizer_lib.load(d.tokenizer)
  vocab = config.model.vocab_size
  if tok.vocab_size > vocab:
    raise ConfigError(f"data.tokenizer={d.tokenizer!r} has {tok.vocab_size} ids, more than "
                      f"model.vocab_size={vocab}; raise model.vocab_size to at least {tok.vocab_size}")
  train_tokens = tokenize_split(d.source, d.train_split, tok, data_dir=d.data_dir, text_key=d.text_key)
  eval_tokens = tokenize_split(d.source, d.eval_split, tok, data_dir=d.data_dir, text_key=d.text_key)
  train_windows = Windows(train_tokens, d.seq_len)
  eval_windows = Windows(eval_tokens, d.seq_len)
  stream = TrainStream(train_windows, global_batch=d.batch_size, seed=config.train.seed,
                       process_index=process_index, process_count=process_count)
  evals = eval_batches(eval_windows, global_batch=d.batch_size, num_batches=d.eval_batches,
                       process_index=process_index, process_count=process_count)
  return Data(tok, stream, evals, train_tokens, eval_windows)


def unigram_log_probs(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
  """log p(id) of a unigram model fitted on `tokens` with add-one smoothing over the vocabulary."""
  counts = np.bincount(np.asarray(tokens), minlength=vocab_size).astype(np.float64) + 1.0
  return np.log(counts / counts.sum())


def eval_reference(batches, unigram_logp: np.ndarray, byte_lengths: np.ndarray) -> dict[str, float]:
  """Per-eval-set constants: target count, UTF-8 bytes they stand for, and unigram loss (nats)."""
  n_tok = n_bytes = uni = 0.0
  for b in batches:
    w = b["weights"] > 0
    t = b["targets"][w]
    n_tok += t.size
    n_bytes += float(byte_lengths[t].sum())
    uni -= float(unigram_logp[t].sum())
  return {"tokens": n_tok, "bytes": n_bytes, "unigram_nats": uni}
