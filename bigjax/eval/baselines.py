"""Baselines every experiment result is reported beside.

Classification (labels are any hashable values; probability columns follow a fixed `labels` order):
  majority       always the most frequent training label; probabilities = the training label prior
  tfidf_logreg   TF-IDF of identifiers and identifier pieces + multinomial logistic regression
Text to text (any input → any target):
  copy_first_line      the input's first non-blank line, stripped, as the prediction
plus the task's own (`bigjax.data.tasks.TASKS`: for `stdlib_functions`, `copy_function_name`).

`evaluate_classification_baselines` and `evaluate_text_baselines` score them on JSONL-style
records with `bigjax.eval.metrics`.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from bigjax.data import tasks
from bigjax.eval import metrics

# Identifiers (and numbers) as whole tokens: `read_header_line`, `self`, `__init__`, `0x1f`.
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+"


def _label_order(train_labels: Sequence[Hashable], labels: Sequence[Hashable] | None) -> list:
  if labels is None:
    return sorted(set(train_labels), key=lambda v: (str(type(v)), v))
  labels = list(labels)
  missing = sorted(set(train_labels) - set(labels), key=repr)
  if missing:
    raise ValueError(f"labels must include every training label; missing {missing[:5]!r}")
  return labels


def majority(train_labels: Sequence[Hashable], eval_count: int, *,
             labels: Sequence[Hashable] | None = None) -> tuple[list, np.ndarray]:
  """(predictions, probs) for `eval_count` examples: the most frequent training label everywhere.

  Ties go to the label that comes first in `labels` (default: sorted order), so the answer does not
  depend on the order of the training data. probs [eval_count, len(labels)] is the training label
  prior, the same row for every example (its ROC-AUC is 0.5 by construction).
  """
  if not len(train_labels):
    raise ValueError("majority needs at least one training label; train_labels is empty")
  order = _label_order(train_labels, labels)
  counts = collections.Counter(train_labels)
  best = max(order, key=lambda label: (counts[label], -order.index(label)))
  prior = np.array([counts[label] for label in order], dtype=np.float64) / len(train_labels)
  return [best] * eval_count, np.tile(prior, (eval_count, 1))


def _vectorizer():
  """Whole identifiers plus the words inside them, each TF-IDF with sublinear tf. (Identifier
  bigrams were tried on the stdlib package task: 2.6x the features, 3x the fit time, no gain.)"""
  from sklearn import feature_extraction, pipeline  # pylint: disable=g-import-not-at-top
  tfidf = feature_extraction.text.TfidfVectorizer
  return pipeline.make_union(
      tfidf(token_pattern=IDENTIFIER, lowercase=False, min_df=2, sublinear_tf=True),
      tfidf(analyzer=_identifier_pieces, min_df=2, sublinear_tf=True))


def _identifier_pieces(code: str) -> list[str]:
  """The lower-cased words inside each identifier (`readHeader` → read, header): shared vocabulary
  between differently-spelt names. A module-level function, so the vectorizer pickles."""
  return [w.lower() for name in re.findall(IDENTIFIER, code) for w in tasks.identifier_words(name)]


def tfidf_logreg(train_texts: Sequence[str], train_labels: Sequence[Hashable],
                 eval_texts: Sequence[str], *, labels: Sequence[Hashable] | None = None,
                 seed: int = 0, C: float = 10.0) -> tuple[list, np.ndarray]:  # pylint: disable=invalid-name
  """(predictions, probs) of TF-IDF features + multinomial logistic regression (scikit-learn).

  Features: whole identifiers and the words inside them (see `_vectorizer`), TF-IDF with
  sublinear tf. The classifier is L2 logistic regression with the multinomial (softmax) loss for
  more than two classes, fitted by SAGA to tol=1e-3 (on the 167-package stdlib task: within 0.01
  macro-F1 of lbfgs to 1e-4, 3x faster); `seed` fixes SAGA's sample order, so the result is
  deterministic. probs [len(eval_texts), len(labels)] has its columns in `labels` order (default:
  sorted training labels); a label never seen in training gets probability 0, is never predicted.
  """
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  if len(train_texts) != len(train_labels):
    raise ValueError(f"tfidf_logreg: {len(train_texts)} train_texts but {len(train_labels)} train_labels")
  order = _label_order(train_labels, labels)
  if len(set(train_labels)) < 2:  # Nothing to learn; logistic regression needs two classes.
    return majority(train_labels, len(eval_texts), labels=order)
  vectorizer = _vectorizer()
  features = vectorizer.fit_transform(list(train_texts))
  model = linear_model.LogisticRegression(C=C, solver="saga", tol=1e-3, max_iter=1000,
                                          random_state=seed)
  model.fit(features, list(train_labels))
  seen = model.predict_proba(vectorizer.transform(list(eval_texts)))
  probs = np.zeros((len(eval_texts), len(order)), dtype=np.float64)
  column = {label: i for i, label in enumerate(order)}
  probs[:, [column[_py(c)] for c in model.classes_]] = seen
  return [_py(c) for c in model.classes_[seen.argmax(axis=1)]], probs


def _py(x):
  return x.item() if isinstance(x, np.generic) else x


def copy_first_line(text: str) -> str:
  """The generic text_to_text baseline: the input's first non-blank line, stripped ("" if none).

  Copying the input is what a model that learnt nothing but to echo would score; its first line rather
  than all of it, because targets are mostly short (a summary, an answer, a label) and a whole input
  scores mainly its length (the lead-1 baseline of summarisation)."""
  return next((line.strip() for line in text.splitlines() if line.strip()), "")


def evaluate_classification_baselines(train: Sequence[dict], eval_records: Sequence[dict],
                                      text_key: str, label_key: str,
                                      labels: Sequence[Hashable] | None = None,
                                      *, seed: int = 0) -> dict[str, dict[str, Any]]:
  """{"majority": metrics, "tfidf_logreg": metrics} on `eval_records`, both trained on `train`.

  `labels` (default: the sorted labels of train and eval together) fixes the confusion matrix
  and probability column order; the metrics are `bigjax.eval.metrics.classification`'s.
  """
  train_texts = [r[text_key] for r in train]
  train_labels = [r[label_key] for r in train]
  eval_labels = [r[label_key] for r in eval_records]
  if labels is None:
    labels = sorted(set(train_labels) | set(eval_labels), key=lambda v: (str(type(v)), v))
  predictions, probs = majority(train_labels, len(eval_records), labels=labels)
  results = {"majority": metrics.classification(eval_labels, predictions, probs, labels)}
  predictions, probs = tfidf_logreg(train_texts, train_labels, [r[text_key] for r in eval_records],
                                    labels=labels, seed=seed)
  results["tfidf_logreg"] = metrics.classification(eval_labels, predictions, probs, labels)
  return results


def evaluate_text_baselines(records: Sequence[dict], text_key: str, target_key: str,
                            predictors: Mapping[str, Callable[[str], str]] | None = None) -> dict[str, dict[str, Any]]:
  """{name: `bigjax.eval.metrics.text`} of each predictor (input text → prediction) on `records` against
  their targets; `predictors` defaults to the generic `copy_first_line`."""
  predictors = {"copy_first_line": copy_first_line} if predictors is None else predictors
  targets = [r[target_key] for r in records]
  return {name: metrics.text([f(r[text_key]) for r in records], targets) for name, f in predictors.items()}


def run(config, workdir: str, *, max_examples: int = 0, seed: int = 0,
        task: tasks.Task | None = None) -> dict[str, Any]:
  """The baselines of a run config's task on its eval split, written to `workdir/eval_results.json`
  (and, for classification, the TF-IDF model's confusion matrix to `workdir/confusion_matrix.png`).

  classification: majority class and TF-IDF + logistic regression, trained on the train split;
  text_to_text: `copy_first_line`, then `task`'s own `text_baselines` (default: the task table's entry for
  `data.source`, `bigjax.data.tasks.for_source`; a path has none). `max_examples` (0 = all) keeps the
  first N eval records, the ones `bigjax eval --max_examples N` scores."""
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from bigjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  from bigjax.data import pipeline, sources  # pylint: disable=g-import-not-at-top

  objective = pipeline.objective_name(config)
  d = config.data
  if objective not in ("classification", "text_to_text") or not d.target_key:
    raise ConfigError(f"data.objective={objective!r}: baselines exist for 'classification' and 'text_to_text' "
                      "tasks (with data.target_key)")
  keys = (d.text_key, d.target_key)
  settings = {d.text_key: "data.text_key", d.target_key: "data.target_key"}

  def read(split: str) -> list[dict[str, str]]:
    ds = sources.records(d.source, split, keys, data_dir_=d.data_dir, key_settings=settings)
    return [{k: v.decode("utf-8") for k, v in r.items()} for r in ds.as_numpy_iterator()]

  eval_records = read(d.eval_split)
  if max_examples:
    eval_records = eval_records[:max_examples]
  out: dict[str, Any] = {"task": d.source, "objective": objective, "split": d.eval_split,
                         "examples": len(eval_records)}
  if objective == "classification":
    train = read(d.train_split)
    labels = ([s.strip() for s in d.labels.split(",")] if d.labels
              else sources.class_names(d.source, d.target_key, data_dir_=d.data_dir)
              or sorted({r[d.target_key] for r in train}))
    unseen = sorted({r[d.target_key] for r in eval_records} - set(labels))
    if unseen:
      raise ConfigError(f"data.target_key={d.target_key!r}: eval label {unseen[0]!r} is not among the task's "
                        f"labels ({', '.join(labels)})")
    out["baselines"] = evaluate_classification_baselines(train, eval_records, d.text_key, d.target_key, labels,
                                                         seed=seed)
    metrics.plot_confusion(out["baselines"]["tfidf_logreg"]["confusion"], labels,
                           workdir_lib.path(workdir) / "confusion_matrix.png", title="TF-IDF + logistic regression")
  else:
    task = tasks.for_source(d.source) if task is None else task
    out["baselines"] = evaluate_text_baselines(eval_records, d.text_key, d.target_key,
                                               {"copy_first_line": copy_first_line, **task.text_baselines})
  root = workdir_lib.path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_json(root / "eval_results.json", out)
  return out
