"""Data paths that used to fall back silently: a split plain text does not have, caches keyed by name and
size, processes racing to prepare the same data, and planning that needed the tokenizer file and TF."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_config
from bigjax import config as config_lib
from bigjax import plan
from bigjax.config import ConfigError
from bigjax.data import embedded
from bigjax.data import pipeline
from bigjax.data import sources
from bigjax.data import tokenizer as tokenizer_lib

BYTE = tokenizer_lib.ByteTokenizer()


# ---- (2) A split that plain text does not have is an error naming the setting, not the validation split.


@pytest.mark.parametrize("setting", ["data.eval_split", "data.train_split"])
def test_plain_text_has_train_and_validation_only(text_file, setting):
  config = tiny_config(text_file, **{setting: "test"})
  with pytest.raises(ConfigError) as e:
    pipeline.build(config)
  msg = str(e.value)
  assert f"{setting}='test'" in msg and "plain text" in msg and "'train', 'validation'" in msg, msg
  assert "\n" not in msg
  with pytest.raises(ConfigError, match=r"split='test': data.source=.* is plain text"):
    sources.documents(text_file, "test")


def test_embedded_corpus_split_names_the_setting():
  with pytest.raises(ConfigError, match=r"^data.eval_split='test': pydoc_prose has the splits 'train' and "
                     r"'validation' only \(allowed: 'train', 'validation'\)$"):
    sources.check_split("pydoc_prose", "test", "data.eval_split")


def test_record_files_named_for_their_splits_keep_them(tmp_path):
  for split in ("train", "test"):
    (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"text": f"{split} {i}"}) + "\n" for i in range(3)))
  source = str(tmp_path / "*.jsonl")
  sources.check_split(source, "test", "data.eval_split")  # No error: the file names give the splits.
  docs = [t.decode() for t in sources.documents(source, "test").as_numpy_iterator()]
  assert docs == ["test 0", "test 1", "test 2"]


# ---- (4) Caches are keyed by what they were made from.


def test_a_local_file_edited_in_place_is_tokenized_anew(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("".join(f"line {i} of the first text\n" for i in range(40)))
  stat = os.stat(path)
  first = np.array(pipeline.tokenize_split(str(path), "train", BYTE, data_dir=str(tmp_path / "dd")))
  # Same size, same mtime: only the bytes tell the two apart.
  path.write_text(path.read_text().replace("first", "other"))
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert os.path.getsize(path) == stat.st_size
  second = np.array(pipeline.tokenize_split(str(path), "train", BYTE, data_dir=str(tmp_path / "dd")))
  lines = path.read_text().splitlines(keepends=True)
  np.testing.assert_array_equal(second, BYTE.encode(["".join(lines[:-2])])[0] + [BYTE.eos_id])
  assert not np.array_equal(first, second)


def test_embedded_corpus_data_and_caches_follow_its_inputs(tmp_path, monkeypatch):
  """Another Python (or an edited stdlib) has another fingerprint: a TFDS config and token caches of its own."""
  import tensorflow_datasets as tfds
  dd = str(tmp_path)
  name = sources.fingerprint("pydoc_prose")
  assert name.startswith(f"{sys.implementation.name}{sys.version_info.major}.{sys.version_info.minor}.")
  first = np.array(pipeline.tokenize_split("pydoc_prose", "validation", BYTE, data_dir=dd))
  assert tfds.builder("pydoc_prose", data_dir=dd).builder_config.name == name
  assert name in os.listdir(tmp_path / "pydoc_prose")  # pydoc_prose/<config>/1.0.0

  monkeypatch.setattr(sources, "_pydoc_digest", lambda: "0" * 64)  # As another interpreter's topics would.
  other = sources.fingerprint("pydoc_prose")
  assert other != name and sources.describe("pydoc_prose") != f"pydoc_prose|{name}"
  second = np.array(pipeline.tokenize_split("pydoc_prose", "validation", BYTE, data_dir=dd))
  np.testing.assert_array_equal(first, second)  # The same topics in truth, but prepared and tokenized anew:
  assert {name, other} <= set(os.listdir(tmp_path / "pydoc_prose"))
  assert len([f for f in os.listdir(tmp_path / "bigjax_tokens") if f.endswith(".npy")]) == 2

  before = sources.describe("stdlib_code")
  monkeypatch.setattr(sources, "_stdlib_digest", lambda: "1" * 64)
  assert sources.describe("stdlib_code") != before
  assert embedded.StdlibCode(data_dir=dd).builder_config.name == sources.fingerprint("stdlib_code")


# ---- (6) Processes preparing the same data at once: one prepares, the others wait for it.

_RACER = """
import os, sys, time
import numpy as np
from bigjax.data import pipeline, tokenizer
mark, me, out = sys.argv[1:]
open(mark + me, "w").close()
while not all(os.path.exists(mark + p) for p in "ab"):  # Both imported: start together.
  time.sleep(0.01)
