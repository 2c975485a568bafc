"""Text sources: the embedded corpora as TFDS builders, local text files, and any TFDS dataset.

A source yields documents (Python `str`) for a split. Three kinds, chosen by `data.source`:

* `pydoc_prose`  — English prose: the 79 help topics of CPython's `pydoc_data.topics` (~465k
  characters), one document per topic. A topic is `validation` when crc32 of its name, modulo 10,
  is 0 (5 topics, ~43k characters, 9%), else `train`.
* `stdlib_code`  — Python source: every `.py` file under the running interpreter's standard library
  (`sysconfig.get_paths()["stdlib"]`, `site-packages` excluded; ~1,800 files, ~31 MB on Python
  3.11), one document per file. A file is `validation` when crc32 of its path relative to the
  stdlib root, modulo 100, is below 3 (~3% of files), else `train`.
* a path or glob of local text files (`/data/*.txt`, may be `gs://`): each file is one document;
  the files are split like `stdlib_code` (crc32 of the file name), except that a single file is
  split by lines: its last 5% of lines (at least one) are `validation`.
* `tfds:NAME[/CONFIG]` — any TFDS dataset, read from `data.data_dir`, text in `data.text_key`.

The embedded corpora are real TFDS datasets (`tfds.builder("pydoc_prose")` works once this module is
imported), prepared on first use into the TFDS data dir, so no download is ever needed.
"""

from __future__ import annotations

import glob as globlib
import os
import sysconfig
import zlib
from typing import Iterator

from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds

from bigjax.config import ConfigError

EMBEDDED = ("pydoc_prose", "stdlib_code")
_CODE_VALIDATION_PERCENT = 3


def _is_validation(key: str) -> bool:
  return zlib.crc32(key.encode("utf-8")) % 100 < _CODE_VALIDATION_PERCENT


class PydocProse(tfds.core.GeneratorBasedBuilder):
  """CPython's pydoc help topics (English prose), one example per topic."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Topics of the running Python's pydoc_data; crc32(name) % 10 == 0 is validation."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "name": tfds.features.Text()}),
        description="Help topics from CPython's pydoc_data.topics (no download).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(False), "validation": self._generate_examples(True)}

  def _generate_examples(self, validation: bool):
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
    for name in sorted(topics.topics):
      if (zlib.crc32(name.encode("utf-8")) % 10 == 0) == validation:
        yield name, {"text": topics.topics[name], "name": name}


class StdlibCode(tfds.core.GeneratorBasedBuilder):
  """The Python standard library's own `.py` sources, one example per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "All stdlib .py files except site-packages; crc32(path) % 100 < 3 is validation."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
        description="Python source files of the running interpreter's standard library (no download).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(False), "validation": self._generate_examples(True)}

  def _generate_examples(self, validation: bool):
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
      for f in sorted(filenames):
        if not f.endswith(".py"):
          continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, root)
        if _is_validation(rel) != validation:
          continue
        with open(path, "rb") as fh:
          text = fh.read().decode("utf-8", errors="replace")
        yield rel, {"text": text, "path": rel}


_BUILDERS = {"pydoc_prose": PydocProse, "stdlib_code": StdlibCode}


def data_dir(config_data_dir: str) -> str | None:
  return config_data_dir or None


def _tfds_documents(name: str, split: str, data_dir_: str | None, text_key: str) -> tf.data.Dataset:
  try:
    builder = tfds.builder(name, data_dir=data_dir_)
  except Exception as e:  # tfds raises several types for unknown names.
    raise ConfigError(f"data.source='tfds:{name}': not a TFDS dataset here ({type(e).__name__}: "
                      f"{str(e).splitlines()[0]})") from None
  if not builder.is_prepared():
    builder.download_and_prepare()
  if builder.info.splits and split not in builder.info.splits:
    raise ConfigError(f"split {split!r} is not in tfds:{name}; it has {', '.join(builder.info.splits)}")
  features = builder.info.features
  if text_key not in features:
    raise ConfigError(f"data.text_key={text_key!r} is not a feature of tfds:{name}; "
                      f"it has {', '.join(features.keys())}")
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(lambda ex: ex[text_key], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _embedded_documents(name: str, split: str, data_dir_: str | None) -> tf.data.Dataset:
  builder = _BUILDERS[name](data_dir=data_dir_)
  if not builder.is_prepared():
    builder.download_and_prepare()
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(lambda ex: ex["text"], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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
    raise ConfigError(f"data.source={pattern!r}: no such file (expected a text file path or glob, "
                      f"'tfds:NAME', or one of {', '.join(EMBEDDED)})")
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
      if _is_validation(os.path.basename(p)) == (split == "validation"):
        texts.append(epath.Path(p).read_bytes().decode("utf-8", errors="replace"))
    if split == "validation" and not texts:  # Too few files for the hash to pick one: use the last.
      texts = [epath.Path(paths[-1]).read_bytes().decode("utf-8", errors="replace")]
  if not any(t.strip() for t in texts):
    raise ConfigError(f"data.source={pattern!r}: the {split} split holds no text "
                      f"({len(paths)} file(s) matched, all empty)")
  return texts


def documents(source: str, split: str, *, data_dir_: str = "", text_key: str = "text") -> tf.data.Dataset:
  """A tf.data.Dataset of tf.string documents for `split` ("train" or "validation" / TFDS names)."""
  dd = data_dir(data_dir_)
  if source in _BUILDERS:
    if split not in ("train", "validation"):
      raise ConfigError(f"split {split!r}: {source} has 'train' and 'validation'")
    return _embedded_documents(source, split, dd)
  if source.startswith("tfds:"):
    return _tfds_documents(source[len("tfds:"):], split, dd, text_key)
  if not source:
    raise ConfigError(f"data.source is empty: give a path or glob, 'tfds:NAME', or one of {', '.join(EMBEDDED)}")
  local_split = "validation" if split not in ("train",) else "train"
  return tf.data.Dataset.from_tensor_slices(_local_documents(source, local_split))


def describe(source: str) -> str:
  """A short, stable description of a source for cache keys and logs."""
  if source in _BUILDERS or source.startswith("tfds:"):
    return source
  paths = local_files(source)
  stats = [(p, os.path.getsize(p) if "://" not in p else 0) for p in paths]
  return f"{source}|{zlib.crc32(repr(stats).encode()):08x}"


def iter_texts(ds: tf.data.Dataset) -> Iterator[str]:
  for t in ds.as_numpy_iterator():
    yield t.decode("utf-8", errors="replace")
