"""Record objectives and packing: hand-worked rows, packed = unpacked per-example losses, exact resume
from the saved data position, process shards."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import config as config_lib
from bigjax import models
from bigjax.data import objectives
from bigjax.data import pipeline


def make_records(n, seed=0, max_in=20, max_tgt=9, vocab=60, labels=False):
  rng = np.random.default_rng(seed)
  ins = [rng.integers(3, vocab, rng.integers(1, max_in)) for _ in range(n)]
  offsets = lambda xs: np.concatenate([[0], np.cumsum([len(x) for x in xs])]).astype(np.int64)
  if labels:
    return pipeline.Records(np.concatenate(ins).astype(np.int32), offsets(ins),
                            labels=rng.integers(0, 3, n).astype(np.int32))
  tgts = [rng.integers(3, vocab, rng.integers(1, max_tgt)) for _ in range(n)]
  return pipeline.Records(np.concatenate(ins).astype(np.int32), offsets(ins),
                          np.concatenate(tgts).astype(np.int32), offsets(tgts))


def test_text_to_text_rows_by_hand():
  dec = objectives.TextToText(seq_len=8, target_len=0, encoder_decoder=False, eos_id=1, pad_id=0)
  row = dec.row([(np.array([10, 11]), np.array([20])), (np.array([12]), np.array([21, 22]))])
  #            10 11 EOS 20 | 12 EOS 21   (targets shifted by one; loss on 20 EOS and 21 22 EOS)
  np.testing.assert_array_equal(row["inputs"], [10, 11, 1, 20, 12, 1, 21, 22])
  np.testing.assert_array_equal(row["targets"], [11, 1, 20, 1, 1, 21, 22, 1])
  np.testing.assert_array_equal(row["weights"], [0, 0, 1, 1, 0, 1, 1, 1])
  np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(row["positions"], [0, 1, 2, 3, 0, 1, 2, 3])
  # Truncation: the target keeps up to half the row when the input is long, the input the rest.
  one = dec.example(np.arange(100, 120), np.arange(200, 220))
  np.testing.assert_array_equal(one["inputs"], [100, 101, 102, 1, 200, 201, 202, 203])
  np.testing.assert_array_equal(one["weights"], [0, 0, 0, 1, 1, 1, 1, 1])

  ed = objectives.TextToText(seq_len=6, target_len=4, encoder_decoder=True, eos_id=1, pad_id=0)
  # A long target is cut to target_len - 1 = 3 tokens + EOS, which fills a row alone.
  np.testing.assert_array_equal(ed.example(np.array([12]), np.array([21, 22, 23, 24]))["targets"], [21, 22, 23, 1])
  with pytest.raises(ValueError, match="do not fit"):
    ed.row([(np.array([10]), np.array([20])), (np.array([12]), np.array([21, 22, 23, 24]))])
  row = ed.row([(np.array([10, 11]), np.array([20])), (np.array([12]), np.array([21]))])
  np.testing.assert_array_equal(row["inputs"], [10, 11, 1, 12, 1, 0])
  np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 2, 2, 0])
  np.testing.assert_array_equal(row["targets"], [20, 1, 21, 1])
  np.testing.assert_array_equal(row["decoder_input_ids"], [0, 20, 0, 21])  # Each segment starts afresh.
  np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 2, 2])


def test_classification_and_prefix_lm_by_hand():
  cls = objectives.Classification(seq_len=6, base_vocab=50, num_labels=3, pad_id=0)
  ex = cls.example(np.array([7, 8, 9, 10, 11]), 2)
  np.testing.assert_array_equal(ex["inputs"], [50, 7, 8, 9, 10, 51])  # [CLS] … [SEP], truncated.
  assert ex["targets"] == 2 and ex["attention_mask"].sum() == 6
  short = cls.example(np.array([7]), 0)
  np.testing.assert_array_equal(short["inputs"], [50, 7, 51, 0, 0, 0])
  np.testing.assert_array_equal(short["attention_mask"], [1, 1, 1, 0, 0, 0])

  p = objectives.PrefixLM(seq_len=8, encoder_decoder=False)
  splits = []
  for i in range(400):
    ex = p.example(np.arange(10, 19), np.random.default_rng(i))
    s = int(ex["prefix_mask"].sum())
    splits.append(s)
    np.testing.assert_array_equal(ex["weights"], np.arange(8) >= s - 1)  # Scored from x[s] on.
    np.testing.assert_array_equal(ex["targets"], np.arange(11, 19))
  assert set(splits) == set(range(1, 8))  # Every split point 1..seq_len-1 occurs.
  ed = objectives.PrefixLM(seq_len=8, encoder_decoder=True, eos_id=1, pad_id=0)
  ex = ed.example(np.arange(10, 17), np.random.default_rng(3))
  s = int(ex["attention_mask"].sum()) - 1
  np.testing.assert_array_equal(ex["inputs"][:s + 1], list(range(10, 10 + s)) + [1])
  n_t = 7 - s + 1
  np.testing.assert_array_equal(ex["targets"][:n_t], list(range(10 + s, 17)) + [1])
  assert ex["weights"].sum() == n_t and ex["decoder_input_ids"][0] == 0


def _stream(records, objective, batch=4, pack=True, **kw):
  return pipeline.RecordStream(records, objective, global_batch=batch, seed=3, pack=pack, **kw)


def _fill(batch):
  """How full the rows are, in the stream that binds (encoder or decoder, whichever is fuller)."""
  return max((batch[k] > 0).mean() for k in ("segment_ids", "decoder_segment_ids") if k in batch)


@pytest.mark.parametrize("encoder_decoder", [False, True])
def test_packing_plan_is_dense_complete_and_in_order(encoder_decoder):
  obj = objectives.TextToText(seq_len=32, target_len=12, encoder_decoder=encoder_decoder)
  recs = make_records(300)
  stream = _stream(recs, obj)
  cursor, seen, fill = 0, [], []
  for _ in range(10):
    rows, nxt = stream.plan(cursor)
    assert len(rows) == 4 and all(rows)
    flat = [g for r in rows for g in r]
    assert sorted(flat) == list(range(cursor, nxt))  # Consecutive examples, each exactly once.
    seen += flat
    batch = stream.build(rows)
    fill.append(_fill(batch))
    for k, r in enumerate(rows):  # Segment k + 1 of a row is the row's k-th example.
      assert batch["segment_ids"][k].max() == len(r)
    cursor = nxt
  assert sorted(seen) == list(range(cursor))
  unpacked = _stream(recs, obj, pack=False)
  sparse = np.mean([_fill(unpacked.build(unpacked.plan(c)[0])) for c in range(0, 40, 4)])
  assert np.mean(fill) > 0.75 and np.mean(fill) > 1.5 * sparse, (fill, sparse)


def _tiny(family):
  if family == "decoder":
    return config_lib.ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=48, max_len=32)
  return config_lib.preset("t5_v1_1_small", vocab_size=64, d_model=32, num_layers=2, num_decoder_layers=2,
                           num_heads=4, head_dim=8, d_ff=48)


def _per_token_nll(module, params, batch):
  @jax.jit  # One compile instead of op-by-op dispatch.
  def run(params, batch):
    extra = {k: v for k, v in batch.items() if k not in ("inputs", "targets", "weights")}
    logits = module.apply({"params": params}, batch["inputs"], **extra)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  return np.asarray(run(params, batch))


@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_packed_batch_gives_the_same_per_example_losses_as_unpacked(family):
  cfg = _tiny(family)
  obj = objectives.TextToText(seq_len=32, target_len=12, encoder_decoder=family == "encoder_decoder")
  recs = make_records(40, seed=5, max_in=12, max_tgt=6)
  stream = _stream(recs, obj, batch=3)
  rows, _ = stream.plan(0)
  packed = stream.build(rows)
  module = models.build(cfg)
  init_args = [jnp.asarray(packed["inputs"][:1])] + (
      [jnp.asarray(packed["decoder_input_ids"][:1])] if family == "encoder_decoder" else [])
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), *init_args)["params"])
  nll = _per_token_nll(module, params, packed)
  seg_key = "decoder_segment_ids" if family == "encoder_decoder" else "segment_ids"
  order = [(r, k, g) for r, row in enumerate(rows) for k, g in enumerate(row)]
  # Each example alone in its own row (padded to the row length), all in one batch.
  alone = objectives.stack([obj.example(*recs.get(stream.record(g))) for _, _, g in order])
  alone_losses = (_per_token_nll(module, params, alone) * alone["weights"]).sum(1)
  for (r, k, _), want in zip(order, alone_losses):
    sel = packed[seg_key][r] == k + 1
    np.testing.assert_allclose(float((nll[r] * packed["weights"][r])[sel].sum()), want, rtol=2e-5)
  assert len(order) >= 2 * len(rows)  # Several examples per row were compared.


def test_resume_from_the_saved_position_yields_the_same_batches():
  obj = objectives.TextToText(seq_len=32, target_len=12, encoder_decoder=True)
  stream = _stream(make_records(120, seed=7), obj)
  it = stream.iterate(0)
  straight = [next(it) for _ in range(8)]
  _, position = straight[3]
  assert position == {"next_example": stream.cursor_at(4)}
  resumed = stream.iterate(4, position)
  for want, _ in straight[4:]:
    got, _ = next(resumed)
    assert sorted(got) == sorted(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  # Without a saved position the stream replays the plans to the same place.
  got, _ = next(stream.iterate(4))
  np.testing.assert_array_equal(got["inputs"], straight[4][0]["inputs"])


@pytest.mark.parametrize("pack", [True, False])
def test_process_shards_are_disjoint_and_union_is_the_single_process_batch(pack):
  obj = objectives.TextToText(seq_len=32, target_len=0, encoder_decoder=False)
  recs = make_records(90, seed=2)
  one = _stream(recs, obj, pack=pack)
  parts = [_stream(recs, obj, pack=pack, process_index=p, process_count=2) for p in range(2)]
  cursor = 0
  for _ in range(4):
    rows, nxt = one.plan(cursor)
    whole = one.build(rows)
    halves = [p.build(p.plan(cursor)[0]) for p in parts]
    assert all(p.plan(cursor)[1] == nxt for p in parts)
    for k in whole:
      np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])
    cursor = nxt


def test_classification_stream_and_eval_batches():
  obj = objectives.Classification(seq_len=16, base_vocab=60, num_labels=3)
  recs = make_records(10, labels=True)
  stream = _stream(recs, obj, pack=True)  # Classification never packs: one [CLS] per row.
  b = stream.example_batch()
  assert b["targets"].shape == (4,) and b["inputs"].shape == (4, 16)
  np.testing.assert_array_equal(b["targets"], [recs.labels[stream.record(g)] for g in range(4)])
  evals = pipeline.record_eval_batches(recs, obj, global_batch=4, num_batches=0)
  assert len(evals) == 3 and evals[-1]["weights"].tolist() == [1, 1, 0, 0]
  np.testing.assert_array_equal(np.concatenate([e["targets"] for e in evals])[:10], recs.labels)
