"""`bigjax eval`: a workdir's latest checkpoint on its task's eval split, into `WORKDIR/eval_results.json`.

The run is rebuilt from what the workdir records: `config.json` (the resolved config the trainer wrote)
and the params of the latest complete checkpoint (nothing else is read: no optimizer state), restored
straight onto the config's mesh (one device when this machine lacks the mesh's devices). What is
computed follows the run's objective:

  every objective   the trainer's eval numbers, from its own evaluator (`steps.Evaluator`) and
                    eval constants (`pipeline.eval_reference` over the same eval batches), so that
                    `bigjax eval --max_examples B*N` reproduces the loss the trainer logged with
                    `data.eval_batches=N` exactly: loss, unigram_loss, accuracy, and, for text targets,
                    perplexity and bits_per_byte.
  classification    softmax and argmax of the classifier's logits, one record a row →
                    `metrics.classification` (accuracy, macro P/R/F1, one-vs-rest ROC-AUC, confusion
                    matrix, per class), drawn to `WORKDIR/confusion_matrix.png`; beside it the
                    majority-class baseline (`baselines.majority`, train label frequencies).
  text_to_text      each record's input decoded with `decode.for_model` (greedy, or beam search with
                    `num_beams`), detokenized, against the record's whole target text →
                    `metrics.text` (BLEU, ROUGE-1/2/L, exact match); a few examples in the JSON and
                    every prediction in `WORKDIR/eval_predictions.jsonl`.

Eval examples are taken in the split's order, one a row (never packed): windows for the language-model
objectives (their masks and spans seeded per window as the trainer's eval seeds them), records
otherwise. Everything is deterministic. Files are written atomically; the workdir is otherwise untouched.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np

from bigjax import config as config_lib
from bigjax import decode
from bigjax import partitioning
from bigjax import steps
from bigjax import workdir as workdir_lib
from bigjax.config import ConfigError
from bigjax.data import pipeline
from bigjax.data import sources
from bigjax.eval import baselines
from bigjax.eval import metrics

RESULTS = "eval_results.json"
CONFUSION = "confusion_matrix.png"
PREDICTIONS = "eval_predictions.jsonl"
_NUM_SAMPLES = 5  # (input, reference, prediction) triples kept in the JSON.
_INPUT_HEAD = 200  # Characters of each sample's input kept.


# ----------------------------------------------------------------------------------- the run

def _check_flags(family: str, objective: str, *, num_beams: int, max_new_tokens: int, length_penalty: float,
                 max_examples: int, batch_size: int) -> None:
  if max_examples < 0 or batch_size < 0 or max_new_tokens < 0:
    raise ConfigError(f"--max_examples={max_examples}, --batch_size={batch_size} and "
                      f"--max_new_tokens={max_new_tokens} must be >= 0 (0 = all / the config's / automatic)")
  if num_beams < 1:
    raise ConfigError(f"--num_beams={num_beams} must be >= 1 (1 = greedy)")
  asked = [f"--{name}={value}" for name, value, default in (
      ("num_beams", num_beams, 1), ("max_new_tokens", max_new_tokens, 0), ("length_penalty", length_penalty, 1.0))
      if value != default]
  if asked and objective != "text_to_text":
    if family == "encoder":
      raise ConfigError(f"{asked[0]}: model.family='encoder' does not generate text; this run ({objective}) is "
                        "evaluated without decoding, so leave the decoding flags out")
    raise ConfigError(f"{asked[0]}: this run's objective is {objective}, evaluated by its loss on the eval "
                      f"split with nothing decoded (model.family={family!r}); decoding flags apply to "
                      "text_to_text runs")


def _mesh(config):
  """The config's mesh, or one device when this machine lacks the devices it names."""
  try:
    return partitioning.make_mesh(config.mesh.shape, config.mesh.num_devices), None
  except ConfigError as e:
    return partitioning.make_mesh((1, 1, 1), 1), f"the run's mesh is not available here ({e}); one device used"


def _softmax(logits: np.ndarray) -> np.ndarray:
  x = np.asarray(logits, np.float64)
  x = np.exp(x - x.max(-1, keepdims=True))
  return x / x.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------ evaluate

