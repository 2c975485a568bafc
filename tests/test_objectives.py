"""Objectives against hand-worked examples and their statistics."""

import numpy as np
import pytest

from bigjax.config import ConfigError
from bigjax.data import objectives


def test_causal_lm_shifts_by_one():
  b = objectives.CausalLM(4).example(np.array([5, 6, 7, 8, 9]), np.random.default_rng(0))
  np.testing.assert_array_equal(b["inputs"], [5, 6, 7, 8])
  np.testing.assert_array_equal(b["targets"], [6, 7, 8, 9])
  np.testing.assert_array_equal(b["weights"], [1, 1, 1, 1])


def test_masked_lm_rates_and_layout():
  mlm = objectives.MaskedLM(seq_len=102, base_vocab=1000)
  assert (mlm.cls_id, mlm.sep_id, mlm.mask_id, mlm.window) == (1000, 1001, 1002, 100)
  x = np.random.default_rng(0).integers(3, 1000, (4000, 100))
  rngs = [np.random.default_rng([7, i]) for i in range(len(x))]
  b = objectives.batch(mlm, x, rngs)
  assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (4000, 102)
  assert np.all(b["inputs"][:, 0] == 1000) and np.all(b["inputs"][:, -1] == 1001)
  np.testing.assert_array_equal(b["targets"][:, 1:-1], x)  # Targets are the original tokens.
  chosen = b["weights"] > 0
  assert np.all(chosen.sum(1) == 15)  # round(15% of 100), exactly, in every example.
  assert not chosen[:, 0].any() and not chosen[:, -1].any()
  inp, tgt = b["inputs"][chosen], b["targets"][chosen]
  masked, kept = np.mean(inp == 1002), np.mean(inp == tgt)
  assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01  # Random replacements: the rest (~10%).
  assert np.all(b["inputs"][~chosen] == b["targets"][~chosen])  # Unchosen tokens are untouched.
  again = objectives.batch(mlm, x[:3], [np.random.default_rng([7, i]) for i in range(3)])
  np.testing.assert_array_equal(again["inputs"], b["inputs"][:3])  # A function of (example, seed).


def test_span_corruption_lengths_match_t5():
  # The T5 paper's setting: 512 input tokens ← 568 raw tokens; 114 target tokens.
  assert objectives.span_corruption_lengths(512, 0.15, 3.0) == (568, 512, 114)


def test_span_corruption_hand_worked_example():
  sc = objectives.SpanCorruption(seq_len=16, base_vocab=50, eos_id=1, pad_id=0)
  window, _, tgt_len = objectives.span_corruption_lengths(16, 0.15, 3.0)
  x = np.arange(10, 10 + window)
  b = sc.example(x, np.random.default_rng(3))
  inp, tgt = list(b["inputs"]), list(b["targets"])
  # Rebuild the original text from inputs and targets: every sentinel in the inputs is replaced by the
  # tokens that follow the same sentinel in the targets.
  spans, cur = {}, None
  for t in tgt[:-1]:
    if t >= 50:
      cur = t
      spans[cur] = []
    else:
      spans[cur].append(t)
  assert tgt[-1] == 1 and inp[inp.index(1) - 0] == 1
  rebuilt = []
  for t in inp[:inp.index(1)]:
    rebuilt += spans[t] if t >= 50 else [t]
  assert rebuilt == list(x)
  sentinels = [t for t in inp if t >= 50]
  assert sentinels == [149 - i for i in range(len(sentinels))]  # <extra_id_0> = 149, then descending.
  assert len(tgt) == tgt_len and b["decoder_input_ids"][0] == 0
  np.testing.assert_array_equal(b["decoder_input_ids"][1:], b["targets"][:-1])


def test_span_corruption_statistics():
  sc = objectives.SpanCorruption(seq_len=512, base_vocab=1000, eos_id=1, pad_id=0)
  lengths, noise = [], 0
  for i in range(200):
    mask = objectives.random_spans_mask(568, 0.15, 3.0, np.random.default_rng(i))
    noise += mask.sum()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    lengths += list(edges[1::2] - edges[::2])
    assert not mask[0]  # Spans start after a non-noise gap, as in seqio.
  assert noise / (200 * 568) == pytest.approx(0.15, abs=0.002)
  assert np.mean(lengths) == pytest.approx(3.0, abs=0.05)
  b = sc.example(np.arange(568) + 2, np.random.default_rng(0))
  assert b["inputs"].shape == (512,) and b["targets"].shape == (114,)
  assert b["inputs"][-1] == 1 and b["targets"][-1] == 1  # Exactly full: no padding needed.


def test_bad_settings_are_named():
  with pytest.raises(ConfigError, match="data.objective='prefix_llm': allowed values are"):
    objectives.make("prefix_llm", 64, None)
  with pytest.raises(ConfigError, match="data.seq_len=4 is too short for span corruption"):
    objectives.SpanCorruption(seq_len=4, base_vocab=50, eos_id=1, pad_id=0)


class _Pieces:
  """A stand-in tokenizer that knows some special pieces."""

  vocab_size, pad_id, eos_id = 500, 0, 1

  def __init__(self, pieces):
    self.pieces = pieces

  def piece_id(self, piece):
    return self.pieces.get(piece)


def test_special_ids_come_from_the_tokenizer_when_it_has_them():
  bert = _Pieces({"[CLS]": 5, "[SEP]": 6, "[MASK]": 7})
  mlm = objectives.make("masked_lm", 16, bert)
  assert (mlm.cls_id, mlm.sep_id, mlm.mask_id, mlm.extra_ids) == (5, 6, 7, 0)
  assert objectives.vocab_size(mlm, bert) == 500
  cls = objectives.make("classification", 16, bert, num_labels=2)
  np.testing.assert_array_equal(cls.example(np.array([9]), 1)["inputs"][:3], [5, 9, 6])
  t5 = _Pieces({f"<extra_id_{i}>": 300 + i for i in range(100)})
  sc = objectives.make("span_corruption", 64, t5)
  assert sc.extra_ids == 0 and sc.sentinel(0) == 300 and sc.sentinel(99) == 399
  b = sc.example(np.arange(10, 10 + sc.window), np.random.default_rng(0))
  first = b["targets"][0]
  assert first == 300 and 300 in b["inputs"]  # Span 0's sentinel opens the targets and marks the inputs.
  with pytest.raises(ConfigError, match=r"data.tokenizer: the tokenizer has some of the T5 sentinel pieces but "
                                        r"not <extra_id_50>"):
    objectives.make("span_corruption", 64, _Pieces({f"<extra_id_{i}>": 300 + i for i in range(50)}))
  with pytest.raises(ConfigError, match=r"BERT pieces but not \[MASK\]"):
    objectives.make("masked_lm", 16, _Pieces({"[CLS]": 5, "[SEP]": 6}))


@pytest.mark.parametrize("name,seq_len,match", [
    ("prefix_lm", 3, "too short for prefix_lm"), ("text_to_text", 1, "text_to_text needs"),
    ("classification", 3, "too short for classification")])
def test_too_short_seq_len_names_the_setting(name, seq_len, match):
  with pytest.raises(ConfigError, match=match):
    objectives.make(name, seq_len, _Pieces({}), family="decoder")
