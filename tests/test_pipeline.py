"""The tf.data pipeline: windows, the step-addressed training stream, eval batches, caching."""

import shutil

import numpy as np
import pytest

from conftest import tiny_config
from bigjax.config import ConfigError
from bigjax.data import objectives
from bigjax.data import pipeline
from bigjax.data import tokenizer as tokenizer_lib


def causal_windows(tokens, seq_len):
  lm = objectives.CausalLM(seq_len)
  return pipeline.Windows(tokens, lm.window, lm.stride), lm


def make_stream(n_tokens=1000, seq_len=8, batch=4, seed=0, objective=None, **kw):
  tokens = np.arange(n_tokens, dtype=np.int32)
  objective = objective or objectives.CausalLM(seq_len)
  windows = pipeline.Windows(tokens, objective.window, objective.stride)
  return pipeline.TrainStream(windows, objective, global_batch=batch, seed=seed, **kw)


def test_windows_are_shifted_targets_of_contiguous_text():
  s = make_stream()
  b = s.batch(0)
  assert b["inputs"].shape == b["targets"].shape == (4, 8)
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  # Windows start at multiples of seq_len (tokens are their own positions here).
  assert np.all(b["inputs"][:, 0] % 8 == 0)
  np.testing.assert_array_equal(b["inputs"], b["inputs"][:, :1] + np.arange(8))


def test_each_epoch_visits_every_window_once_in_a_seeded_order():
  s = make_stream(n_tokens=8 * 12 + 1, batch=4)  # 12 windows, 3 steps per epoch.
  assert s.windows.count == 12
  epoch0 = np.concatenate([s.indices(k) for k in range(3)])
  epoch1 = np.concatenate([s.indices(k) for k in range(3, 6)])
  assert sorted(epoch0) == list(range(12)) and sorted(epoch1) == list(range(12))
  assert list(epoch0) != list(epoch1)  # Reshuffled per epoch.
  assert list(epoch0) != list(range(12))
  other_seed = make_stream(n_tokens=8 * 12 + 1, batch=4, seed=1)
  assert list(np.concatenate([other_seed.indices(k) for k in range(3)])) != list(epoch0)


def test_batch_straddling_an_epoch_boundary():
  s = make_stream(n_tokens=8 * 10 + 1, batch=4)  # 10 windows: step 2 holds 2 of epoch 0, 2 of epoch 1.
  idx = s.indices(2)
  perm0, perm1 = s._permutation(0), s._permutation(1)
  np.testing.assert_array_equal(idx, [perm0[8], perm0[9], perm1[0], perm1[1]])


def test_iterator_equals_pure_function_of_step():
  s = make_stream()
  it = s.iterate(5)
  for step in range(5, 9):
    (got, position), want = next(it), s.batch(step)
    assert position == {"next_example": (step + 1) * 4}  # What the checkpoint saves after this step.
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_batches_built_ahead_come_in_order_and_a_failure_raises_in_its_turn():
  import threading  # pylint: disable=g-import-not-at-top
  started, release = [], threading.Event()

  def make(plan):
    started.append(plan)
    if plan == 2:
      release.wait(10)  # The slowest batch: those after it are built meanwhile, yet come after it.
    if plan == 6:
      raise ValueError("batch 6 is bad")
    return {"x": np.full(3, plan)}

  it = pipeline.prefetched(make, iter(range(100)), lambda plan: {"next_example": plan + 1}, depth=3)
  assert [int(next(it)[0]["x"][0]) for _ in range(2)] == [0, 1]
  release.set()
  got = [next(it) for _ in range(4)]
  assert [(int(b["x"][0]), pos["next_example"]) for b, pos in got] == [(2, 3), (3, 4), (4, 5), (5, 6)]
  with pytest.raises(ValueError, match="batch 6 is bad"):
    next(it)
  assert max(started) <= 6 + 3  # Never more than `depth` batches ahead.
  it.close()


@pytest.mark.parametrize("objective", [None, objectives.MaskedLM(16, 2000),
                                       objectives.SpanCorruption(24, 2000, eos_id=1, pad_id=0)])
def test_processes_take_disjoint_rows_whose_union_is_the_global_batch(objective):
  whole = make_stream(batch=8, objective=objective)
  parts = [make_stream(batch=8, process_index=p, process_count=4, objective=objective) for p in range(4)]
  for step in (0, 3, 40):
    want = whole.batch(step)
    for key in want:  # Masks and spans too: each example's randomness is its own.
      np.testing.assert_array_equal(np.concatenate([p.batch(step)[key] for p in parts]), want[key])
  with pytest.raises(ConfigError, match="batch_size=8 does not divide over 3 processes"):
    make_stream(batch=8, process_count=3)


def test_eval_batches_cover_each_window_once_with_zero_weight_padding():
  w, lm = causal_windows(np.arange(8 * 10 + 1, dtype=np.int32), 8)  # 10 windows, batch 4 → 3 batches.
  batches = pipeline.eval_batches(w, lm, global_batch=4, num_batches=0)
  assert len(batches) == 3
  weights = np.concatenate([b["weights"][:, 0] for b in batches])
  np.testing.assert_array_equal(weights, [1] * 10 + [0] * 2)
  starts = np.concatenate([b["inputs"][:, 0] for b in batches])[:10]
  np.testing.assert_array_equal(starts, np.arange(10) * 8)
  two = pipeline.eval_batches(w, lm, global_batch=4, num_batches=2, process_index=1, process_count=2)
  np.testing.assert_array_equal(two[0]["inputs"][:, 0], [16, 24])