def evaluate(workdir: str, *, split: str | None = None, max_examples: int = 0, batch_size: int = 0,
             num_beams: int = 1, max_new_tokens: int = 0, length_penalty: float = 1.0,
             write: bool = True, log=workdir_lib.log) -> dict[str, Any]:
  """Evaluates `workdir`'s latest checkpoint on `split` (default: the run's `data.eval_split`).

  max_examples: the first N eval examples (windows or records) of the split (0 = all of it).
  batch_size: eval rows per batch (0 = the run's `data.batch_size`).
  num_beams, max_new_tokens, length_penalty: text_to_text decoding (greedy when num_beams = 1;
    max_new_tokens 0 = the run's target length: data.target_len for an encoder-decoder, half of
    data.seq_len for a decoder).
  Returns what `eval_results.json` holds (written there, with the PNG / predictions, when `write`).
  Bad input raises ConfigError with one line.
  """
  workdir = workdir_lib.path(workdir)
  config = workdir_lib.load_run(workdir, "to evaluate")
  mcfg = config_lib.validate(config)
  objective = pipeline.objective_name(config)
  family = mcfg.family
  _check_flags(family, objective, num_beams=num_beams, max_new_tokens=max_new_tokens,
               length_penalty=length_penalty, max_examples=max_examples, batch_size=batch_size)
  split = split or config.data.eval_split
  sources.check_split(config.data.source, split, "--split")

  mesh, note = _mesh(config)
  if note:
    log(f"bigjax: {note}")
  rules, kv_note = partitioning.fit_kv_heads(partitioning.rules_for(config.mesh.rules), mcfg, mesh)
  if kv_note:
    log(kv_note)
  bs = batch_size or config.data.batch_size
  if bs % partitioning.batch_divisor(mesh):
    raise ConfigError(f"--batch_size={bs} does not divide over the mesh's data x fsdp = "
                      f"{partitioning.batch_divisor(mesh)} devices; use a multiple of it")
  abstract = steps.abstract_state(mcfg, mesh, rules)
  params, step, *_ = workdir_lib.latest_params(workdir, mcfg, abstract.shardings.params)

  # Data: the split as the run's eval batches (one example a row), the first max_examples of them.
  data_config = copy.deepcopy(config)
  data_config.data.eval_split = split
  data_config.data.batch_size = bs
  data_config.data.eval_batches = math.ceil(max_examples / bs) if max_examples else 0
  data = pipeline.build(data_config)
  batches = data.eval
  for i, b in enumerate(batches):  # Rows past max_examples (and the last batch's filler) weigh nothing.
    if max_examples:
      keep = (i * bs + np.arange(bs)) < max_examples
      b["weights"] = b["weights"] * keep.reshape((-1,) + (1,) * (b["weights"].ndim - 1))
  if data.eval_windows is not None:
    n = min(data.eval_windows.count, max_examples or data.eval_windows.count)
  else:  # Records: a row of weight > 0 is an example (every target has its EOS, every label its weight).
    n = int(sum(np.any(b["weights"].reshape(bs, -1) > 0, axis=1).sum() for b in batches))
  log(f"bigjax: evaluating step {step} of {workdir} ({family}, {objective}) on {split!r}: {n:,} examples, "
      f"batches of {bs}")

  # The trainer's evaluator (classification: also the logits of the same rows).
  is_cls = objective == "classification"
  ref = pipeline.eval_constants(config, data, mcfg, batches)
  evaluator = steps.Evaluator(abstract.module, mesh, rules, abstract.shardings.params, batches, ref,
                              labels=bool(data.labels), keep_logits=is_cls)
  (tot, cnt, hits), logits = evaluator.sums(params)
  if cnt <= 0:
    raise ConfigError(f"--split={split!r}: the eval examples hold no targets to score")
  ref = pipeline.eval_constants(config, data, mcfg, batches)
  values: dict[str, Any] = evaluator.metrics(tot, cnt, hits)
  if ref["bytes"] <= 0:
    values.pop("bits_per_byte", None)
  result: dict[str, Any] = {
      "workdir": str(workdir), "step": int(step), "split": split, "objective": objective, "family": family,
      "examples": n, "batch_size": bs, "metrics": values}
  if not data.labels:
    result.update(targets=int(cnt), target_bytes=int(ref["bytes"]))

  if is_cls:
    result.update(_classification(np.concatenate(logits)[:n], batches, n, data, values))
  elif objective == "text_to_text":
    with partitioning.activate(mesh, rules):
      result.update(_text_to_text(config, mcfg, params, data, split, n, bs, values, num_beams=num_beams,
                                  max_new_tokens=max_new_tokens, length_penalty=length_penalty))

  predictions = result.pop("_predictions", None)
  scores = result.pop("_scores", None)  # Returned, not written: [n, labels] probabilities and true label indices.
  if write:
    try:
      if is_cls:
        metrics.plot_confusion(result["confusion"], result["labels"], workdir / CONFUSION,
                               title=f"{workdir.name} step {step}, {split}")
        result["confusion_png"] = CONFUSION
      if predictions is not None:
        workdir_lib.write_text(workdir / PREDICTIONS,
                           "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
        result["predictions_file"] = PREDICTIONS
      workdir_lib.write_json(workdir / RESULTS, result)
    except OSError as e:
      raise ConfigError(f"writing the eval results into {workdir} failed: {e.strerror or e}") from None
  if scores is not None:
    result.update(scores)
  return result


def _records(config, split: str, tok, objective: str) -> pipeline.Records:
  d = config.data
  records, _ = pipeline.tokenize_records(d.source, split, tok, text_key=d.text_key, target_key=d.target_key,
                                         labels=objective == "classification", data_dir=d.data_dir)
  return records  # Cached by the pipeline's build: no second read of the source.


def _classification(logits: np.ndarray, batches, n: int, data, values) -> dict[str, Any]:
  """metrics.classification of the argmax and softmax of `logits` (the first n rows of `batches`); its
  scores join `values` (accuracy then agrees with the confusion matrix), the rest is returned."""
  labels = list(data.labels)
  y_true = np.concatenate([np.asarray(b["targets"]).reshape(-1) for b in batches])[:n].astype(np.int64)
  probs = _softmax(logits)
  y_pred = probs.argmax(-1)
  cls = metrics.classification(y_true, y_pred, probs, labels)
  for key in ("accuracy", "precision", "recall", "f1", "macro_over", "roc_auc", "roc_auc_over"):
    if key in cls:
      values[key] = cls[key]
  train_labels = np.asarray(data.train_tokens).tolist()
  preds, prior = baselines.majority(train_labels, n, labels=list(range(len(labels))))
  majority = metrics.classification(y_true, preds, prior, labels)
  return {"labels": labels, "confusion": cls["confusion"], "per_class": cls["per_class"],
          "_scores": {"probs": probs, "y_true": y_true},
          "baselines": {"majority": {k: majority[k] for k in ("accuracy", "f1", "roc_auc") if k in majority}
                        | {"label": labels[int(preds[0])]}}}


def _raw_texts(config, split: str, n: int) -> tuple[list[str], list[str]]:
  """The first n records' input and target text as the source holds them (references are never the
  tokenizer's round trip of a target, nor cut to data.target_len)."""
  d = config.data
  ds = sources.records(d.source, split, (d.text_key, d.target_key), data_dir_=d.data_dir,
                       key_settings={d.text_key: "data.text_key", d.target_key: "data.target_key"})
  inputs, targets = [], []
  for r in ds.take(n).as_numpy_iterator():
    inputs.append(r[d.text_key].decode("utf-8", errors="replace"))
    targets.append(r[d.target_key].decode("utf-8", errors="replace"))
  return inputs, targets


def default_max_new_tokens(config, family: str) -> int:
  """What a target may take: data.target_len (or seq_len) for an encoder-decoder; for a decoder the half of
  data.seq_len that its text_to_text rows always leave the target."""
  if family == "encoder_decoder":
    return config.data.target_len or config.data.seq_len
  return max(1, config.data.seq_len // 2)


def text_prompts(config, family: str, records: pipeline.Records, n: int, eos_id: int) -> list[list[int]]:
  """The model's input for each of the first n records, as training showed it and independent of the target:
  an encoder-decoder reads `input[:seq_len - 1] EOS`; a decoder continues `input' EOS`, input' the share of
  seq_len its rows always leave the input (seq_len - 1 - seq_len // 2 tokens at most)."""
  seq_len = config.data.seq_len
  keep = seq_len - 1 if family == "encoder_decoder" else max(1, seq_len - 1 - seq_len // 2)
  return [records.get(i)[0][:keep].tolist() + [eos_id] for i in range(n)]


def _text_to_text(config, mcfg, params, data, split: str, n: int, bs: int, values, *, num_beams: int,
                  max_new_tokens: int, length_penalty: float) -> dict[str, Any]:
  tok = data.tokenizer
  records = _records(config, split, tok, "text_to_text")
  max_new = max_new_tokens or default_max_new_tokens(config, mcfg.family)
  prompts = text_prompts(config, mcfg.family, records, n, tok.eos_id)
  outputs = []
  for start in range(0, n, bs):  # The eval batch size bounds the decoder's memory (rows x beams).
    outputs += decode.for_model(mcfg, params, prompts[start:start + bs], max_new_tokens=max_new,
                                eos_id=tok.eos_id, pad_id=tok.pad_id, num_beams=num_beams,
                                length_penalty=length_penalty,
                                # One prompt width: every full batch reuses one compiled decoder.
                                pad_to=config.data.seq_len if mcfg.family == "encoder_decoder" else 0)
  news = [out[len(p):] if mcfg.family == "decoder" else out[1:] for p, out in zip(prompts, outputs)]
  predictions = [tok.decode([int(i) for i in ids]) for ids in news]
  inputs, references = _raw_texts(config, split, n)
  scores = metrics.text(predictions, references)
  for key in ("bleu", "rouge1", "rouge2", "rougeL", "exact_match"):
    values[key] = scores[key]
  finished = sum(1 for ids in news if tok.eos_id in ids)
  return {
      "bleu_signature": scores["bleu_signature"],
      "decoding": {"num_beams": num_beams, "max_new_tokens": max_new, "length_penalty": length_penalty,
                   "search": "beam" if num_beams > 1 else "greedy", "ended_with_eos": finished},
      "samples": [{"input": inputs[i][:_INPUT_HEAD], "reference": references[i], "prediction": predictions[i]}
                  for i in range(min(_NUM_SAMPLES, n))],
      "_predictions": [{"index": i, "reference": references[i], "prediction": predictions[i]} for i in range(n)],
  }


# ------------------------------------------------------------------------------------------ CLI

_HEADLINE = ("loss", "perplexity", "bits_per_byte", "accuracy", "f1", "roc_auc", "bleu", "rougeL", "exact_match")


def summary(result: dict[str, Any]) -> list[str]:
  """One line per headline metric (what the CLI prints)."""
  m = result["metrics"]
  lines = [f"eval  step {result['step']} on {result['split']} ({result['examples']:,} examples, "
           f"{result['objective']}, {result['family']}):"]
  floor = "label prior" if "labels" in result else "unigram"
  notes = {"loss": f"  ({floor} {m['unigram_loss']:.4f})",
           "accuracy": "  (labels)" if "labels" in result else "  (tokens)"}
  if "baselines" in result:
    notes["accuracy"] = f"  (majority class {result['baselines']['majority']['accuracy']:.4f})"
  for key in _HEADLINE:
    if key in m:
      v = m[key]
      shown = f"{v:.2f}" if key in ("bleu", "rougeL", "exact_match", "perplexity") else f"{v:.4f}"
      lines.append(f"  {key:14s}{shown}{notes.get(key, '')}")
  return lines


def main(*, workdir: str, split: str | None, max_examples: int, batch_size: int, num_beams: int,
         max_new_tokens: int, length_penalty: float) -> dict[str, Any]:
  """`bigjax eval`: evaluates, writes the files, prints the summary."""
  result = evaluate(workdir, split=split, max_examples=max_examples, batch_size=batch_size, num_beams=num_beams,
                    max_new_tokens=max_new_tokens, length_penalty=length_penalty)
  for line in summary(result):
    workdir_lib.log(line)
  files = [RESULTS] + [result[k] for k in ("confusion_png", "predictions_file") if k in result]
  workdir_lib.log(f"bigjax: wrote {', '.join(files)} in {result['workdir']}")
  return result
