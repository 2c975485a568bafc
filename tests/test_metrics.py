"""bigjax.eval.metrics against hand-worked values and independent references."""

import itertools
import json
import math

import numpy as np
import pytest
from etils import epath
from sklearn import metrics as skm

from bigjax.eval import metrics


def pairwise_auc(scores, positive):
  """ROC-AUC by counting (positive, negative) pairs ranked correctly, ties half: the definition."""
  pos = [s for s, p in zip(scores, positive) if p]
  neg = [s for s, p in zip(scores, positive) if not p]
  wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_three_classes_by_hand():
  # Rows = true a, b, c; columns = predicted:  a: [2 1 0]  b: [0 1 1]  c: [0 0 1].
  y_true = ["a", "a", "a", "b", "b", "c"]
  y_pred = ["a", "a", "b", "b", "c", "c"]
  r = metrics.classification(y_true, y_pred, label_names=["a", "b", "c"])
  assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  assert r["labels"] == ["a", "b", "c"]
  assert r["accuracy"] == pytest.approx(4 / 6)
  # Precision a 2/2, b 1/2, c 1/2; recall a 2/3, b 1/2, c 1/1; F1 a 4/5, b 1/2, c 2/3.
  assert r["precision"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
  assert r["recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
  assert r["f1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
  assert r["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 4 / 5, "support": 3})
  assert [r["per_class"][k]["support"] for k in "abc"] == [3, 2, 1]
  assert r["count"] == 6 and r["macro_over"] == 3
  assert "roc_auc" not in r  # No probs given.


def test_integer_indices_and_default_labels():
  by_index = metrics.classification([0, 1, 1], [0, 1, 0], label_names=["neg", "pos"])
  by_name = metrics.classification(["neg", "pos", "pos"], ["neg", "pos", "neg"], label_names=["neg", "pos"])
  assert by_index == by_name
  default = metrics.classification(["y", "x", "y"], ["y", "y", "y"])
  assert default["labels"] == ["x", "y"] and default["confusion"] == [[0, 1], [0, 2]]


def test_class_absent_from_eval_set():
  # "d" never occurs in y_true but is predicted once; "e" occurs nowhere.
  y_true = [0, 0, 1, 1, 2, 2]
  y_pred = [0, 3, 1, 1, 2, 0]
  names = ["a", "b", "c", "d", "e"]
  probs = np.array([[.7, .1, .1, .05, .05],
                    [.3, .2, .1, .35, .05],
                    [.1, .6, .2, .05, .05],
                    [.2, .5, .1, .1, .1],
                    [.1, .1, .6, .1, .1],
                    [.4, .2, .3, .05, .05]])
  r = metrics.classification(y_true, y_pred, probs, label_names=names)
  # Macro P/R/F1 average over labels seen in y_true or y_pred (a b c d), as scikit-learn does.
  assert r["macro_over"] == 4
  assert r["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
  assert r["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2 + 0) / 4)
  assert r["confusion"][4] == [0] * 5 and [row[4] for row in r["confusion"]] == [0] * 5
  # AUC: one-vs-rest over the three present classes, each scored by its own (raw) column.
  expected = np.mean([pairwise_auc(probs[:, c], np.array(y_true) == c) for c in range(3)])
  assert r["roc_auc"] == pytest.approx(expected) and r["roc_auc_over"] == 3
  json.dumps(r, allow_nan=False)


def test_auc_known_values():
  y = [0, 0, 1, 1]
  perfect = np.array([[.9, .1], [.8, .2], [.2, .8], [.1, .9]])
  assert metrics.classification(y, [0, 0, 1, 1], perfect)["roc_auc"] == 1.0
  assert metrics.classification(y, [1, 1, 0, 0], perfect[:, ::-1])["roc_auc"] == 0.0
  # The worked example: positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs right.
  scores = np.array([.1, .4, .35, .8])
  r = metrics.classification(y, [0, 0, 0, 1], np.stack([1 - scores, scores], axis=1))
  assert r["roc_auc"] == pytest.approx(0.75)
  assert r["roc_auc"] == pytest.approx(pairwise_auc(scores, np.array(y) == 1))


def test_auc_matches_sklearn_ovr_when_all_classes_present():
  rng = np.random.default_rng(0)
  y = np.array([0, 1, 2, 3] * 5)
  probs = rng.dirichlet(np.ones(4), size=len(y))
  r = metrics.classification(y, probs.argmax(1), probs)
  assert r["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))


def test_single_class_leaves_auc_out_and_stays_json():
  r = metrics.classification([1, 1], [1, 0], np.array([[.2, .8], [.6, .4]]))
  assert "roc_auc" not in r
  assert json.loads(json.dumps(r, allow_nan=False))["accuracy"] == 0.5


def test_classification_errors():
  with pytest.raises(ValueError, match="y_true has 2 labels but y_pred has 1"):
    metrics.classification([0, 1], [0])
  with pytest.raises(ValueError, match="y_pred holds \\['z'\\]"):
    metrics.classification(["a"], ["z"], label_names=["a", "b"])
  with pytest.raises(ValueError, match="probs must have shape"):
    metrics.classification([0, 1], [0, 1], np.ones((2, 3)), label_names=["a", "b"])


def test_plot_confusion_png(tmp_path):
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  path = epath.Path(tmp_path) / "plots" / "confusion.png"
  out = metrics.plot_confusion([[5, 1, 0], [2, 3, 0], [0, 0, 0]], ["email", "asyncio", "json"], path,
                               title="package")
  assert out == path
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  image = matplotlib.image.imread(str(path))
  assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 300
  assert [p.name for p in path.parent.iterdir()] == ["confusion.png"]  # No temporary left behind.
  with pytest.raises(ValueError, match="matrix must be"):
    metrics.plot_confusion([[1, 2]], ["a", "b"], path)


def test_text_identical_and_disjoint():
  same = metrics.text(["read the header line", "close it"], ["read the header line", "close it"])
  assert same["bleu"] == pytest.approx(100.0)
  assert same["rouge1"] == same["rouge2"] == same["rougeL"] == same["exact_match"] == 100.0
  assert "tok:13a" in same["bleu_signature"]
  disjoint = metrics.text(["alpha beta gamma delta"], ["one two three four"])
  assert disjoint["bleu"] == 0.0 and disjoint["rouge1"] == 0.0 and disjoint["exact_match"] == 0.0


def test_rouge_by_hand():
  # "the cat sat" against "the cat sat on the mat": unigrams P 3/3 R 3/6, bigrams P 2/2 R 2/5,
  # longest common subsequence 3: P 1 R 1/2. The second pair is identical (F = 1).
  r = metrics.text(["the cat sat", "a dog"], ["the cat sat on the mat", "a dog"])
  f = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
  assert r["rouge1"] == pytest.approx(100 * (f(1, 1 / 2) + 1) / 2)
  assert r["rouge2"] == pytest.approx(100 * (f(1, 2 / 5) + 1) / 2)
  assert r["rougeL"] == pytest.approx(100 * (f(1, 1 / 2) + 1) / 2)
  assert r["exact_match"] == 50.0 and r["count"] == 2


def test_text_errors_and_exact_match_strips():
  assert metrics.text([" close it \n"], ["close it"])["exact_match"] == 100.0
  with pytest.raises(ValueError, match="3 predictions but 2 references"):
    metrics.text(["a", "b", "c"], ["a", "b"])


def test_perplexity_and_bits_per_byte():
  assert metrics.perplexity(5 * math.log(10.0), 5) == pytest.approx(10.0)
  huge = metrics.perplexity(1e6, 1)
  assert math.isfinite(huge) and huge > 1e300
  assert metrics.bits_per_byte(8 * math.log(2.0), 8) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="tokens=0"):
    metrics.perplexity(1.0, 0)
