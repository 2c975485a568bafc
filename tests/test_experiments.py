"""The experiment chains, shortened: every stage of experiments/{bert_packages,t5_summaries,gpt_code}.py runs
as its file says (pre-train → fine-tune / from scratch → eval → baselines), with tiny models, a few steps
and the task records of a few dozen stdlib files (the same records as the embedded sources)."""

import json
import os
import runpy

import flax
import jax
import numpy as np
import pytest

from conftest import REPO
from bigjax import workdir as workdir_lib
from bigjax.eval import baselines
from bigjax.eval import evaluate
from bigjax.eval import fewshot
from bigjax import train
from bigjax.config import ConfigError
from bigjax.data import tasks

TINY = {"model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2, "model.d_ff": 64, "data.seq_len": 64,
        "model.max_len": 64, "data.batch_size": 8, "train.steps": 3, "train.log_every": 1, "train.eval_every": 3,
        "train.checkpoint_every": 3, "data.eval_batches": 2, "train.num_samples": 0, "mesh.num_devices": 1}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("tasks"))
  counts = tasks.write_stdlib_functions(out, max_files=120)
  assert counts["packages"]["validation"] > 0 and counts["functions"]["validation"] > 0
  return out


def stage(name, arg, task_dir, **overrides):
  c = runpy.run_path(os.path.join(REPO, "experiments", f"{name}.py"))["get_config"](arg)
  c.data.source = os.path.join(task_dir, "packages" if c.data.source == "stdlib_packages" else "functions", "*.jsonl")
  for key, value in {**TINY, **overrides}.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  if c.model.get("num_decoder_layers", 0):
    c.model.num_decoder_layers = 1
  return c


