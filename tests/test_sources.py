"""Text sources: the embedded corpora (TFDS builders), local files, errors."""

import os
import sysconfig
import zlib

import pytest
import tensorflow_datasets as tfds

from bigjax.config import ConfigError
from bigjax.data import sources


def texts(source, split, **kw):
  return list(sources.iter_texts(sources.documents(source, split, **kw)))


def test_pydoc_prose_is_a_tfds_dataset_with_fixed_splits():
  from pydoc_data import topics
  train, val = texts("pydoc_prose", "train"), texts("pydoc_prose", "validation")
  assert len(train) + len(val) == len(topics.topics)
  want_val = {v for k, v in topics.topics.items() if zlib.crc32(k.encode()) % 10 == 0}
  assert set(val) == want_val and not set(val) & set(train)
  assert 0.05 < sum(map(len, val)) / sum(map(len, train + val)) < 0.15
  builder = tfds.builder("pydoc_prose")  # Registered by name once bigjax.data.sources is imported.
  assert builder.is_prepared()


def test_stdlib_code_split_is_by_file_hash():
  root = sysconfig.get_paths()["stdlib"]
  val = texts("stdlib_code", "validation")
  ds = sources.StdlibCode().as_dataset(split="validation")
  paths = [ex["path"].decode() for ex in tfds.as_numpy(ds)]
  assert len(paths) == len(val) > 10
  assert all(zlib.crc32(p.encode()) % 100 < 3 for p in paths)
  assert all(not p.startswith("site-packages") for p in paths)
  one = paths[0]
  with open(os.path.join(root, one), encoding="utf-8", errors="replace") as f:
    assert f.read() in val


def test_single_local_file_is_split_by_lines(tmp_path):
  p = tmp_path / "a.txt"
  p.write_text("".join(f"line {i}\n" for i in range(100)))
  train, val = texts(str(p), "train"), texts(str(p), "validation")
  assert train == ["".join(f"line {i}\n" for i in range(95))]
  assert val == ["".join(f"line {i}\n" for i in range(95, 100))]


def test_glob_of_files_is_split_by_file(tmp_path):
  for i in range(60):
    (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}\n")
  pattern = str(tmp_path / "*.txt")
  train, val = texts(pattern, "train"), texts(pattern, "validation")
  assert len(train) + len(val) == 60 and val and not set(train) & set(val)


@pytest.mark.parametrize("name,match", [
    ("missing.txt", "no such file"), ("nothing*.txt", "no such file"), ("empty.txt", "holds no text")])
def test_bad_local_sources_name_the_setting(tmp_path, name, match):
  (tmp_path / "empty.txt").write_text("\n  \n")
  with pytest.raises(ConfigError, match=rf"data.source=.*{match}"):
    texts(str(tmp_path / name), "train")


def test_unknown_tfds_name():
  with pytest.raises(ConfigError, match=r"data.source='tfds:no_such_dataset_xyz'"):
    sources.documents("tfds:no_such_dataset_xyz", "train")


def test_any_tfds_dataset_by_name(tmp_path):
  # tfds.testing.mock_data serves random examples of a registered dataset's real features.
  with tfds.testing.mock_data(num_examples=6):
    docs = texts("tfds:imdb_reviews", "train")
    assert len(docs) == 6 and all(isinstance(d, str) for d in docs)
    with pytest.raises(ConfigError, match=r"data.text_key='body' is not a feature of tfds:imdb_reviews; it has"):
      texts("tfds:imdb_reviews", "train", text_key="body")
