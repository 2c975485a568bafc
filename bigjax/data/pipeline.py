"""Input pipeline: read → tokenize (tf.data, once, cached) → objective → pack → batch → per-process rows →
built ahead in threads.

Two kinds of stream, one rule for order. Window objectives (causal LM, masked LM, span corruption,
prefix LM): a split is tokenized once (inside the tf.data graph, in parallel) into one token stream,
cached on disk, and cut into windows. Record objectives (text-to-text, classification): each record's
fields are tokenized once and cached; one record is one example. Either way, global example `g` of the
training stream is item `perm_e[g mod N]` of epoch `e = g div N`, where `perm_e` is a permutation
seeded by (seed, e), and an example's own randomness is seeded by (seed, g).

Window batches are examples `[step * B, (step + 1) * B)`: the data position is a pure function of the
step, as in Levanter. Packed record batches fill B rows with as many consecutive examples as fit
(first fit), so a batch's first example depends on the batches before it: the position after each
batch (`{"next_example": g}`) travels with it and is saved in every checkpoint, and a resumed stream
starts there (T5X checkpoints its iterator the same way). Every process computes the same global
plan and builds only its rows `[p * B/P, (p+1) * B/P)`, so no host coordinates with another and the
union over processes is exactly the single-process batch.

Only reading and tokenizing a split uses TensorFlow (tf.data's parallel map over the documents), and its
result is a cache file: a run whose caches exist imports no TensorFlow. Batches are numpy, built ahead of
the step that needs them by a small thread pool (numpy and the tokenizers release the GIL while they work).

Batches are dicts of numpy arrays `[rows, ...]`: `inputs`, `targets`, `weights` (0 for padding; the
loss is the weighted cross-entropy), and the model's other inputs (`segment_ids`, `positions`,
`prefix_mask`, `attention_mask`, `decoder_input_ids`, `decoder_segment_ids`) where the objective has them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import itertools
import os
import tempfile
from typing import Callable, Iterable, Iterator

import numpy as np

from bigjax.config import ConfigError
from bigjax.data import file_lock
from bigjax.data import import_tensorflow
from bigjax.data import objectives
from bigjax.data import quiet_native_stderr
from bigjax.data import sources
from bigjax.data import tokenizer as tokenizer_lib

_CACHE_VERSION = "v1"
PREFETCH = 4  # Batches built ahead of the step that needs them.


def _cache_dir(data_dir: str) -> str:
  if data_dir and "://" not in data_dir:
    return os.path.join(data_dir, "bigjax_tokens")
  base = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  if "://" in base:
    base = os.path.expanduser("~/.cache/bigjax")
  return os.path.join(base, "bigjax_tokens")


def _cached(path: str, make, save) -> None:
  """Writes the cache file `path` (`save(file, make())`) unless it exists. One process makes it while the
  others wait on its lock, then read it; the file appears whole (a temp file renamed), so a reader never
  sees half of one."""
  if os.path.exists(path):
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with file_lock(path + ".lock"):
    if os.path.exists(path):  # Made by another process while this one waited.
      return
    value = make()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        save(f, value)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)


def tokenize_split(source: str, split: str, tok, *, data_dir: str = "", text_key: str = "text",
                   described: str = "") -> np.ndarray:
  """All documents of a split as one int32 token stream, each document followed by EOS.

  Local text files are tokenized with the tokenizer's Python API (no TensorFlow); other sources in the
  tf.data graph (parallel map), with the same ids (tested); the result is cached in the TFDS data dir keyed
  by what the source is made from (`sources.describe`, or `described` when the caller has it), the split
  and the tokenizer, so a second run starts at once and an edited source is tokenized anew.
  """
  sources.check_split(source, split)
  described = described or sources.describe(source, data_dir_=data_dir)
  key = "|".join([_CACHE_VERSION, described, split, text_key, tok.fingerprint])
  path = os.path.join(_cache_dir(data_dir), hashlib.sha256(key.encode()).hexdigest()[:20] + ".npy")

  def make() -> np.ndarray:
    texts = sources.local_texts(source, split)
    if texts is not None:  # Local text files: the tokenizer's own Python API, no TensorFlow to import.
      pieces = [np.asarray(ids + [tok.eos_id], np.int32) for ids in tok.encode(texts)]
    else:
      tf, _ = import_tensorflow()
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
    return tokens

  _cached(path, make, np.save)
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

  def example_batch(self) -> dict[str, np.ndarray]:
    return self.batch(0)

  def position(self, step: int) -> dict[str, int]:
    """The data position after `step` steps (for the checkpoint; windows need only the step)."""
    return {"next_example": step * self.global_batch}

  def iterate(self, start_step: int, position: dict | None = None) -> Iterator[tuple[dict, dict]]:
    """(batch, position after it) for steps start_step, start_step + 1, ..., built ahead in threads."""
    if position is not None and position.get("next_example") != start_step * self.global_batch:
      raise ValueError(f"data position {position} is not step {start_step}'s")
    return prefetched(self.batch, itertools.count(start_step), lambda step: self.position(step + 1))


def prefetched(make_batch: Callable, plans: Iterable, position_after: Callable,
               depth: int = PREFETCH) -> Iterator[tuple[dict, dict]]:
  """(make_batch(plan), position_after(plan)) for each plan in order, up to `depth` batches built ahead by a
  thread pool while the caller trains on the current one. A batch that fails raises here, in its turn."""
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="bigjax-batches")
  pending = collections.deque()
  try:
    for plan in plans:  # Plans are cheap (indices): made here, in order; the batches in the pool.
      pending.append((pool.submit(make_batch, plan), plan))
      if len(pending) >= depth:
        future, done = pending.popleft()
        yield future.result(), position_after(done)
    while pending:
      future, done = pending.popleft()
      yield future.result(), position_after(done)
  finally:  # The caller stopped (or failed): drop the batches not started, never wait for the rest.
    pool.shutdown(wait=False, cancel_futures=True)


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
class Records:
  """Tokenized records: each field's ids flat with offsets (`[n + 1]`), or labels as indices."""

  inputs: np.ndarray
  input_offsets: np.ndarray
  targets: np.ndarray | None = None  # Target ids (text_to_text).
  target_offsets: np.ndarray | None = None
  labels: np.ndarray | None = None  # Label indices (classification).

  def __len__(self) -> int:
    return len(self.input_offsets) - 1

  def input_lengths(self) -> np.ndarray:
    return np.diff(self.input_offsets)

  def target_lengths(self) -> np.ndarray:
    return np.diff(self.target_offsets) if self.target_offsets is not None else np.zeros(len(self), np.int64)

  def get(self, i: int):
    inp = np.asarray(self.inputs[self.input_offsets[i]:self.input_offsets[i + 1]], np.int32)
    if self.labels is not None:
      return inp, int(self.labels[i])
    return inp, np.asarray(self.targets[self.target_offsets[i]:self.target_offsets[i + 1]], np.int32)

  def target_ids(self) -> np.ndarray:
    return np.asarray(self.labels if self.labels is not None else self.targets)


