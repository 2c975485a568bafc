"""Text sources: the embedded corpora (TFDS builders), local files, errors."""

import json
import os
import sysconfig
import zlib

import pytest
import tensorflow_datasets as tfds

from bigjax.config import ConfigError
from bigjax.data import embedded
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
  ds = embedded.StdlibCode().as_dataset(split="validation")
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
    # TFDS slicing is accepted (a held-out eval slice of a train-only dataset); mock_data serves
    # num_examples for any split, so the slice's size is TFDS's business, not checked here.
    assert len(texts("tfds:imdb_reviews", "train[:50%]")) == 6
    with pytest.raises(ConfigError, match=r"data.text_key='body' is not a feature of tfds:imdb_reviews; it has"):
      texts("tfds:imdb_reviews", "train", text_key="body")


# ---- Records: named fields of JSONL / CSV files and of TFDS datasets.


def rows(source, split, keys, **kw):
  ds = sources.records(source, split, keys, **kw)
  return [{k: v.decode() for k, v in r.items()} for r in ds.as_numpy_iterator()]


def write_jsonl(path, objs):
  path.write_text("".join(json.dumps(o) + "\n" for o in objs))
  return str(path)


def test_jsonl_records_turn_values_into_strings(tmp_path):
  path = tmp_path / "train.jsonl"  # Named for a split: the train split is the whole file.
  path.write_text('{"text": "a", "label": 3, "score": 0.5, "ok": true}\n\n   \n'
                  '{"text": "b\\u2028c", "label": -1, "score": 2, "ok": false, "more": [1]}\n')
  got = rows(str(path), "train", ("text", "label", "score", "ok"))
  assert got == [{"text": "a", "label": "3", "score": "0.5", "ok": "True"},
                 {"text": "b\u2028c", "label": "-1", "score": "2", "ok": "False"}]


def test_csv_records_keep_quoted_commas_and_newlines(tmp_path):
  path = tmp_path / "train.csv"
  path.write_text('code,summary,n\n"def f(a, b):\n  return a",adds two,3\n\nx = 1,"says ""hi"", twice",4\n')
  assert rows(str(path), "train", ("code", "summary", "n")) == [
      {"code": "def f(a, b):\n  return a", "summary": "adds two", "n": "3"},
      {"code": "x = 1", "summary": 'says "hi", twice', "n": "4"}]
  tsv = tmp_path / "train.tsv"
  tsv.write_text("text\tlabel\nhello, world\tpos\n")
  assert rows(str(tsv), "train", ("label", "text")) == [{"label": "pos", "text": "hello, world"}]


def test_csv_split_by_row_text(tmp_path):
  lines = [f'"row {i},\n  more",{i}' for i in range(100)]  # Each row spans two lines.
  path = tmp_path / "pairs.csv"  # Names no split: records are split by the text of each row.
  path.write_text("text,n\n" + "\n".join(lines) + "\n")
  want_val = [str(i) for i, line in enumerate(lines) if zlib.crc32(line.encode()) % 100 < 5]
  assert want_val and [r["n"] for r in rows(str(path), "validation", ("n",))] == want_val
  assert len(rows(str(path), "train", ("text",))) == 100 - len(want_val)


def test_split_by_file_name(tmp_path):
  write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}"} for i in range(4)])
  write_jsonl(tmp_path / "sst2_validation.jsonl", [{"text": "v0"}])
  write_jsonl(tmp_path / "notes.jsonl", [{"text": "n0"}])  # Named for no split: read by none.
  pattern = str(tmp_path / "*.jsonl")
  assert [r["text"] for r in rows(pattern, "train", ("text",))] == ["t0", "t1", "t2", "t3"]
  assert rows(pattern, "validation", ("text",)) == rows(pattern, "dev", ("text",)) == [{"text": "v0"}]
  with pytest.raises(ConfigError, match=r"split 'test'.*: notes.jsonl, sst2_validation.jsonl, train.jsonl"):
    rows(pattern, "test", ("text",))


