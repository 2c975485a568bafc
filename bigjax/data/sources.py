"""Text sources: the embedded corpora, local text and record files, and any TFDS dataset.

`documents(source, split)` yields documents (tf.string) for a split; `records(source, split, keys)`
yields dicts of named string fields (text and label, code and summary, ...) for tasks that need more
than one field. Four kinds of source, chosen by `data.source`:

* `pydoc_prose`  — English prose: the 79 help topics of CPython's `pydoc_data.topics` (~465k
  characters), one document per topic. A topic is `validation` when crc32 of its name, modulo 10,
  is 0 (5 topics, ~43k characters, 9%), else `train`. Fields: `text`, `name`.
* `stdlib_code`  — Python source: every `.py` file under the running interpreter's standard library
  (`sysconfig.get_paths()["stdlib"]`, `site-packages` excluded; ~1,800 files, ~31 MB on Python
  3.11), one document per file. A file is `validation` when crc32 of its path relative to the
  stdlib root, modulo 100, is below 3 (~3% of files), else `train`. Fields: `text`, `path`.
* a path or glob of local text files (`/data/*.txt`, may be `gs://`): each file is one document;
  the files are split like `stdlib_code` (crc32 of the file name), except that a single file is
  split by lines: its last 5% of lines (at least one) are `validation`. Their only field is `text`.
* a path or glob of local record files: `.jsonl` / `.json` (one JSON object per line, blank lines
  skipped) or `.csv` / `.tsv` (a header row names the columns; quoted fields may hold commas and
  newlines). Each record is a document whose text is its `data.text_key` field; values that are not
  strings become `str(value)` (`3`, `0.5`, `True`; null an empty string, a list or object its JSON).
  Split by file name when any file's base name holds a split word, as a whole word between
  non-letters (`train.jsonl`, `sst2_dev.csv`, `test-00001.jsonl`): `train`; `validation`, `valid`,
  `val`, `dev`, `eval`; `test`. Each split then reads exactly the files named for it (in path
  order), a file named for no split is read by none, and one named for two is an error. Otherwise
  split by content: a record is `validation` when crc32 of its stripped text (the JSON line, or the
  CSV row as written), modulo 100, is below 5, else `train`; if that leaves `validation` empty, the
  last record is `validation`.
* `tfds:NAME[/CONFIG]` — any TFDS dataset, read from `data.data_dir`, text in `data.text_key`. As
  records, a `ClassLabel` feature gives its label name (`negative`; an empty string for -1, "no
  label"), numbers and booleans their decimal text (`3`, `0.5`, `True`), text features their text.

A plain-text source and the embedded corpora have the splits `train` and `validation` only: any other
split is an error (`check_split`) that names the setting (`data.train_split`, `data.eval_split`).

The embedded corpora are real TFDS datasets (their builders are in `bigjax.data.embedded`), prepared on
first use into the TFDS data dir, so no download is ever needed. Each has one
config, named by what it is made from on this interpreter (`fingerprint`: the Python version and a
sha256 of the stdlib files or pydoc topics read): another Python, or an edited stdlib file, prepares a
config of its own beside it rather than reading data made from other inputs. Processes preparing the
same dataset at once take turns (`file_lock`): one prepares, the others then read what it wrote.
`describe(source)` keys the token caches by content in the same way (local and gs:// files by a sha256
of their bytes).

Importing this module loads no TensorFlow: finding a source's files, checking its splits and describing
it are plain Python, so a run whose token cache exists starts without TensorFlow. TensorFlow and TFDS load
when documents or records are read (or a `tfds:` source is described).
"""

from __future__ import annotations

import csv
import functools
import glob as globlib
import hashlib
import io
import json
import logging
import os
import re
import sys
import sysconfig
import zlib
from typing import TYPE_CHECKING, Iterator, Sequence

from etils import epath

from bigjax.config import ConfigError
from bigjax.data import file_lock
from bigjax.data import import_tensorflow