def test_too_short_text_is_an_error():
  with pytest.raises(ConfigError, match="seq_len=8"):
    make_stream(n_tokens=5)


def test_unigram_reference():
  logp = pipeline.unigram_log_probs(np.array([1, 1, 1, 2]), 4)
  np.testing.assert_allclose(np.exp(logp).sum(), 1.0)
  np.testing.assert_allclose(np.exp(logp), [1 / 8, 4 / 8, 2 / 8, 1 / 8])
  batch = {"targets": np.array([[1, 2]]), "weights": np.array([[1.0, 0.0]])}
  ref = pipeline.eval_reference([batch], logp, np.array([0, 3, 5, 1]))
  assert ref == {"tokens": 1.0, "bytes": 3.0, "unigram_nats": pytest.approx(-np.log(0.5))}


def test_build_tokenizes_and_caches_a_local_file(text_file):
  cfg = tiny_config(text_file)
  data = pipeline.build(cfg)
  text = open(text_file, encoding="utf-8").read()
  lines = text.splitlines(keepends=True)
  n_val = len(lines) // 20
  tok = tokenizer_lib.ByteTokenizer()
  want_train = tok.encode(["".join(lines[:-n_val])])[0] + [tok.eos_id]
  np.testing.assert_array_equal(data.train_tokens, want_train)
  assert data.eval_windows.count == (len("".join(lines[-n_val:]).encode()) + 1 - 1) // 32
  again = pipeline.build(cfg)  # From the cache: the same tokens.
  np.testing.assert_array_equal(again.train_tokens, data.train_tokens)


@pytest.mark.parametrize("name", ["byte", "code_sp4k.model"])
def test_local_text_is_tokenized_without_tensorflow_to_the_same_ids(text_file, tmp_path, monkeypatch, name):
  """The Python path for local text files gives the tf.data path's ids (a multi-file source too)."""
  tok = tokenizer_lib.load(name)
  for k in range(3):
    (tmp_path / f"doc{k}.txt").write_text(f"Ünïcode line {k}\n" + open(text_file, encoding="utf-8").read()[:2000])
  for source in (text_file, str(tmp_path / "*.txt")):
    for split in ("train", "validation"):
      fast = pipeline.tokenize_split(source, split, tok, data_dir=str(tmp_path / "a"))
      monkeypatch.setattr(pipeline.sources, "local_texts", lambda *a, **k: None)  # Force the tf.data path.
      slow = pipeline.tokenize_split(source, split, tok, data_dir=str(tmp_path / "b"))
      monkeypatch.undo()
      np.testing.assert_array_equal(fast, slow)
      for d in ("a", "b"):  # Tokenized anew next time, both ways.
        shutil.rmtree(tmp_path / d, ignore_errors=True)


def test_tokenizer_larger_than_model_vocab_is_refused(text_file):
  with pytest.raises(ConfigError, match=r"259 ids, more than model.vocab_size=100"):
    pipeline.build(tiny_config(text_file, **{"model.vocab_size": 100}))
  # Span corruption needs T5's 100 sentinel ids on top of the tokenizer's.
  with pytest.raises(ConfigError, match=r"259 ids plus 100 special ids of span_corruption, more than "
                     r"model.vocab_size=264; raise model.vocab_size to at least 359"):
    pipeline.build(tiny_config(text_file, **{"model.family": "encoder_decoder", "model.positions": "relative"}))


def test_objective_must_suit_the_family(text_file):
  with pytest.raises(ConfigError, match=r"data.objective='masked_lm' does not train model.family='decoder'"):
    pipeline.build(tiny_config(text_file, **{"data.objective": "masked_lm"}))


def test_unigram_reference_gives_special_target_ids_their_sampled_share():
  # Text ids 0..3 (counts from the stream), special ids 4..5 (a sentinel-like id in 1/4 of the targets).
  logp = pipeline.unigram_log_probs(np.array([1, 1, 1, 2]), 6, special_targets=np.tile([1, 4, 2, 4, 3, 3, 1, 1], 100),
                                    text_vocab=4)
  p = np.exp(logp)
  np.testing.assert_allclose(p.sum(), 1.0)
  assert p[4] == pytest.approx(0.25, abs=0.01) and p[5] < 0.01
  np.testing.assert_allclose(p[:4] / p[:4].sum(), [1 / 8, 4 / 8, 2 / 8, 1 / 8])


def test_glue_style_tfds_classification_builds(tmp_path):
  """A labelled TFDS dataset (GLUE's SST-2, mocked offline) becomes classification batches."""
  import tensorflow_datasets as tfds
  from conftest import tiny_config as tiny
  cfg = tiny("tfds:glue/sst2", **{
      "model.family": "encoder", "model.encoder_head": "classifier", "model.num_labels": 2,
      "data.objective": "classification", "data.text_key": "sentence", "data.target_key": "label",
      "data.eval_split": "validation", "data.data_dir": str(tmp_path), "data.batch_size": 4, "data.eval_batches": 0})
  with tfds.testing.mock_data(num_examples=12):
    data = pipeline.build(cfg)
  assert data.labels == ["negative", "positive"]  # The ClassLabel's names, in index order.
  b = data.train.example_batch()
  assert b["inputs"].shape == (4, 32) and b["targets"].shape == (4,)
  assert set(b["targets"].tolist()) <= {0, 1} and (b["inputs"][:, 0] == 259).all()  # [CLS] after the bytes.
  assert sum(e["weights"].sum() for e in data.eval) == 12