def test_split_by_content_hash(tmp_path):
  objs = [{"text": f"record {i}", "label": i % 3} for i in range(200)]
  path = write_jsonl(tmp_path / "latest.jsonl", objs)  # "latest" holds "test" but not as a word.
  train, val = rows(path, "train", ("text",)), rows(path, "validation", ("text",))
  want_val = [o["text"] for o in objs if zlib.crc32(json.dumps(o).encode()) % 100 < 5]
  assert [r["text"] for r in val] == want_val and 0 < len(want_val) < 30
  assert not {r["text"] for r in train} & set(want_val)
  assert sorted(r["text"] for r in train + val) == sorted(o["text"] for o in objs)
  # Too few records for the hash to choose one: the last record is validation.
  few = [o for o in objs if zlib.crc32(json.dumps(o).encode()) % 100 >= 5][:3]
  path = write_jsonl(tmp_path / "few.jsonl", few)
  assert rows(path, "validation", ("text",)) == [{"text": few[-1]["text"]}]
  assert len(rows(path, "train", ("text",))) == 2


def test_documents_of_record_files_use_text_key(tmp_path):
  path = write_jsonl(tmp_path / "train.jsonl", [{"code": "x = 1", "summary": "one"}, {"code": "y = 2"}])
  assert texts(path, "train", text_key="code") == ["x = 1", "y = 2"]
  assert sources.describe(path).startswith(path)  # A cache key of path, size and reader version.
  match = r"data.text_key='summary' is not a field of .*train.jsonl \(line 2\); it has: code$"
  with pytest.raises(ConfigError, match=match):
    texts(path, "train", text_key="summary")


def test_embedded_corpus_records():
  got = rows("pydoc_prose", "validation", ("name", "text"))
  assert got and all(zlib.crc32(r["name"].encode()) % 10 == 0 and r["text"] for r in got)


def test_tfds_records_give_label_names():
  with tfds.testing.mock_data(num_examples=8):
    names = tfds.builder("glue/sst2").info.features["label"].names
    got = rows("tfds:glue/sst2", "train", ("sentence", "label", "idx"))
  assert names == ["negative", "positive"]
  assert len(got) == 8 and all(r["label"] in names and r["idx"].isdigit() for r in got)
  assert all(isinstance(r["sentence"], str) for r in got)


@pytest.mark.parametrize("files,source,keys,match", [
    ({"train.jsonl": '{"code": "x", "summary": "s"}\n'}, "train.jsonl", ("body",),
     r"^data.text_key='body' is not a field of .*train.jsonl \(line 1\); it has: code, summary$"),
    ({"train.jsonl": '{"text": "x"}\n{"text": "y",}\n'}, "train.jsonl", ("text",),
     r"train.jsonl line 2 is not valid JSON"),
    ({"train.jsonl": '["text"]\n'}, "train.jsonl", ("text",), r"train.jsonl line 1 is a JSON list, not an"),
    ({"train.csv": "a,b\n1,2\n3\n"}, "train.csv", ("a",), r"train.csv line 3 has 1 fields but the header"),
    ({"train.jsonl": "\n\n"}, "train.jsonl", ("text",), r"data.source=.*the train split holds no records"),
    ({}, "missing.jsonl", ("text",), r"data.source=.*missing.jsonl.*no such file"),
    ({"a.txt": "some text\n"}, "a.txt", ("text", "label"), r"data.target_key='label': .* is plain text"),
    ({"a.txt": "x\n", "b.jsonl": "{}\n"}, "*", ("text",), r"mixes record files .* such as a.txt"),
    ({"train_val.jsonl": "{}\n"}, "*", ("text",), r"train_val.jsonl names more than one split"),
])
def test_bad_records_name_the_setting_and_line(tmp_path, files, source, keys, match):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  settings = {"body": "data.text_key", "label": "data.target_key"}
  with pytest.raises(ConfigError, match=match):
    rows(str(tmp_path / source), "train", keys, key_settings=settings)
