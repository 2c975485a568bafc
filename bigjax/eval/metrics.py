"""Evaluation metrics, computed by their reference libraries, returned as JSON-serialisable dicts.

  classification   accuracy, macro P/R/F1, one-vs-rest ROC-AUC, confusion matrix (scikit-learn)
  plot_confusion   the confusion matrix as a PNG (matplotlib, Agg; written atomically, any epath)
  text             corpus BLEU (sacrebleu), ROUGE-1/2/L (rouge-score), exact match
  perplexity, bits_per_byte   from a summed negative log-likelihood in nats

Every value returned is a plain Python int, float, str or list/dict of them: never NaN, never a
numpy type, so `json.dumps(result, allow_nan=False)` always works. A metric that is undefined on the
data (ROC-AUC when the eval set holds a single class) is left out rather than reported as NaN.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np


def _py(x):
  """A numpy scalar as the Python int/float/str it holds; anything else unchanged."""
  return x.item() if isinstance(x, np.generic) else x


def _label_indices(name: str, values, labels: list) -> np.ndarray:
  """`values` as indices into `labels`: they are labels themselves, or (if not) integer indices."""
  values = [_py(v) for v in values]
  position = {label: i for i, label in enumerate(labels)}
  if all(v in position for v in values):
    return np.array([position[v] for v in values], dtype=np.int64)
  if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(labels) for v in values):
    return np.array(values, dtype=np.int64)
  unknown = sorted({v for v in values if v not in position}, key=repr)[:5]
  raise ValueError(f"{name} holds {unknown!r}, which are neither label_names {labels[:10]!r}"
                   f"{'...' if len(labels) > 10 else ''} nor indices into them")


def _roc_auc(y_true: np.ndarray, probs: np.ndarray) -> tuple[float, int] | None:
  """Macro one-vs-rest ROC-AUC over the classes present in `y_true` (indices), and how many.

  Each present class c is scored by its own column probs[:, c] against the rest, exactly as
  `roc_auc_score(multi_class="ovr")` does, but restricted to the present classes: a class absent
  from the eval set has no positives, so its AUC is undefined and it is left out of the mean. The
  columns are not renormalised (that would rank examples by scores the model never gave). With two
  classes in all (a binary task) this is the AUC of the positive (second) class's column. None when
  fewer than two classes are present.
  """
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
  present = np.unique(y_true)
  if len(present) < 2:
    return None
  if probs.shape[1] == 2:
    return float(skm.roc_auc_score(y_true == 1, probs[:, 1])), 2
  # What multi_class="ovr" computes (binarise, one binary AUC per column, mean), on present columns.
  onehot = y_true[:, None] == present[None, :]
  return float(skm.roc_auc_score(onehot, probs[:, present], average="macro")), len(present)


def classification(y_true: Sequence, y_pred: Sequence, probs=None,
                   label_names: Sequence | None = None) -> dict[str, Any]:
  """Accuracy, macro precision/recall/F1, ROC-AUC (from `probs`), confusion matrix, per-class counts.

  Args:
    y_true, y_pred: one label per example: values of `label_names`, or integer indices into it.
    probs: optional [n, len(label_names)] class scores (probabilities or any monotone score), columns
      in `label_names` order; gives "roc_auc" (see `_roc_auc`: macro one-vs-rest over the classes
      present in `y_true`; the binary case uses the second column). Left out when undefined.
    label_names: every label, in the order of the confusion matrix and of the `probs` columns.
      Default: the sorted labels seen in y_true and y_pred (then `probs` needs ints 0..k-1 as labels).

  Returns a dict: accuracy, precision/recall/f1 (macro, over the labels that occur in y_true or
  y_pred, as scikit-learn does; `zero_division=0`), macro_over (how many labels that is), roc_auc and
  roc_auc_over when defined, confusion (rows = true, columns = predicted, counts), labels (their
  order), per_class {label: {precision, recall, f1, support}} and count (examples).
  """
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
  if len(y_true) != len(y_pred):
    raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
  if not len(y_true):
    raise ValueError("classification needs at least one example; y_true is empty")
  if label_names is None:
    if probs is not None:
      label_names = list(range(np.shape(probs)[1]))
    else:
      label_names = sorted({_py(v) for v in list(y_true) + list(y_pred)}, key=lambda v: (str(type(v)), v))
  labels = [_py(v) for v in label_names]
  if len(set(labels)) != len(labels):
    raise ValueError(f"label_names must be distinct; got {labels!r}")
  t = _label_indices("y_true", y_true, labels)
  p = _label_indices("y_pred", y_pred, labels)

  occurring = np.union1d(t, p)
  precision, recall, f1, _ = skm.precision_recall_fscore_support(
      t, p, labels=occurring, average="macro", zero_division=0)
  every = np.arange(len(labels))
  per_p, per_r, per_f, support = skm.precision_recall_fscore_support(
      t, p, labels=every, average=None, zero_division=0)
  result = {
      "accuracy": float(skm.accuracy_score(t, p)),
      "precision": float(precision), "recall": float(recall), "f1": float(f1),
      "macro_over": int(len(occurring)),
      "count": int(len(t)),
  }
  if probs is not None:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(t), len(labels)):
      raise ValueError(f"probs must have shape [examples, labels] = {[len(t), len(labels)]}, "
                       f"not {list(probs.shape)}")
    if not np.all(np.isfinite(probs)):
      raise ValueError("probs must be finite; it holds NaN or inf")
    auc = _roc_auc(t, probs)
    if auc is not None:
      result["roc_auc"], result["roc_auc_over"] = auc
  result["labels"] = labels
  result["confusion"] = skm.confusion_matrix(t, p, labels=every).tolist()
  result["per_class"] = {
      str(label): {"precision": float(per_p[i]), "recall": float(per_r[i]), "f1": float(per_f[i]),
                   "support": int(support[i])}
      for i, label in enumerate(labels)}
  return result


def plot_confusion(matrix, label_names: Sequence, path, title: str | None = None):
  """Writes `matrix` (rows = true, columns = predicted) as a PNG at `path` (str or epath, any URL).

  Cell colour is the row-normalised fraction (recall per true class, so rare classes read as well as
  common ones); each cell shows its count. The file is written to a temporary name beside `path`
  and renamed, so a reader never sees half a PNG. Returns the path.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  counts = np.asarray(matrix, dtype=np.int64)
  k = len(label_names)
  if counts.shape != (k, k):
    raise ValueError(f"matrix must be [labels, labels] = {[k, k]} for {k} label_names, "
                     f"not {list(counts.shape)}")
  rows = counts.sum(axis=1, keepdims=True)
  fraction = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)

  # A figure (not pyplot) with the Agg canvas: no display, no global backend state to switch.
  side = min(max(4.0, 0.45 * k + 2.0), 40.0)
  fig = Figure(figsize=(side + 1.0, side), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
  names = [str(n) for n in label_names]
  ax.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor")
  ax.set_yticks(range(k), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title)
  fontsize = max(4.0, min(10.0, 160.0 / max(k, 1)))
  for i in range(k):
    for j in range(k):
      if counts[i, j]:
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=fontsize,
                color="white" if fraction[i, j] > 0.5 else "black")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")

  from bigjax import workdir  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  workdir.write_bytes(path, buffer.getvalue())
  return path