if TYPE_CHECKING:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (annotations only: imported when data is read)

EMBEDDED = ("pydoc_prose", "stdlib_code", "stdlib_functions", "stdlib_packages")
_CODE_VALIDATION_PERCENT = 3
_RECORD_VALIDATION_PERCENT = 5
_EMPTY_SOURCE = f"data.source is empty: give a path or glob, 'tfds:NAME', or one of {', '.join(EMBEDDED)}"
_RECORD_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
_SPLIT_WORDS = {"train": ("train",), "validation": ("validation", "valid", "val", "dev", "eval"),
                "test": ("test",)}
_SPLITS = ("train", "validation")  # Of plain text and the embedded corpora.
PYTHON = f"{sys.implementation.name}{'.'.join(map(str, sys.version_info[:3]))}"  # e.g. cpython3.11.7


def is_code_validation(key: str) -> bool:
  """Whether a file (its path relative to its root, or its name) is in the validation split."""
  return zlib.crc32(key.encode("utf-8")) % 100 < _CODE_VALIDATION_PERCENT


# ---- What the embedded corpora are made from: their fingerprints, read once per process.


def stdlib_files() -> list[tuple[str, str]]:
  """(path relative to the stdlib root, path) of every standard-library .py file (site-packages excluded),
  in the order the embedded corpora read them."""
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
    for f in sorted(filenames):
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        files.append((os.path.relpath(path, root), path))
  return files


def _sha256_update(h, name: str, data: bytes) -> None:
  h.update(f"{name}\0{len(data)}\0".encode("utf-8"))
  h.update(data)


@functools.cache
def _stdlib_digest() -> str:
  """sha256 of every stdlib .py file, its relative path and bytes (~31 MB: about 0.3 s, once a process)."""
  h = hashlib.sha256()
  for rel, path in stdlib_files():
    with open(path, "rb") as f:
      _sha256_update(h, rel, f.read())
  return h.hexdigest()


