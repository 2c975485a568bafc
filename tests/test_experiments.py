"""The experiment chains, shortened: every stage of experiments/{bert_packages,t5_summaries,gpt_code}.py runs
as its file says (pre-train → fine-tune / from scratch → eval → baselines), with tiny models, a few steps
and the task records of a few dozen stdlib files (the same records as the embedded sources)."""

import json
import os
import runpy

import numpy as np
import pytest

from conftest import REPO
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


def test_stages_are_checked():
  with pytest.raises(ConfigError, match=r"experiments/bert_packages.py:pretrian: allowed stages are pretrain"):
    runpy.run_path(os.path.join(REPO, "experiments", "bert_packages.py"))["get_config"]("pretrian")


def test_bert_chain(task_dir, tmp_path, capsys):
  pre = str(tmp_path / "pre")
  train.train(stage("bert_packages", "pretrain", task_dir), pre)
  tuned = str(tmp_path / "tuned")
  out = train.train(stage("bert_packages", "finetune", task_dir, **{"train.init_from": pre, "data.eval_batches": 0}),
                    tuned)
  log = capsys.readouterr().out
  assert f"init_from {pre}" in log and "freshly initialised" in log  # The pooler and classifier are new.
  assert 0.0 <= out["eval_accuracy"] <= 1.0
  # From scratch is the fine-tuning config without init_from (the trainer runs it like the above).
  scratch = stage("bert_packages", "scratch", task_dir)
  assert not scratch.train.init_from and scratch.to_dict() == {
      **stage("bert_packages", "finetune", task_dir).to_dict(), "train": {**scratch.train.to_dict()}}
  ev = evaluate.evaluate(tuned)
  assert ev["metrics"]["accuracy"] == pytest.approx(out["eval_accuracy"])  # The trainer's last eval, again.
  assert {"f1", "precision", "recall", "roc_auc"} <= set(ev["metrics"]) and os.path.exists(
      os.path.join(tuned, "confusion_matrix.png"))
  res = baselines.run(stage("bert_packages", "finetune", task_dir), str(tmp_path / "base"))
  assert set(res["baselines"]) == {"majority", "tfidf_logreg"}
  assert os.path.exists(tmp_path / "base" / "confusion_matrix.png")
  # The tokenizer of pre-training must be the tokenizer of fine-tuning; a decoder is no encoder.
  with pytest.raises(ConfigError, match=r"trained with data.tokenizer='code_sp4k.model', but this run uses "
                                        r"data.tokenizer='byte'"):
    train.train(stage("bert_packages", "finetune", task_dir, **{"train.init_from": pre, "data.tokenizer": "byte",
                                                                "model.vocab_size": 272}), str(tmp_path / "x"))


def test_t5_chain(task_dir, tmp_path):
  pre = str(tmp_path / "pre")
  train.train(stage("t5_summaries", "pretrain", task_dir), pre)
  tuned = str(tmp_path / "tuned")
  out = train.train(stage("t5_summaries", "finetune", task_dir, **{"train.init_from": pre, "data.target_len": 16}),
                    tuned)
  assert np.isfinite(out["eval_loss"])
  ev = evaluate.evaluate(tuned, max_examples=8, max_new_tokens=8)
  assert ev["examples"] == 8 and {"bleu", "rouge1", "rougeL"} <= set(ev["metrics"])
  # The JSONL copy is a path, not a task the table knows: the generic baseline alone, unless told the task.
  finetune = stage("t5_summaries", "finetune", task_dir)
  res = baselines.run(finetune, str(tmp_path / "base"), max_examples=20)
  assert res["examples"] == 20 and set(res["baselines"]) == {"copy_first_line"}
  res = baselines.run(finetune, str(tmp_path / "base"), max_examples=20, task=tasks.for_source("stdlib_functions"))
  assert list(res["baselines"]) == ["copy_first_line", "copy_function_name"]
  assert 0 <= res["baselines"]["copy_function_name"]["rougeL"] <= 100
  with pytest.raises(ConfigError, match=r"holds a model.family='encoder_decoder' model, but this run trains "
                                        r"model.family='decoder'"):
    train.train(stage("gpt_code", None, task_dir, **{"train.init_from": pre}), str(tmp_path / "x"))


def test_gpt_chain(task_dir, tmp_path):
  workdir = str(tmp_path / "gpt")
  out = train.train(stage("gpt_code", None, task_dir, **{"data.eval_batches": 0}), workdir)
  assert np.isfinite(out["eval_perplexity"])
  ev = evaluate.evaluate(workdir)
  assert ev["metrics"]["perplexity"] == pytest.approx(out["eval_perplexity"])
  packages = tasks.for_source("stdlib_packages")  # The JSONL copy of it: its template and fields, given.
  shots = fewshot.evaluate(workdir, os.path.join(task_dir, "packages", "*.jsonl"), text_key=packages.fewshot_keys[0],
                           label_key=packages.fewshot_keys[1], ks=(0, 1), max_examples=6,
                           template=packages.fewshot_template)
  assert set(shots["k"]) == {0, 1} and shots["count"] == 6
  assert all(0.0 <= shots["k"][k]["accuracy"] <= 1.0 for k in (0, 1))