def text(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
  """Corpus BLEU, mean ROUGE-1/2/L F-measure and exact match of `predictions` against `references`.

  All scores are on sacrebleu's 0-100 scale:
    bleu            sacrebleu corpus BLEU, default settings (13a tokenisation, exponential smoothing),
                    one reference per prediction; `bleu_signature` is its signature string.
    rouge1/2/L      rouge-score F-measure with the Porter stemmer, averaged over the examples.
    exact_match     percentage of predictions equal to their reference after stripping whitespace.
  """
  import sacrebleu  # pylint: disable=g-import-not-at-top
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  predictions, references = list(predictions), list(references)
  if len(predictions) != len(references):
    raise ValueError(f"text: {len(predictions)} predictions but {len(references)} references")
  if not predictions:
    raise ValueError("text needs at least one prediction; predictions and references are empty")
  bleu = sacrebleu.metrics.BLEU()
  score = bleu.corpus_score(predictions, [references])
  kinds = ["rouge1", "rouge2", "rougeL"]
  scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=True)
  rouge = {kind: 0.0 for kind in kinds}
  for prediction, reference in zip(predictions, references):
    scores = scorer.score(reference, prediction)  # (target, prediction)
    for kind in kinds:
      rouge[kind] += scores[kind].fmeasure
  exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
  n = len(predictions)
  return {
      "bleu": float(score.score),
      "bleu_signature": str(bleu.get_signature()),
      **{kind: 100.0 * total / n for kind, total in rouge.items()},
      "exact_match": 100.0 * exact / n,
      "count": n,
  }


# exp(x) overflows a float64 beyond this; a perplexity that large is reported as this cap's exp.
_MAX_LOG = math.log(np.finfo(np.float64).max)


def perplexity(total_nats: float, tokens: int) -> float:
  """exp(total_nats / tokens): the perplexity of `tokens` tokens whose summed NLL is `total_nats`.

  Capped at the largest float64 (about 1.8e308) instead of overflowing to inf, so it stays finite
  and JSON-serialisable however bad the model.
  """
  if tokens <= 0:
    raise ValueError(f"perplexity: tokens={tokens} must be > 0")
  return float(math.exp(min(float(total_nats) / tokens, _MAX_LOG)))


def bits_per_byte(total_nats: float, num_bytes: int) -> float:
  """total_nats / (num_bytes * ln 2): the summed NLL in bits per byte of the underlying UTF-8 text,
  comparable across tokenizers (unlike perplexity, which depends on how the text was cut)."""
  if num_bytes <= 0:
    raise ValueError(f"bits_per_byte: num_bytes={num_bytes} must be > 0")
  return float(total_nats) / (num_bytes * math.log(2.0))