@functools.cache
def _pydoc_digest() -> str:
  """sha256 of the pydoc help topics, name and text."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for name in sorted(topics.topics):
    _sha256_update(h, name, topics.topics[name].encode("utf-8"))
  return h.hexdigest()


@functools.cache
def _tasks_digest() -> str:
  """sha256 of the code in `bigjax/data/tasks.py` that turns stdlib files into function records (not of
  the whole file: its table of baselines and templates does not change the records)."""
  import inspect  # pylint: disable=g-import-not-at-top
  from bigjax.data import tasks  # pylint: disable=g-import-not-at-top
  parts = [inspect.getsource(f) for f in (tasks._functions, tasks.is_validation, tasks.iter_functions)]  # pylint: disable=protected-access
  parts += [repr(tasks.VALIDATION_PERCENT), repr(tasks.PACKAGES)]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def fingerprint(name: str) -> str:
  """What embedded corpus `name` is made from here, as its TFDS config name: the Python version and a
  sha256 of its inputs (the stdlib files; the pydoc topics; for the function tasks also the code that
  extracts them), e.g. `cpython3.11.7-3f2a9c1e0b7d`."""
  inputs = {"pydoc_prose": [_pydoc_digest], "stdlib_code": [_stdlib_digest],
            "stdlib_functions": [_stdlib_digest, _tasks_digest], "stdlib_packages": [_stdlib_digest, _tasks_digest]}
  digest = hashlib.sha256("|".join(f() for f in inputs[name]).encode()).hexdigest()
  return f"{PYTHON}-{digest[:12]}"


def data_dir(config_data_dir: str) -> str | None:
  return config_data_dir or None


def _prepared(make):
  """The builder `make()` returns, prepared: one process prepares while the others wait on a lock in the
  data dir, then read what it wrote (TFDS alone lets each prepare and collide on the final rename)."""
  builder = make()
  if _is_prepared(builder):
    return builder
  lock = os.path.join(str(builder.data_dir_root), ".bigjax_locks", builder.info.full_name.replace("/", "-") + ".lock")
  with file_lock(lock):
    builder = make()  # Anew: a builder reads what is on disk when it is made.
    if not _is_prepared(builder):
      builder.download_and_prepare()
  return builder


def _is_prepared(builder) -> bool:
  # TFDS warns "Variant folder ... has no dataset_info.json" for a config not prepared yet: the very question.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    return builder.is_prepared()
  finally:
    absl_logger.setLevel(level)


def _tfds_named(name: str, data_dir_: str | None):
  _, tfds = import_tensorflow()
  try:
    return tfds.builder(name, data_dir=data_dir_)
  except Exception as e:  # tfds raises several types for unknown names.
    raise ConfigError(f"data.source='tfds:{name}': not a TFDS dataset here ({type(e).__name__}: "
                      f"{str(e).splitlines()[0]})") from None


def _tfds_builder(name: str, split: str, data_dir_: str | None):
  builder = _prepared(lambda: _tfds_named(name, data_dir_))
  base = re.split(r"[\[+]", split)[0]  # TFDS slicing: "train[:99%]", "train[99%:]", "train+validation".
  if builder.info.splits and base not in builder.info.splits:
    raise ConfigError(f"split {split!r} is not in tfds:{name}; it has {', '.join(builder.info.splits)} "
                      "(slices such as 'train[:1%]' work too)")
  return builder


def _tfds_documents(name: str, split: str, data_dir_: str | None, text_key: str) -> tf.data.Dataset:
  tf, _ = import_tensorflow()
  builder = _tfds_builder(name, split, data_dir_)
  features = builder.info.features
  if text_key not in features:
    raise ConfigError(f"data.text_key={text_key!r} is not a feature of tfds:{name}; "
                      f"it has {', '.join(features.keys())}")
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(lambda ex: ex[text_key], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _embedded_builder(name: str, split: str, data_dir_: str | None):
  check_split(name, split)
  from bigjax.data import embedded  # pylint: disable=g-import-not-at-top  (TFDS: only to read a corpus)
  return _prepared(lambda: embedded.BUILDERS[name](data_dir=data_dir_))


def check_split(source: str, split: str, setting: str = "split") -> None:
  """Refuses, before anything is read, a split that `source` does not have, naming `setting`
  (`data.train_split`, `data.eval_split`): plain text and the embedded corpora have 'train' and
  'validation' only, as do record files split by content. Record files named for their splits and TFDS
  datasets keep their own names, checked when they are read."""
  allowed = "allowed: 'train', 'validation'"
  if source in EMBEDDED:
    if split not in _SPLITS:
      raise ConfigError(f"{setting}={split!r}: {source} has the splits 'train' and 'validation' only ({allowed})")
    return
  if not source or source.startswith("tfds:"):
    return
  paths = local_files(source)
  if not _has_records(source, paths):
    if split not in _SPLITS:
      raise ConfigError(f"{setting}={split!r}: data.source={source!r} is plain text, split into 'train' and "
                        f"'validation' only ({allowed})")
  elif not any(_splits_named(p) for p in paths) and _split_of(split) not in _SPLITS:
    raise ConfigError(f"{setting}={split!r}: data.source={source!r} names no split in its file names, so its "
                      f"records are split by content into 'train' and 'validation' only ({allowed}; or name "
                      "the files for their splits: train.jsonl, test.jsonl)")


def _embedded_documents(name: str, split: str, data_dir_: str | None, text_key: str = "text") -> tf.data.Dataset:
  tf, _ = import_tensorflow()
  builder = _embedded_builder(name, split, data_dir_)
  if text_key not in builder.info.features:
    raise ConfigError(f"data.text_key={text_key!r} is not a field of {name}; it has "
                      f"{', '.join(builder.info.features.keys())}")
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(lambda ex: ex[text_key], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def local_files(pattern: str) -> list[str]:
  """Sorted files matching a path or glob; raises ConfigError naming `data.source` if none."""
  if "://" in pattern:  # gs:// and friends: a glob in the last path component only.
    base, _, name = pattern.rpartition("/")
    if any(c in name for c in "*?["):
      paths = [str(p) for p in epath.Path(base).glob(name)]
    else:
      paths = [pattern] if epath.Path(pattern).exists() else []
  else:
    pattern = os.path.expanduser(pattern)
    paths = globlib.glob(pattern, recursive=True) if any(c in pattern for c in "*?[") else (
        [pattern] if os.path.exists(pattern) else [])
    if len(paths) == 1 and os.path.isdir(paths[0]):
      paths = [p for p in globlib.glob(os.path.join(paths[0], "**", "*"), recursive=True)]
    paths = [p for p in paths if os.path.isfile(p)]
  if not paths:
    raise ConfigError(f"data.source={pattern!r}: no such file (expected a path or glob of text, JSONL or CSV "
                      f"files, 'tfds:NAME', or one of {', '.join(EMBEDDED)})")
  return sorted(paths)


def _local_documents(pattern: str, split: str) -> list[str]:
  paths = local_files(pattern)
  texts = []
  if len(paths) == 1:
    lines = epath.Path(paths[0]).read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
    n_val = max(1, len(lines) // 20) if len(lines) > 1 else 0
    chosen = lines[len(lines) - n_val:] if split == "validation" else lines[:len(lines) - n_val]
    text = "".join(chosen)
    if split == "validation" and not text.strip():
      text = "".join(lines)  # A one-line file: evaluate on what we have rather than on nothing.
    texts = [text]
  else:
    for p in paths:
      if is_code_validation(os.path.basename(p)) == (split == "validation"):
        texts.append(epath.Path(p).read_bytes().decode("utf-8", errors="replace"))
    if split == "validation" and not texts:  # Too few files for the hash to pick one: use the last.
      texts = [epath.Path(paths[-1]).read_bytes().decode("utf-8", errors="replace")]
  if not any(t.strip() for t in texts):
    raise ConfigError(f"data.source={pattern!r}: the {split} split holds no text "
                      f"({len(paths)} file(s) matched, all empty)")
  return texts


# ---- Records: named string fields of local JSONL/CSV files, the embedded corpora and TFDS datasets.


def _record_format(path: str) -> str | None:
  return _RECORD_FORMATS.get(os.path.splitext(path)[1].lower())


def _split_of(name: str) -> str | None:
  """The canonical split ("train", "validation", "test") a split word names, else None."""
  name = name.lower()
  return next((s for s, words in _SPLIT_WORDS.items() if name == s or name in words), None)


def _splits_named(path: str) -> set[str]:
  # Whole words only, so that `latest.jsonl` or `interval.csv` name no split.
  stem = os.path.splitext(os.path.basename(path))[0].lower()
  words = set(re.split(r"[^a-z]+", stem))
  return {s for s, split_words in _SPLIT_WORDS.items() if words & set(split_words)}


def _read_text(path: str) -> str:
  # utf-8-sig: spreadsheets often write a byte-order mark that would corrupt the first field name.
  return epath.Path(path).read_bytes().decode("utf-8-sig", errors="replace")


def _json_records(path: str) -> Iterator[tuple[int, str, dict]]:
  """(line number, stripped line, record) for each non-blank line of a JSON Lines file."""
  # Split on "\n" only: JSON strings may hold U+2028 and friends, which str.splitlines splits on.
  for number, line in enumerate(_read_text(path).split("\n"), 1):
    line = line.strip()
    if not line:
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ConfigError(f"data.source: {path} line {number} is not valid JSON ({e.msg}, column {e.colno}); "
                        "expected one JSON object per line") from None
    if not isinstance(record, dict):
      raise ConfigError(f"data.source: {path} line {number} is a JSON {type(record).__name__}, not an "
                        "object; expected one JSON object per line")
    yield number, line, record


def _csv_records(path: str, delimiter: str) -> Iterator[tuple[int, str, dict]]:
  """(first line number, stripped row text, record) for each row after a CSV/TSV file's header."""
  consumed = []  # The raw lines of the row being read: its text decides its split.

  def lines():
    for line in io.StringIO(_read_text(path), newline=""):
      consumed.append(line)
      yield line

  reader = csv.reader(lines(), delimiter=delimiter)
  kind = "TSV" if delimiter == "\t" else "CSV"
  try:
    header = [name.strip() for name in next(reader, [])]
    while True:
      first = reader.line_num + 1
      consumed.clear()
      row = next(reader, None)
      if row is None:
        return
      if not row:  # A blank line.
        continue
      if len(row) != len(header):
        raise ConfigError(f"data.source: {path} line {first} has {len(row)} fields but the header names "
                          f"{len(header)}: {', '.join(header)}")
      yield first, "".join(consumed).strip(), dict(zip(header, row))
  except csv.Error as e:
    raise ConfigError(f"data.source: {path} line {reader.line_num} is not valid {kind} ({e})") from None


