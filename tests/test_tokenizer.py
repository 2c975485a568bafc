"""Tokenizers: shipped SentencePiece models and bytes, in Python and inside tf.data."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bigjax.config import ConfigError
from bigjax.data import tokenizer as tokenizer_lib
from conftest import REPO


def bigjax(*args):
  """The CLI as tests/test_main.py runs it: a fresh interpreter in the repo root."""
  return subprocess.run([sys.executable, "-m", "bigjax.main", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


CODE = 'def f(x):\n\t"""Dоc — ünïcode ✓."""\n    return {x: [1, 2.5e-3]}  # tail  \n\n'


@pytest.mark.parametrize("name,vocab", [("prose_sp4k.model", 4096), ("code_sp4k.model", 4096),
                                        ("code_sp8k.model", 8192), ("byte", 259)])
def test_shipped_tokenizers(name, vocab):
  tok = tokenizer_lib.load(name)
  assert tok.vocab_size == vocab
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  ids = tok.encode([CODE])[0]
  assert tok.decode(ids) == CODE  # Whitespace, tabs, newlines and non-ASCII survive exactly.
  assert tok.unk_id not in ids
  encode = tok.tf_encoder()
  ds = tf.data.Dataset.from_tensor_slices([CODE, "x = 1"]).map(encode)
  got = [list(x) for x in ds.as_numpy_iterator()]
  assert got == tok.encode([CODE, "x = 1"])
  lengths = tok.byte_lengths()
  assert lengths.shape == (vocab,) and lengths[tok.eos_id] == 0
  n_bytes = len(CODE.encode("utf-8"))
  assert int(lengths[ids].sum()) in (n_bytes, n_bytes + 1)  # SentencePiece may add one leading space.


def test_unknown_tokenizer_names_the_setting():
  with pytest.raises(ConfigError, match=r"data.tokenizer='nope.model'.*code_sp8k.model"):
    tokenizer_lib.load("nope.model")


def syllable_texts(n):
  rng = np.random.default_rng(0)
  syllables = ["ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "ve", "zu", "def", "(", ")", ":"]
  return [" ".join("".join(rng.choice(syllables, 3)) for _ in range(12)) + "\n    x = 1\n" for _ in range(n)]


def test_train_sentencepiece(tmp_path):
  texts = syllable_texts(400)
  tok = tokenizer_lib.train_sentencepiece(texts, str(tmp_path / "t.model"), vocab_size=400)
  assert tok.vocab_size == 400 and (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert tok.decode(tok.encode(["alpha  beta\n\tΩ"])[0]) == "alpha  beta\n\tΩ"
  with pytest.raises(ConfigError, match="model_type"):
    tokenizer_lib.train_sentencepiece(texts, str(tmp_path / "u.model"), vocab_size=400, model_type="wordpiece")


def test_byte_tokenizer_ids():
  tok = tokenizer_lib.ByteTokenizer()
  assert tok.encode(["A\xff"])[0] == [65 + 3, 0xC3 + 3, 0xBF + 3]
  np.testing.assert_array_equal(tok.byte_lengths()[:4], [0, 0, 0, 1])


def test_special_pieces(tmp_path):
  specials = list(tokenizer_lib.BERT_SPECIALS) + tokenizer_lib.sentinel_pieces(100)
  assert specials[3] == "<extra_id_0>" and specials[-1] == "<extra_id_99>"
  tok = tokenizer_lib.train_sentencepiece(syllable_texts(300), str(tmp_path / "s.model"), vocab_size=500,
                                          special_pieces=specials)
  ids = [tok.piece_id(p) for p in specials]
  assert None not in ids and len(set(ids)) == len(specials) and not set(ids) & {0, 1, 2}
  mask = tok.piece_id("[MASK]")
  got = tok.encode(["[MASK]"])[0]
  # One id for the piece, after SentencePiece's dummy-prefix "▁" at the start of a text.
  assert got[-1] == mask and [tok.sp.id_to_piece(i) for i in got[:-1]] in ([], ["\u2581"])
  assert mask in tok.encode(["ka [MASK] lo"])[0]
  assert tok.piece_id("<extra_id_7>") in tok.encode(["a<extra_id_7>b"])[0]
  assert tok.decode(tok.encode(["ka [MASK] lo<extra_id_3>"])[0]) == "ka [MASK] lo<extra_id_3>"
  assert tok.piece_id("<extra_id_100>") is None and tok.piece_id("[PAD]") is None
  assert tokenizer_lib.load("code_sp4k.model").piece_id("[MASK]") is None
  assert tokenizer_lib.ByteTokenizer().piece_id("[MASK]") is None
  with pytest.raises(ConfigError, match=r"--vocab_size=300: Vocabulary size is smaller"):
    tokenizer_lib.train_sentencepiece(syllable_texts(300), str(tmp_path / "u.model"), vocab_size=300,
                                      special_pieces=specials)


def test_cli_trains_a_tokenizer_on_jsonl_records(tmp_path):
  data = tmp_path / "docs.jsonl"
  data.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(syllable_texts(300))))
  out = tmp_path / "t.model"
  r = bigjax("tokenizer", "train", "--input", str(data), "--text_key", "body", "--special_pieces", "bert",
             "--vocab_size", "400", "--out", str(out))
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"wrote {out} (400 ids, 3 special pieces" in r.stdout
  tok = tokenizer_lib.load(str(out))
  assert [tok.piece_id(p) for p in tokenizer_lib.BERT_SPECIALS] == [5, 6, 7]
  assert tok.piece_id("<extra_id_0>") is None
  usage = bigjax("tokenizer", "--help")
  assert usage.returncode == 0
  assert all(f in usage.stdout for f in ("--input", "--special_pieces", "--text_key", "JSONL"))