np.save(out, pipeline.tokenize_split("pydoc_prose", "train", tokenizer.ByteTokenizer()))
"""


def test_two_processes_prepare_an_embedded_corpus_once(tmp_path):
  data_dir = tmp_path / "tfds"
  env = {**os.environ, "TFDS_DATA_DIR": str(data_dir)}
  procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path / "ready-"), me, str(tmp_path / f"{me}.npy")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for me in "ab"]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  a, b = (np.load(tmp_path / f"{me}.npy") for me in "ab")
  assert a.size > 100_000 and np.array_equal(a, b)
  assert sum(o.count("Downloading and preparing dataset") for o in outs) == 1, outs  # TFDS's line, once.
  tokens = os.listdir(data_dir / "bigjax_tokens")
  assert len([f for f in tokens if f.endswith(".npy")]) == 1 and not [f for f in tokens if f.endswith(".tmp")]


# ---- (7) Planning needs neither the tokenizer file nor TensorFlow.


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
  d = tmp_path_factory.mktemp("labelled")
  for split, n in (("train", 24), ("validation", 8)):
    rows = [{"text": f"def f{i}(x):\n  return x + {i}\n" * (1 + i % 3), "target": f"adds {i}",
             "label": "even" if i % 2 == 0 else "odd"} for i in range(n)]
    (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(d / "*.jsonl")


ENCODER = {"model.family": "encoder", "model.norm_position": "post", "model.type_vocab_size": 2}
T5 = {"model.family": "encoder_decoder", "model.positions": "relative", "model.norm": "rmsnorm",
      "model.use_bias": False, "model.vocab_size": 384}
OBJECTIVES = [
    ("causal_lm", {}), ("prefix_lm", {}), ("prefix_lm", T5), ("masked_lm", ENCODER), ("span_corruption", T5),
    ("text_to_text", {"data.target_key": "target"}), ("text_to_text", {**T5, "data.target_key": "target"}),
    ("classification", {**ENCODER, "model.encoder_head": "classifier", "data.target_key": "label"}),
]


@pytest.mark.parametrize("objective,overrides", OBJECTIVES)
def test_planned_batch_shapes_are_the_pipelines_without_the_tokenizer(text_file, labelled, objective, overrides):
  source = labelled if objective in ("text_to_text", "classification") else text_file
  config = tiny_config(source, **{"data.objective": objective, **overrides})
  real = pipeline.build(config).train.example_batch()
  config.data.tokenizer = "not_trained_yet.model"  # As a paper config before its tokenizer is made.
  planned = plan.abstract_batch(config, config_lib.model_config(config))
  assert {k: (v.shape, v.dtype) for k, v in planned.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}


def test_planning_imports_no_tensorflow():
  """`import bigjax.data.objectives`, `plan.abstract_batch` and the paper config's `bigjax plan`, as its
  docstring would write it once the tokenizer need not exist (this one does not), load no TensorFlow."""
  code = """
import sys
import bigjax.data.objectives
from bigjax import config as config_lib, main, plan
c = config_lib.default_config()
c.data.tokenizer = "not_trained_yet.model"
batch = plan.abstract_batch(c, config_lib.model_config(c))
assert batch["inputs"].shape == (c.data.batch_size, c.data.seq_len), batch
main.main(["bigjax", "plan", "--config", "experiments/papers/bert_base.py", "--topology", "v4-8", "--mesh", "4,1,1"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
print("loaded:", loaded[:5])
sys.exit(1 if loaded else 0)
"""
  assert not os.path.exists(os.path.join(REPO, "tokenizers", "wiki_en_bpe30k.model"))  # What bert_base.py names.
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stdout + r.stderr[-3000:]
  assert "bigjax plan: encoder, 109,514,298 params" in r.stdout and "fits:" in r.stdout, r.stdout