def _file_records(path: str) -> Iterator[tuple[str, int, str, dict]]:
  fmt = _record_format(path)
  rows = _json_records(path) if fmt == "json" else _csv_records(path, "\t" if fmt == "tsv" else ",")
  for number, raw, record in rows:
    yield path, number, raw, record


def _record_split(pattern: str, paths: list[str], split: str) -> list[tuple[str, int, str, dict]]:
  """The records of local files that fall in `split`, by file name or else by content (see above)."""
  want = _split_of(split)
  named = {p: _splits_named(p) for p in paths}
  both = next((p for p in paths if len(named[p]) > 1), None)
  if both:  # Its records would be in two splits: evaluation on training data.
    raise ConfigError(f"data.source={pattern!r}: the file name {os.path.basename(both)} names more than one "
                      f"split ({', '.join(sorted(named[both]))}); rename it")
  if any(named.values()):
    chosen = [p for p in paths if want in named[p]]
    if not chosen:
      raise ConfigError(f"split {split!r}: no file of data.source={pattern!r} is named for it (file names "
                        f"choose the splits here); files found: {', '.join(map(os.path.basename, paths))}")
    return [r for p in chosen for r in _file_records(p)]
  if want not in ("train", "validation"):
    raise ConfigError(f"split {split!r}: data.source={pattern!r} names no split in its file names, so its "
                      "records are split by content into 'train' and 'validation' only")
  rows = [r for p in paths for r in _file_records(p)]
  in_val = [zlib.crc32(raw.encode("utf-8")) % 100 < _RECORD_VALIDATION_PERCENT for _, _, raw, _ in rows]
  if rows and not any(in_val):  # Too few records for the hash to pick one: use the last.
    in_val[-1] = True
  return [r for r, v in zip(rows, in_val) if v == (want == "validation")]


