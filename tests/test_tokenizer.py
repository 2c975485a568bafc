"""Tokenizers: shipped SentencePiece models and bytes, in Python and inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from bigjax.config import ConfigError
from bigjax.data import tokenizer as tokenizer_lib

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


def test_train_sentencepiece(tmp_path):
  rng = np.random.default_rng(0)
  syllables = ["ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "ve", "zu", "def", "(", ")", ":"]
  texts = [" ".join("".join(rng.choice(syllables, 3)) for _ in range(12)) + "\n    x = 1\n" for _ in range(400)]
  tok = tokenizer_lib.train_sentencepiece(texts, str(tmp_path / "t.model"), vocab_size=400)
  assert tok.vocab_size == 400 and (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert tok.decode(tok.encode(["alpha  beta\n\tΩ"])[0]) == "alpha  beta\n\tΩ"
  with pytest.raises(ConfigError, match="model_type"):
    tokenizer_lib.train_sentencepiece(texts, str(tmp_path / "u.model"), vocab_size=400, model_type="wordpiece")


def test_byte_tokenizer_ids():
  tok = tokenizer_lib.ByteTokenizer()
  assert tok.encode(["A\xff"])[0] == [65 + 3, 0xC3 + 3, 0xBF + 3]
  np.testing.assert_array_equal(tok.byte_lengths()[:4], [0, 0, 0, 1])
