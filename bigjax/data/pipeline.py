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
from bigjax.data import objectives
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
  """A token stream cut into `count` windows of `size` tokens, `stride` apart (the causal LM's windows
  overlap by one token: inputs and targets shifted by one)."""

  tokens: np.ndarray
  size: int
  stride: int

  @property
  def count(self) -> int:
    return max(0, (len(self.tokens) - self.size) // self.stride + 1) if len(self.tokens) >= self.size else 0

  def gather(self, idx: np.ndarray) -> np.ndarray:
    offsets = idx.astype(np.int64)[:, None] * self.stride + np.arange(self.size)
    return np.asarray(self.tokens[offsets], np.int32)


def _rngs(seed: int, stream: int, examples: np.ndarray) -> list[np.random.Generator]:
  """One Generator per example, from (seed, stream, the example's global index); stream 0 = train, 1 = eval."""
  return [np.random.default_rng([seed, stream, int(g)]) for g in examples]


class TrainStream:
  """The training batches of one process, as a pure function of the step."""

  def __init__(self, windows: Windows, objective, *, global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if windows.count == 0:
      raise ConfigError(f"data.seq_len={objective.seq_len}: the train split has only "
                        f"{len(windows.tokens)} tokens, fewer than one {objective.name} example "
                        f"({windows.size} tokens)")
    self.objective = objective
    self.process_index = process_index
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

  def examples(self, step: int) -> np.ndarray:
    """Global example indices of this process's rows of the batch at `step`."""
    return step * self.global_batch + self.row0 + np.arange(self.local_batch, dtype=np.int64)

  def indices(self, step: int) -> np.ndarray:
    """Window indices of this process's rows of the batch at `step`."""
    g = self.examples(step)
    n = self.windows.count
    epochs, pos = g // n, g % n
    out = np.empty_like(g)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._permutation(int(e))[pos[sel]]
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    x = self.windows.gather(self.indices(step))
    return objectives.batch(self.objective, x, _rngs(self.seed, 0, self.examples(step)))

  def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches for steps start_step, start_step + 1, ... prepared ahead by tf.data."""
    example = self.batch(start_step)
    keys = sorted(example)
    specs = [tf.TensorSpec(example[k].shape, tf.as_dtype(example[k].dtype)) for k in keys]

    def make(step):
      b = self.batch(int(step))
      return tuple(b[k] for k in keys)

    ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    ds = ds.map(lambda s: tf.numpy_function(make, [s], [sp.dtype for sp in specs], stateful=False),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda *xs: {k: tf.ensure_shape(x, sp.shape) for k, x, sp in zip(keys, xs, specs)})
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_batches(windows: Windows, objective, *, global_batch: int, num_batches: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` global batches of eval windows in order (0 = all), this process's rows.

  The objective's randomness (masks, spans) is fixed per eval batch, so every eval sees the same
  examples. The last batch is filled with weight-0 rows, so every window counts exactly once.
  """
  total = windows.count if num_batches == 0 else min(windows.count, num_batches * global_batch)
  if total == 0:
    raise ConfigError(f"data.seq_len={objective.seq_len}: the eval split has only {len(windows.tokens)} "
                      f"tokens, fewer than one {objective.name} example ({windows.size} tokens)")
  local = global_batch // process_count
  out = []
  for start in range(0, total, global_batch):
    rows = np.arange(start + process_index * local, start + (process_index + 1) * local)
    valid = rows < total
    batch = objectives.batch(objective, windows.gather(np.where(valid, rows, 0)), _rngs(seed, 1, rows))
    batch["weights"] = batch["weights"] * valid.reshape((-1,) + (1,) * (batch["weights"].ndim - 1))
    out.append(batch)
  return out


@dataclasses.dataclass
class Data:
  """Everything the trainer needs from the data side of a config."""

  tokenizer: object
  objective: object
  train: TrainStream
  eval: list
  train_tokens: np.ndarray
  eval_windows: Windows


def objective_name(config) -> str:
  """`data.objective`, or the family's own objective when it is empty."""
  from bigjax import config as config_lib  # pylint: disable=g-import-not-at-top
  family = config_lib.model_config(config).family
  name = config.data.objective or objectives.default_for(family)
  objectives.check_family(name, family)
  return name


def build(config, process_index: int = 0, process_count: int = 1) -> Data:
  d = config.data
  tok = tokenizer_lib.load(d.tokenizer)
  objective = objectives.make(objective_name(config), d.seq_len, tok)
  vocab, needed = config.model.vocab_size, objectives.vocab_size(objective, tok)
  if needed > vocab:
    extra = f" plus {objective.extra_ids} special ids of {objective.name}" if objective.extra_ids else ""
    raise ConfigError(f"data.tokenizer={d.tokenizer!r} has {tok.vocab_size} ids{extra}, more than "
                      f"model.vocab_size={vocab}; raise model.vocab_size to at least {needed}")
  train_tokens = tokenize_split(d.source, d.train_split, tok, data_dir=d.data_dir, text_key=d.text_key)
  eval_tokens = tokenize_split(d.source, d.eval_split, tok, data_dir=d.data_dir, text_key=d.text_key)
  train_windows = Windows(train_tokens, objective.window, objective.stride)
  eval_windows = Windows(eval_tokens, objective.window, objective.stride)
  stream = TrainStream(train_windows, objective, global_batch=d.batch_size, seed=config.train.seed,
                       process_index=process_index, process_count=process_count)
  evals = eval_batches(eval_windows, objective, global_batch=d.batch_size, num_batches=d.eval_batches,
                       seed=config.train.seed, process_index=process_index, process_count=process_count)
  return Data(tok, objective, stream, evals, train_tokens, eval_windows)


def unigram_log_probs(tokens: np.ndarray, vocab_size: int, special_targets: np.ndarray | None = None,
                      text_vocab: int | None = None) -> np.ndarray:
  """log p(id) of a unigram model fitted on `tokens` with add-one smoothing over the vocabulary.

  Objectives whose targets include ids the text never has (span corruption's sentinels) pass a sample
  of their train targets: ids >= `text_vocab` then get their frequency in that sample, and the text ids
  share the rest in proportion to their counts in `tokens`, so the floor is fair to the model.
  """
  counts = np.bincount(np.asarray(tokens), minlength=vocab_size).astype(np.float64) + 1.0
  if special_targets is None or text_vocab is None:
    return np.log(counts / counts.sum())
  sample = np.bincount(np.asarray(special_targets), minlength=vocab_size).astype(np.float64)
  special = sample[text_vocab:] + 1.0 / vocab_size  # Smoothed so that no id has probability 0.
  share = special.sum() / (sample.sum() + special.size / vocab_size)
  text = counts[:text_vocab] / counts[:text_vocab].sum() * (1.0 - share)
  return np.log(np.concatenate([text, special / special.sum() * share]))


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