def _as_text(value) -> str:
  if isinstance(value, str):
    return value
  if value is None:
    return ""
  if isinstance(value, (dict, list)):
    return json.dumps(value, ensure_ascii=False)
  return str(value)


def _local_records(pattern: str, paths: list[str], split: str, keys: Sequence[str],
                   key_settings: dict[str, str]) -> tf.data.Dataset:
  tf, _ = import_tensorflow()
  rows = _record_split(pattern, paths, split)
  if not rows:
    raise ConfigError(f"data.source={pattern!r}: the {split} split holds no records ({len(paths)} file(s) "
                      f"matched: {', '.join(map(os.path.basename, paths))})")
  columns = {k: [] for k in keys}
  for path, number, _, record in rows:
    for k in keys:
      if k not in record:
        raise ConfigError(f"{_key_name(k, key_settings)} is not a field of {path} (line {number}); "
                          f"it has: {', '.join(record)}")
      columns[k].append(_as_text(record[k]))
  return tf.data.Dataset.from_tensor_slices(columns)


def _key_name(key: str, key_settings: dict[str, str]) -> str:
  return f"{key_settings[key]}={key!r}" if key in key_settings else repr(key)


def _feature_to_text(where: str, key: str, feature, key_settings: dict[str, str]):
  """A graph function that turns one TFDS feature value into a tf.string scalar."""
  tf, tfds = import_tensorflow()
  if isinstance(feature, tfds.features.ClassLabel):
    names = tf.constant(feature.names)
    # -1 marks an unlabelled example (GLUE's test splits): an empty name, not an out-of-range gather.
    return lambda x: tf.where(x >= 0, tf.gather(names, tf.maximum(x, 0)), "")
  if isinstance(feature, tfds.features.Tensor) and not feature.shape:
    dtype = tf.as_dtype(feature.tf_dtype)
    if dtype == tf.string:
      return lambda x: x
    if dtype == tf.bool:  # As Python's str() spells them, like the values of local records.
      return lambda x: tf.where(x, "True", "False")
    if dtype.is_floating:
      return lambda x: tf.strings.as_string(x, shortest=True)
    if dtype.is_integer:
      return tf.strings.as_string
  raise ConfigError(f"{_key_name(key, key_settings)} of {where} is a {type(feature).__name__} feature "
                    f"{getattr(feature, 'shape', '')}; allowed: text, a class label or a number (scalar)")


