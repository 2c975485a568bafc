"""`bigjax eval`: tiny runs trained here, then evaluated; numbers checked against the trainer's own eval
and against independent computations from the restored params."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_config
from bigjax.eval import evaluate
from bigjax import train
from bigjax.config import ConfigError

WORDS = ("alpha", "beta", "gamma", "delta", "omega")
# One layer each: these tests are about evaluation, and compiling is most of their time.
ENCODER = {"model.family": "encoder", "model.norm_position": "post", "model.type_vocab_size": 2,
           "model.num_layers": 1}
T5 = {"model.family": "encoder_decoder", "model.positions": "relative", "model.norm": "rmsnorm",
      "model.use_bias": False, "model.gated_mlp": True, "model.tie_embeddings": False, "model.vocab_size": 360,
      "model.num_layers": 1, "model.num_decoder_layers": 1}


def last_eval(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "eval"][-1]


def bigjax(*args):
  return subprocess.run([sys.executable, "-m", "bigjax.main", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def byte_ids(text):  # The byte tokenizer, written out: byte b is id b + 3.
  return [b + 3 for b in text.encode("utf-8")]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
  """A JSONL text-to-text task (code → summary) and a CSV classification task, split by file name; the CSV's
  test split has a label the train split never had."""
  d = tmp_path_factory.mktemp("labelled")
  rng = np.random.default_rng(0)
  for split, n in (("train", 160), ("validation", 24)):
    with open(d / f"{split}.jsonl", "w") as f:
      for i in range(n):
        a, b = rng.choice(WORDS, 2)
        code = f"def f{i}({a}, {b}):\n    return {a} + {b}" + " " * int(rng.integers(0, 30))
        f.write(json.dumps({"code": code, "summary": f"add {a} and {b}"}) + "\n")
    with open(d / f"{split}.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["text", "label"])
      for i in range(n):
        label = WORDS[i % 3]
        w.writerow([f"{label} {' '.join(rng.choice(WORDS, 4))}, and more", label])
  with open(d / "test.csv", "w", newline="") as f:
    csv.writer(f).writerows([["text", "label"], ["alpha beta", "alpha"], ["zeta omega", "zeta"]])
  return str(d)


@pytest.fixture(scope="module")
def mlm_run(text_file, tmp_path_factory):
  """An encoder trained with masked_lm: per-window masks and the [MASK]-aware unigram floor must agree too."""
  workdir = str(tmp_path_factory.mktemp("mlm"))
  train.train(tiny_config(text_file, **{**ENCODER, "train.steps": 3, "train.eval_every": 3,
                                        "train.checkpoint_every": 3}), workdir)
  return workdir


def test_lm_eval_reproduces_the_trainers_last_eval_exactly(mlm_run):
  workdir = mlm_run
  logged = last_eval(workdir)
  r = evaluate.evaluate(workdir, max_examples=2 * 8)  # data.eval_batches=2 of data.batch_size=8.
  m = r["metrics"]
  for key in ("loss", "unigram_loss", "accuracy"):
    assert m[key] == logged[key], key
  assert m["bits_per_byte"] == pytest.approx(logged["bits_per_byte"], rel=1e-12)
  assert m["perplexity"] == pytest.approx(logged["perplexity"], rel=1e-12)
  assert (r["objective"], r["family"], r["step"], r["split"], r["examples"]) == (
      "masked_lm", "encoder", 3, "validation", 16)
  saved = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert saved["metrics"] == m and saved["workdir"] == workdir
  # The masks are seeded per window, not per batch: another batch size scores the same examples.
  assert evaluate.evaluate(workdir, max_examples=16, batch_size=4, write=False)["metrics"]["loss"] == \
      pytest.approx(m["loss"], rel=1e-5)
  with pytest.raises(ConfigError, match="model.family='encoder' does not generate text"):
    evaluate.evaluate(workdir, num_beams=4)
  with pytest.raises(ConfigError, match="plain text, split into 'train' and 'validation' only"):
    evaluate.evaluate(workdir, split="test")


def test_classification_metrics_match_the_models_logits(labelled, tmp_path):
  from sklearn.metrics import roc_auc_score
  from bigjax import convert, models
  workdir = str(tmp_path / "cls")
  train.train(tiny_config(os.path.join(labelled, "*.csv"), **{
      **ENCODER, "model.encoder_head": "classifier", "model.num_labels": 3, "data.objective": "classification",
      "data.target_key": "label", "train.steps": 3, "train.eval_every": 3, "train.checkpoint_every": 3}), workdir)
  r = evaluate.evaluate(workdir)  # The whole validation split: 24 records.
  assert r["examples"] == 24 and r["labels"] == ["alpha", "beta", "gamma"]
  # Independently: the restored params on [CLS] bytes [SEP] of each CSV row, numpy argmax and softmax.
  cfg, params = convert.from_workdir(workdir)
  with open(os.path.join(labelled, "validation.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  ids = np.zeros((len(rows), 32), np.int32)
  for i, row in enumerate(rows):
    x = [259] + byte_ids(row["text"])[:30] + [260]  # [CLS], [SEP] appended after the 259 byte ids.
    ids[i, :len(x)] = x
  logits = np.asarray(models.build(cfg).apply({"params": params}, ids, attention_mask=(ids > 0).astype(np.int32),
                                               deterministic=True), np.float64)
  y = np.asarray([["alpha", "beta", "gamma"].index(row["label"]) for row in rows])
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  m = r["metrics"]
  assert m["accuracy"] == np.mean(logits.argmax(1) == y)
  assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), rel=1e-6)
  assert m["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(len(y)), y])), rel=1e-5)
  confusion = np.zeros((3, 3), int)
  np.add.at(confusion, (y, logits.argmax(1)), 1)
  assert r["confusion"] == confusion.tolist() and set(r["per_class"]) == {"alpha", "beta", "gamma"}
  assert r["baselines"]["majority"]["accuracy"] == pytest.approx(1 / 3)
  with open(os.path.join(workdir, "confusion_matrix.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert json.load(open(os.path.join(workdir, "eval_results.json")))["confusion_png"] == "confusion_matrix.png"
  with pytest.raises(ConfigError, match=r"test split has label\(s\) 'zeta'.*'alpha', 'beta', 'gamma'"):
    evaluate.evaluate(workdir, split="test")


def test_text_to_text_predictions_are_decode_for_model_and_scored(labelled, tmp_path):
  import sacrebleu
  from bigjax import convert, decode
  workdir = str(tmp_path / "t5")
  train.train(tiny_config(os.path.join(labelled, "*.jsonl"), **{
      **T5, "data.objective": "text_to_text", "data.text_key": "code", "data.target_key": "summary",
      "data.seq_len": 64, "data.target_len": 24, "data.eval_batches": 1, "train.steps": 2,
      "train.eval_every": 2, "train.checkpoint_every": 2}), workdir)
  r = evaluate.evaluate(workdir, max_examples=8)  # The trainer's eval examples (one batch of 8).
  m = r["metrics"]
  logged = last_eval(workdir)
  assert (m["loss"], m["accuracy"]) == (logged["loss"], logged["accuracy"])  # Teacher-forced, as the trainer.
  assert {"bleu", "rouge1", "rouge2", "rougeL", "exact_match", "perplexity"} <= set(m)
  assert all(0 <= m[k] <= 100 for k in ("bleu", "rouge1", "rouge2", "rougeL", "exact_match"))
  assert r["decoding"]["max_new_tokens"] == 24 and r["decoding"]["search"] == "greedy"

  with open(os.path.join(labelled, "validation.jsonl")) as f:
    records = [json.loads(line) for line in f][:8]
  with open(os.path.join(workdir, "eval_predictions.jsonl")) as f:
    written = [json.loads(line) for line in f]
  assert [w["reference"] for w in written] == [rec["summary"] for rec in records]
  # Independently: the encoder reads input[:seq_len - 1] EOS; decode.for_model on the restored params.
  cfg, params = convert.from_workdir(workdir)
  prompts = [byte_ids(rec["code"])[:63] + [1] for rec in records]
  outputs = decode.for_model(cfg, params, prompts, max_new_tokens=24, eos_id=1, pad_id=0)
  expected = [bytes(t - 3 for t in out[1:] if 3 <= t < 259).decode("utf-8", "replace") for out in outputs]
  assert [w["prediction"] for w in written] == expected
  assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(expected, [[rec["summary"] for rec in records]]).score)
  assert m["exact_match"] == 100 * np.mean([e.strip() == rec["summary"] for e, rec in zip(expected, records)])
  assert len(r["samples"]) == 5 and r["samples"][0]["reference"] == records[0]["summary"]
  assert r["samples"][0]["input"] == records[0]["code"]



def test_cli_eval_and_its_one_line_errors(mlm_run, tmp_path):
  workdir = mlm_run
  ok = bigjax("eval", "--workdir", workdir, "--max_examples", "16")
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "loss" in ok.stdout and "perplexity" in ok.stdout and "eval_results.json" in ok.stdout
  r = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert r["metrics"]["loss"] == last_eval(workdir)["loss"]  # A fresh process reproduces it too.

  bad = bigjax("eval", "--workdir", workdir, "--num_beams", "4")
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  errors = [line for line in bad.stderr.splitlines() if line.startswith("bigjax: error:")]
  assert len(errors) == 1 and "model.family='encoder'" in errors[0], bad.stderr[-2000:]

  # More bad input through the API (the CLI turns each ConfigError into the same one line, exit 2).
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match="no config.json"):
    evaluate.evaluate(str(empty))
  (empty / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  with pytest.raises(ConfigError, match="no complete checkpoint"):
    evaluate.evaluate(str(empty))
  assert sorted(os.listdir(empty)) == ["config.json"]  # Nothing written.
  with pytest.raises(ConfigError, match="--batch_size=-1"):
    evaluate.evaluate(workdir, batch_size=-1)