class RecordStream:
  """The training batches of one process from records: one example per row, or packed rows.

  `plan(cursor)` is the global batch that starts at example `cursor`: examples cursor, cursor + 1, ...
  each placed in the first of the B rows with room for it (first fit), until one fits nowhere; it then
  starts the next batch. Without packing each row holds one example and the plan is a function of the step.
  """

  def __init__(self, records: Records, objective, *, global_batch: int, seed: int, pack: bool,
               process_index: int = 0, process_count: int = 1):
    if len(records) == 0:
      raise ConfigError("the train split holds no records")
    if global_batch % process_count:
      raise ConfigError(f"data.batch_size={global_batch} does not divide over {process_count} processes")
    self.records, self.objective, self.seed = records, objective, seed
    self.pack = pack and objective.packable
    self.global_batch, self.local_batch = global_batch, global_batch // process_count
    self.row0 = process_index * self.local_batch
    self.lengths = objective.lengths(records.input_lengths(), records.target_lengths())
    self.capacity = np.asarray(objective.capacity)

  @functools.lru_cache(maxsize=4)
  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.records))

  def record(self, g: int) -> int:
    """The record that global example `g` is."""
    n = len(self.records)
    return int(self._permutation(g // n)[g % n])

  def plan(self, cursor: int) -> tuple[list[list[int]], int]:
    """(global example indices of each of the B rows, the cursor after them)."""
    if not self.pack:
      return [[cursor + r] for r in range(self.global_batch)], cursor + self.global_batch
    rows = [[] for _ in range(self.global_batch)]
    used = np.zeros((self.global_batch, len(self.capacity)), np.int64)
    g = cursor
    while True:  # First fit: each example goes to the first row with room; none has room → batch done.
      room = np.all(used + self.lengths[self.record(g)] <= self.capacity, axis=1)
      if not room.any():
        return rows, g
      r = int(np.argmax(room))
      rows[r].append(g)
      used[r] += self.lengths[self.record(g)]
      g += 1

  def build(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
    """This process's rows of a global plan, as a batch."""
    mine = rows[self.row0:self.row0 + self.local_batch]
    return objectives.stack([self.objective.row([self.records.get(self.record(g)) for g in row]) for row in mine])

  def example_batch(self) -> dict[str, np.ndarray]:
    return self.build(self.plan(0)[0])

  def cursor_at(self, step: int) -> int:
    """The cursor after `step` batches, replayed from the start (what a checkpoint's position saves)."""
    if not self.pack:
      return step * self.global_batch
    cursor = 0
    for _ in range(step):
      cursor = self.plan(cursor)[1]
    return cursor

  def iterate(self, start_step: int, position: dict | None = None) -> Iterator[tuple[dict, dict]]:
    """(batch, position after it) from `position` (a checkpoint's), else from step `start_step` replayed."""
    cursor = int(position["next_example"]) if position else self.cursor_at(start_step)

    def plans():
      c = cursor
      while True:
        rows, nxt = self.plan(c)
        yield rows, nxt
        c = nxt

    return prefetched(lambda plan: self.build(plan[0]), plans(), lambda plan: {"next_example": int(plan[1])})


def record_eval_batches(records: Records, objective, *, global_batch: int, num_batches: int,
                        process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` global batches of eval records in order (0 = all), one example per row,
  this process's rows; the last batch is filled with weight-0 rows so every record counts once."""
  total = len(records) if num_batches == 0 else min(len(records), num_batches * global_batch)
  if total == 0:
    raise ConfigError("the eval split holds no records")
  local = global_batch // process_count
  out = []
  for start in range(0, total, global_batch):
    rows = np.arange(start + process_index * local, start + (process_index + 1) * local)
    batch = objectives.stack([objective.row([records.get(int(r) if r < total else 0)]) for r in rows])
    valid = rows < total
    batch["weights"] = batch["weights"] * valid.reshape((-1,) + (1,) * (batch["weights"].ndim - 1))
    out.append(batch)
  return out


def tokenize_records(source: str, split: str, tok, *, text_key: str, target_key: str, labels: bool,
                     data_dir: str = "", described: str = "") -> tuple[Records, np.ndarray | None]:
  """A split's records: `text_key` tokenized; `target_key` tokenized too, or kept as label strings when
  `labels` (returned beside the records, which then hold no label indices yet). Cached like token streams."""
  sources.check_split(source, split)
  described = described or sources.describe(source, data_dir_=data_dir)
  key = "|".join([_CACHE_VERSION, "records", described, split, text_key, target_key, str(labels), tok.fingerprint])
  path = os.path.join(_cache_dir(data_dir), hashlib.sha256(key.encode()).hexdigest()[:20] + ".npz")

  def make() -> dict[str, np.ndarray]:
    tf, _ = import_tensorflow()
    ds = sources.records(source, split, (text_key, target_key), data_dir_=data_dir,
                         key_settings={text_key: "data.text_key", target_key: "data.target_key"})
    with quiet_native_stderr():
      encode = tok.tf_encoder()
      ds = ds.map(lambda r: (encode(r[text_key]), r[target_key] if labels else encode(r[target_key])),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      pairs = list(ds.as_numpy_iterator())
    if not pairs:
      raise ConfigError(f"data.source={source!r}: the {split!r} split holds no records")
    offsets = lambda xs: np.concatenate([[0], np.cumsum([len(x) for x in xs])]).astype(np.int64)
    flat = lambda xs: np.concatenate([np.asarray(x, np.int32) for x in xs])
    arrays = {"inputs": flat([a for a, _ in pairs]), "input_offsets": offsets([a for a, _ in pairs])}
    if labels:
      arrays["label_names"] = np.asarray([b.decode("utf-8", errors="replace") for _, b in pairs], dtype=str)
    else:
      arrays["targets"], arrays["target_offsets"] = flat([b for _, b in pairs]), offsets([b for _, b in pairs])
    return arrays

  _cached(path, make, lambda f, arrays: np.savez(f, **arrays))
  with np.load(path, allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  names = arrays.pop("label_names", None)
  return Records(**arrays), names


def label_indices(names: np.ndarray, labels: list[str], split: str) -> np.ndarray:
  index = {name: i for i, name in enumerate(labels)}
  unseen = sorted(set(names.tolist()) - set(index))
  if unseen:
    raise ConfigError(f"data.labels: the {split} split has label(s) {', '.join(map(repr, unseen[:5]))} that are "
                      f"not among the {len(labels)} labels ({', '.join(map(repr, labels[:8]))}"
                      f"{' ...' if len(labels) > 8 else ''}); list them in data.labels")
  return np.asarray([index[n] for n in names.tolist()], np.int32)


@dataclasses.dataclass
class Data:
  """Everything the trainer needs from the data side of a config."""

  tokenizer: object
  objective: object
  train: TrainStream | RecordStream
  eval: list
  train_tokens: np.ndarray  # The train split's target ids, to fit the unigram floor.
  eval_windows: Windows | None  # Window objectives: the eval windows (sample prompts come from them).
  labels: list[str] | None = None  # Classification: label names, in index order.
  eval_global: list | None = None  # All processes' eval rows (for constants every process must agree on).


def objective_name(config) -> str:
  """`data.objective`, or the family's own objective when it is empty."""
  from bigjax import config as config_lib  # pylint: disable=g-import-not-at-top
  family = config_lib.model_config(config).family
  name = config.data.objective or objectives.default_for(family)
  objectives.check_family(name, family)
  return name


def _check_vocab(config, mcfg, objective, tok) -> None:
  vocab, needed = mcfg.vocab_size, objectives.vocab_size(objective, tok)
  if needed > vocab:
    extra = f" plus {objective.extra_ids} special ids of {objective.name}" if objective.extra_ids else ""
    raise ConfigError(f"data.tokenizer={config.data.tokenizer!r} has {tok.vocab_size} ids{extra}, more than "
                      f"model.vocab_size={vocab}; raise model.vocab_size to at least {needed}")


def build(config, process_index: int = 0, process_count: int = 1) -> Data:
  from bigjax import config as config_lib  # pylint: disable=g-import-not-at-top
  d = config.data
  mcfg = config_lib.model_config(config)
  for setting in ("train_split", "eval_split"):  # Before the tokenizer loads or anything is read.
    sources.check_split(d.source, d[setting], f"data.{setting}")
  tok = tokenizer_lib.load(d.tokenizer)
  name = objective_name(config)
  split_kw = dict(process_index=process_index, process_count=process_count)
  described = sources.describe(d.source, data_dir_=d.data_dir)  # Reads local files whole: once.
  if name in ("text_to_text", "classification"):
    return _build_records(config, mcfg, tok, name, split_kw, described)

  objective = objectives.make(name, d.seq_len, tok, family=mcfg.family)
  _check_vocab(config, mcfg, objective, tok)
  kw = dict(data_dir=d.data_dir, text_key=d.text_key, described=described)
  train_tokens = tokenize_split(d.source, d.train_split, tok, **kw)
  eval_tokens = tokenize_split(d.source, d.eval_split, tok, **kw)
  train_windows = Windows(train_tokens, objective.window, objective.stride)
  eval_windows = Windows(eval_tokens, objective.window, objective.stride)
  stream = TrainStream(train_windows, objective, global_batch=d.batch_size, seed=config.train.seed, **split_kw)
  evals = eval_batches(eval_windows, objective, global_batch=d.batch_size, num_batches=d.eval_batches,
                       seed=config.train.seed, **split_kw)
  whole = evals if process_count == 1 else eval_batches(eval_windows, objective, global_batch=d.batch_size,
                                                        num_batches=d.eval_batches, seed=config.train.seed)
  return Data(tok, objective, stream, evals, train_tokens, eval_windows, eval_global=whole)


def _build_records(config, mcfg, tok, name: str, split_kw, described: str) -> Data:
  d = config.data
  if not d.target_key:
    what = "the label" if name == "classification" else "the target text"
    raise ConfigError(f"data.objective={name!r} reads labelled records: set data.target_key to the field with "
                      f"{what} (data.text_key={d.text_key!r} holds the input)")
  is_cls = name == "classification"
  kw = dict(text_key=d.text_key, target_key=d.target_key, labels=is_cls, data_dir=d.data_dir, described=described)
  train_recs, train_names = tokenize_records(d.source, d.train_split, tok, **kw)
  eval_recs, eval_names = tokenize_records(d.source, d.eval_split, tok, **kw)
  labels = None
  if is_cls:
    # data.labels, else a TFDS ClassLabel's own order, else the train split's labels sorted.
    labels = ([x.strip() for x in d.labels.split(",") if x.strip()] if d.labels else
              sources.class_names(d.source, d.target_key, data_dir_=d.data_dir) or sorted(set(train_names.tolist())))
    if len(labels) < 2:
      raise ConfigError(f"data.target_key={d.target_key!r}: classification needs at least 2 labels; the train "
                        f"split has {labels}")
    if mcfg.encoder_head != "classifier" or mcfg.num_labels != len(labels):
      raise ConfigError(f"data.objective='classification' with {len(labels)} labels needs "
                        f"model.encoder_head='classifier' and model.num_labels={len(labels)} (the config has "
                        f"{mcfg.encoder_head!r}, {mcfg.num_labels})")
    train_recs.labels = label_indices(train_names, labels, d.train_split)
    eval_recs.labels = label_indices(eval_names, labels, d.eval_split)
  objective = objectives.make(name, d.seq_len, tok, family=mcfg.family, target_len=d.target_len,
                              num_labels=len(labels or ()))
  _check_vocab(config, mcfg, objective, tok)
  stream = RecordStream(train_recs, objective, global_batch=d.batch_size, seed=config.train.seed, pack=d.pack,
                        **split_kw)
  evals = record_eval_batches(eval_recs, objective, global_batch=d.batch_size, num_batches=d.eval_batches,
                              **split_kw)
  whole = evals if split_kw["process_count"] == 1 else record_eval_batches(
      eval_recs, objective, global_batch=d.batch_size, num_batches=d.eval_batches)
  if is_cls:
    fit = train_recs.labels
  else:  # Every target ends with EOS: count it as often as the floor will meet it.
    fit = np.concatenate([train_recs.targets, np.full(len(train_recs), tok.eos_id, np.int32)])
  return Data(tok, objective, stream, evals, fit, None, labels, eval_global=whole)


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


def eval_constants(config, data: "Data", mcfg, batches) -> dict[str, float]:
  """The eval constants of `batches` (target count, UTF-8 bytes, unigram floor in nats), as the trainer
  logs them and `bigjax eval` reports them. Special ids of the objective (sentinels, [MASK]) stand for
  no bytes of text; their unigram frequency is sampled from 16 whole global train batches (not this
  process's rows: every process count gets the same floor). Classification's targets are label indices:
  its floor is the label prior, and it has no bytes."""
  tok = data.tokenizer
  special = None
  if data.objective.extra_ids and data.eval_windows is not None:  # Sentinels or [MASK] among the targets.
    whole = TrainStream(data.train.windows, data.objective, global_batch=config.data.batch_size,
                        seed=config.train.seed)
    sample = [whole.batch(s) for s in range(16)]
    special = np.concatenate([b["targets"][b["weights"] > 0] for b in sample])
  target_vocab = len(data.labels) if data.labels else mcfg.vocab_size
  unigram = unigram_log_probs(data.train_tokens, target_vocab, special, tok.vocab_size)
  byte_lengths = np.zeros(target_vocab, np.int64)
  if not data.labels:
    byte_lengths[:tok.vocab_size] = tok.byte_lengths()
  return eval_reference(batches, unigram, byte_lengths)