def flat_params(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")


@pytest.fixture
def init_from_spy(monkeypatch):
  """The params `train.init_from` hands a fine-tuning run (its step-0 state, never saved), flat, copied to
  the host as they are returned (the first train step donates their buffers)."""
  started = {}
  real = train.init_from

  def spy(*args, **kwargs):
    params = real(*args, **kwargs)
    assert not started, "init_from called twice"
    started.update(flat_params(params))
    return params
  monkeypatch.setattr(train, "init_from", spy)
  return started


def assert_started_from(started, pre):
  """Every parameter the fine-tuning run shares with `pre` started at `pre`'s latest params, bit for bit;
  returns the names it did not share (its new ones)."""
  theirs = flat_params(workdir_lib.latest_params(pre).params)
  shared = sorted(set(started) & set(theirs))
  assert "token_embed/embedding" in shared, sorted(started)
  for name in shared:
    np.testing.assert_array_equal(started[name], theirs[name], err_msg=name)
  return sorted(set(started) - set(theirs))


def last_eval(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "eval"][-1]


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_stages_are_checked():
  with pytest.raises(ConfigError, match=r"experiments/bert_packages.py:pretrian: allowed stages are pretrain"):
    runpy.run_path(os.path.join(REPO, "experiments", "bert_packages.py"))["get_config"]("pretrian")


def test_bert_chain(task_dir, tmp_path, capsys, init_from_spy):
  pre = str(tmp_path / "pre")
  train.train(stage("bert_packages", "pretrain", task_dir), pre)
  tuned = str(tmp_path / "tuned")
  out = train.train(stage("bert_packages", "finetune", task_dir, **{"train.init_from": pre, "data.eval_batches": 0}),
                    tuned)
  log = capsys.readouterr().out
  assert f"init_from {pre}" in log and "freshly initialised" in log
  new = assert_started_from(init_from_spy, pre)  # The encoder is the pre-trained one ...
  assert new and all(n.startswith(("pooler/", "classifier/")) for n in new), new  # ... the pooler and classifier new.
  logged = last_eval(tuned)
  assert (out["eval_loss"], out["eval_accuracy"]) == (logged["loss"], logged["accuracy"])
  # From scratch is the fine-tuning config without init_from (the trainer runs it like the above).
  scratch = stage("bert_packages", "scratch", task_dir)
  assert not scratch.train.init_from and scratch.to_dict() == {
      **stage("bert_packages", "finetune", task_dir).to_dict(), "train": {**scratch.train.to_dict()}}
  ev = evaluate.evaluate(tuned)  # The whole split, as the trainer's eval (data.eval_batches=0).
  # The trainer's last eval, again: its accuracy now from numpy's argmax of the logits, one record a row.
  assert ev["metrics"]["accuracy"] == pytest.approx(out["eval_accuracy"], abs=1e-12)
  assert ev["metrics"]["loss"] == pytest.approx(out["eval_loss"], rel=1e-6)
  assert np.trace(ev["confusion"]) == round(out["eval_accuracy"] * ev["examples"])
  assert ev["examples"] == len(read_jsonl(os.path.join(task_dir, "packages", "validation.jsonl")))
  assert {"f1", "precision", "recall", "roc_auc"} <= set(ev["metrics"]) and os.path.exists(
      os.path.join(tuned, "confusion_matrix.png"))
  res = baselines.run(stage("bert_packages", "finetune", task_dir), str(tmp_path / "base"))
  assert set(res["baselines"]) == {"majority", "tfidf_logreg"}
  # The majority class, counted here: the most frequent train label (ties: the first in label order).
  train_labels = [r["package"] for r in read_jsonl(os.path.join(task_dir, "packages", "train.jsonl"))]
  top = max(ev["labels"], key=lambda label: (train_labels.count(label), -ev["labels"].index(label)))
  share = np.mean([r["package"] == top for r in read_jsonl(os.path.join(task_dir, "packages", "validation.jsonl"))])
  assert ev["baselines"]["majority"]["label"] == top  # bigjax eval's, beside the model's accuracy.
  assert res["baselines"]["majority"]["accuracy"] == ev["baselines"]["majority"]["accuracy"] == pytest.approx(
      share, abs=1e-12)
  assert os.path.exists(tmp_path / "base" / "confusion_matrix.png")
  # The tokenizer of pre-training must be the tokenizer of fine-tuning; a decoder is no encoder.
  with pytest.raises(ConfigError, match=r"trained with data.tokenizer='code_sp4k.model', but this run uses "
                                        r"data.tokenizer='byte'"):
    train.train(stage("bert_packages", "finetune", task_dir, **{"train.init_from": pre, "data.tokenizer": "byte",
                                                                "model.vocab_size": 272}), str(tmp_path / "x"))


def test_t5_chain(task_dir, tmp_path, init_from_spy):
  pre = str(tmp_path / "pre")
  train.train(stage("t5_summaries", "pretrain", task_dir), pre)
  tuned = str(tmp_path / "tuned")
  out = train.train(stage("t5_summaries", "finetune", task_dir, **{"train.init_from": pre, "data.target_len": 16,
                                                                   "data.eval_batches": 1}), tuned)
  # Span corruption and text-to-text share every parameter: all of them start pre-trained.
  assert assert_started_from(init_from_spy, pre) == []
  ev = evaluate.evaluate(tuned, max_examples=8, max_new_tokens=8)  # The trainer's eval examples (1 batch of 8).
  logged = last_eval(tuned)
  assert (out["eval_loss"], out["eval_accuracy"]) == (logged["loss"], logged["accuracy"])
  assert (ev["metrics"]["loss"], ev["metrics"]["accuracy"]) == (logged["loss"], logged["accuracy"])
  assert ev["examples"] == 8 and {"bleu", "rouge1", "rougeL"} <= set(ev["metrics"])
  # The JSONL copy is a path, not a task the table knows: the generic baseline alone, unless told the task.
  finetune = stage("t5_summaries", "finetune", task_dir)
  res = baselines.run(finetune, str(tmp_path / "base"), max_examples=20)
  assert res["examples"] == 20 and set(res["baselines"]) == {"copy_first_line"}
  res = baselines.run(finetune, str(tmp_path / "base"), max_examples=20, task=tasks.for_source("stdlib_functions"))
  assert list(res["baselines"]) == ["copy_first_line", "copy_function_name"]
  # Recomputed: each of the first 20 validation functions' name as a sentence, ROUGE-L F (stemmed) x 100.
  from rouge_score import rouge_scorer
  records = read_jsonl(os.path.join(task_dir, "functions", "validation.jsonl"))[:20]
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  want = 100 * np.mean([scorer.score(r["summary"], tasks.copy_function_name(r["code"]))["rougeL"].fmeasure
                        for r in records])
  assert res["baselines"]["copy_function_name"]["rougeL"] == pytest.approx(want, rel=1e-12)
  with pytest.raises(ConfigError, match=r"holds a model.family='encoder_decoder' model, but this run trains "
                                        r"model.family='decoder'"):
    train.train(stage("gpt_code", None, task_dir, **{"train.init_from": pre}), str(tmp_path / "x"))


def test_gpt_chain(task_dir, tmp_path):
  workdir = str(tmp_path / "gpt")
  out = train.train(stage("gpt_code", None, task_dir, **{"data.eval_batches": 0}), workdir)
  logged = last_eval(workdir)
  assert (out["eval_loss"], out["eval_perplexity"]) == (logged["loss"], logged["perplexity"])
  assert out["eval_perplexity"] == pytest.approx(np.exp(out["eval_loss"]), rel=1e-12)
  ev = evaluate.evaluate(workdir)  # The whole split, as the trainer's eval (data.eval_batches=0).
  assert ev["metrics"]["loss"] == out["eval_loss"]
  assert ev["metrics"]["perplexity"] == pytest.approx(out["eval_perplexity"], rel=1e-12)
  packages = tasks.for_source("stdlib_packages")  # The JSONL copy of it: its template and fields, given.
  shots = fewshot.evaluate(workdir, os.path.join(task_dir, "packages", "*.jsonl"), text_key=packages.fewshot_keys[0],
                           label_key=packages.fewshot_keys[1], ks=(0, 1), max_examples=6,
                           template=packages.fewshot_template)
  assert set(shots["k"]) == {0, 1} and shots["count"] == 6
  # The 6 records are a seeded sample of the split, kept in order: their labels are the confusion rows.
  evals = read_jsonl(os.path.join(task_dir, "packages", "validation.jsonl"))
  y_true = [evals[i]["package"] for i in np.sort(np.random.default_rng(0).choice(len(evals), 6, replace=False))]
  rows = [y_true.count(label) for label in shots["labels"]]
  for k in (0, 1):
    confusion = np.asarray(shots["k"][k]["confusion"])
    assert confusion.sum(1).tolist() == rows
    assert shots["k"][k]["accuracy"] == np.trace(confusion) / 6


@pytest.mark.parametrize("name, arg", [("distill", "gpt"), ("distill", "gpt_alone"), ("distill", "bert"),
                                       ("distill", "bert_alone"), ("distill", "t5"), ("distill", "t5_alone"),
                                       ("llama_lora", None), ("llama_lora", "8b")])
def test_compression_and_lora_configs_resolve(name, arg):
  from bigjax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = runpy.run_path(os.path.join(REPO, "experiments", f"{name}.py"))["get_config"](arg)
  mcfg = config_lib.validate(c)
  if name == "distill":
    source = {"gpt": "quickstart.py", "bert": "bert_mlm.py", "t5": "t5_span.py"}[arg.split("_")[0]]
    teacher = runpy.run_path(os.path.join(REPO, "experiments", source))["get_config"]()
    assert (mcfg.d_model, mcfg.d_ff) == (teacher.model.d_model // 2, teacher.model.d_ff // 2)
    assert bool(c.train.teacher) == (not arg.endswith("alone"))
  else:
    assert c.train.lora_rank == 16 and mcfg.family == "decoder"