def _builder_records(where: str, builder, split: str, keys: Sequence[str],
                     key_settings: dict[str, str]) -> tf.data.Dataset:
  tf, _ = import_tensorflow()
  features = builder.info.features
  for k in keys:
    if k not in features:
      raise ConfigError(f"{_key_name(k, key_settings)} is not a feature of {where}; "
                        f"it has {', '.join(features.keys())}")
  convert = {k: _feature_to_text(where, k, features[k], key_settings) for k in keys}
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(lambda ex: {k: fn(ex[k]) for k, fn in convert.items()},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def records(source: str, split: str, keys: Sequence[str], *, data_dir_: str = "",
            key_settings: dict[str, str] | None = None) -> tf.data.Dataset:
  """A tf.data.Dataset of `{key: tf.string scalar}` for each record of `split`, in a fixed order.

  `key_settings` maps a key to the setting that chose it (`{"label": "data.target_key"}`), so that
  an error names what to change; a key not in it is named by itself.
  """
  key_settings = key_settings or {}
  if not keys:
    raise ConfigError(f"data.source={source!r}: records need at least one field name; none given")
  dd = data_dir(data_dir_)
  if source in EMBEDDED:
    return _builder_records(source, _embedded_builder(source, split, dd), split, keys, key_settings)
  if source.startswith("tfds:"):
    builder = _tfds_builder(source[len("tfds:"):], split, dd)
    return _builder_records(source, builder, split, keys, key_settings)
  if not source:
    raise ConfigError(_EMPTY_SOURCE)
  paths = local_files(source)
  if _has_records(source, paths):
    return _local_records(source, paths, split, keys, key_settings)
  others = [k for k in keys if k != "text"]
  if others:
    raise ConfigError(f"{_key_name(others[0], key_settings)}: data.source={source!r} is plain text, whose "
                      "only field is 'text'; use .jsonl or .csv files for records with more fields")
  docs = documents(source, split, data_dir_=data_dir_)
  return docs.map(lambda t: {"text": t})


def class_names(source: str, key: str, *, data_dir_: str = "") -> list[str] | None:
  """The names of a TFDS ClassLabel feature `key`, in index order (None for other sources and features):
  classification then keeps the dataset's own label ids (MNLI's entailment = 0, as published)."""
  if source in EMBEDDED:
    builder = _embedded_builder(source, "train", data_dir(data_dir_))
  elif source.startswith("tfds:"):
    builder = _tfds_builder(source[len("tfds:"):], "train", data_dir(data_dir_))
  else:  # Local files have no ClassLabel: no TFDS to import.
    return None
  _, tfds = import_tensorflow()
  feature = builder.info.features[key] if key in builder.info.features else None
  return list(feature.names) if isinstance(feature, tfds.features.ClassLabel) else None


def _has_records(source: str, paths: list[str]) -> bool:
  """Whether local `paths` are record files (JSONL/CSV) rather than text; a mix is an error."""
  formats = [_record_format(p) for p in paths]
  if all(formats):
    return True
  if any(formats):
    text = next(p for p, f in zip(paths, formats) if not f)
    raise ConfigError(f"data.source={source!r} mixes record files (.jsonl, .json, .csv, .tsv) with text "
                      f"files such as {os.path.basename(text)}; give one kind")
  return False


def documents(source: str, split: str, *, data_dir_: str = "", text_key: str = "text") -> tf.data.Dataset:
  """A tf.data.Dataset of tf.string documents for `split` ("train" or "validation" / TFDS names).

  A document is a whole text file (or its lines' share of the split), or the `text_key` field of
  each record of JSONL/CSV files and tfds: datasets.
  """
  tf, _ = import_tensorflow()
  dd = data_dir(data_dir_)
  if source in EMBEDDED:
    return _embedded_documents(source, split, dd, text_key)
  if source.startswith("tfds:"):
    return _tfds_documents(source[len("tfds:"):], split, dd, text_key)
  if not source:
    raise ConfigError(_EMPTY_SOURCE)
  paths = local_files(source)
  if _has_records(source, paths):  # Each record's `text_key` field is a document.
    rows = _local_records(source, paths, split, (text_key,), {text_key: "data.text_key"})
    return rows.map(lambda r: r[text_key])
  check_split(source, split)
  return tf.data.Dataset.from_tensor_slices(_local_documents(source, split))


def local_texts(source: str, split: str) -> list[str] | None:
  """The documents of `split` as Python strings when `source` is local plain-text files (what `documents`
  would put in a tf.data.Dataset), else None: such sources are tokenized without TensorFlow."""
  if not source or source in EMBEDDED or source.startswith("tfds:"):
    return None
  paths = local_files(source)
  if _has_records(source, paths):
    return None
  check_split(source, split)
  return _local_documents(source, split)


def _file_digest(path: str) -> str:
  """sha256 of a file's bytes (local or gs://), read in 1 MiB chunks."""
  h = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def describe(source: str, *, data_dir_: str = "") -> str:
  """What a source's data is made from, as a short string for cache keys: an embedded corpus's
  `fingerprint`, a TFDS dataset's name, config and version, or the names of local (or gs://) files and a
  sha256 of their bytes, so that an edit that keeps a file's size still makes a new key. Local files are
  read whole: call it once per run (`pipeline.build` does)."""
  if source in EMBEDDED:
    return f"{source}|{fingerprint(source)}"
  if source.startswith("tfds:"):
    return f"tfds:{_tfds_named(source[len('tfds:'):], data_dir(data_dir_)).info.full_name}"
  if not source:
    raise ConfigError(_EMPTY_SOURCE)
  paths = local_files(source)
  h = hashlib.sha256()
  for p in paths:
    _sha256_update(h, p, _file_digest(p).encode())
  # Record files were read as plain text before records existed: a new key keeps old caches out.
  kind = "|records-v1" if all(_record_format(p) for p in paths) else ""
  return f"{source}{kind}|sha256-{h.hexdigest()[:20]}"


def iter_texts(ds: tf.data.Dataset) -> Iterator[str]:
  for t in ds.as_numpy_iterator():
    yield t.decode("utf-8", errors="replace")
