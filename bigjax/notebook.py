"""bigjax in a notebook: one call for each thing a researcher looks at.

  import bigjax.notebook as bj
  config = bj.config("experiments/quickstart.py", **{"train.steps": 60})   # a run config, overridden
  bj.train(config, "workdirs/nb")                     # with a progress bar (tqdm.auto)
  run = bj.load("workdirs/nb")                        # config, model, params, tokenizer, step
  run.generate(["def parse("], max_new_tokens=40)     # text in, text out (greedy, sampling or beams)
  run.next_tokens("import os\\nimport ", k=10)          # the k most likely next pieces and their probabilities
  run.score(["def f(x):\\n    return x\\n"])             # mean nats per token of each text
  bj.metrics("workdirs/nb")                           # metrics.jsonl as a pandas DataFrame
  bj.plan(config, mesh=(1, 8, 1), topology="v5e-8")   # the per-device memory plan, as text and figures

Nothing here is notebook-only: the same functions run in a script. pandas and tqdm come with the
`notebooks` extra (`pip install -e '.[notebooks]'`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
from typing import Any, Sequence

import numpy as np

from bigjax.config import ConfigError, ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:  # Orbax's read-only notices (a workdir being read) are not news in a notebook.
  from absl import logging as _absl_logging  # pylint: disable=g-import-not-at-top
  _absl_logging.set_verbosity(_absl_logging.ERROR)
except ImportError:  # pragma: no cover
  pass


def config(path: str, arg: str | None = None, **overrides):
  """The run config of an experiment file (`get_config(arg)`; a relative path is looked up from the repo too),
  with `overrides` given as dotted names: `config("experiments/quickstart.py", **{"train.steps": 60})`."""
  if not os.path.exists(path) and os.path.exists(os.path.join(REPO, path)):
    path = os.path.join(REPO, path)
  c = runpy.run_path(path)["get_config"](arg)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"{key} is not a config setting")
    node[leaf] = value
  return c


LOG: list[str] = []  # The console lines of the last `train` (a notebook shows the progress bar instead).


def train(config, workdir: str, *, progress: bool = True, verbose: bool = False) -> dict[str, float]:
  """`bigjax train` in this process (resuming the workdir if it holds the run), with a progress bar showing
  the last train and eval loss (`progress`); the trainer's console lines go to `LOG` unless `verbose`.
  Returns the last metrics (as `bigjax.train.train`)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from bigjax import train as train_lib  # pylint: disable=g-import-not-at-top
  buffer = io.StringIO()
  quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(buffer)
  try:
    if not progress:
      with quiet:
        return train_lib.train(config, workdir)
    return _train_with_bar(train_lib, config, workdir, quiet)
  finally:
    LOG[:] = buffer.getvalue().splitlines()


def _train_with_bar(train_lib, config, workdir, quiet):
  import sys  # pylint: disable=g-import-not-at-top
  from tqdm.std import tqdm  # pylint: disable=g-import-not-at-top  (text: no widget library needed)
  bar = tqdm(total=int(config.train.steps), desc="train", unit="step", file=sys.stderr, mininterval=2.0)
  shown: dict[str, float] = {}

  def on_log(step: int, total: int, split: str, m: dict) -> None:
    shown["eval loss" if split == "eval" else "loss"] = round(float(m["loss"]), 4)
    bar.total = total
    bar.update(step - bar.n)
    bar.set_postfix(shown)

  try:
    with quiet:
      return train_lib.train(config, workdir, on_log=on_log)
  finally:
    bar.close()


def metrics(workdir: str):
  """`workdir/metrics.jsonl` as a pandas DataFrame, one row per line (columns: step, split, loss, ...)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return pd.DataFrame([json.loads(line) for line in f if line.strip()])


@dataclasses.dataclass
class Run:
  """A workdir loaded for exploration: its saved config, model, latest params (LoRA merged) and tokenizer."""
  workdir: str
  saved: dict
  model: ModelConfig
  params: Any
  tokenizer: Any
  step: int

  def _ids(self, texts: Sequence[str]) -> list[list[int]]:
    if self.tokenizer is None:
      raise ConfigError(f"{self.workdir} names no tokenizer of ours (a converted model); pass token ids")
    return self.tokenizer.encode(list(texts))

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, num_beams: int = 1, seed: int = 0) -> list[str]:
    """The continuation of each prompt (decoders) or the output for each input (encoder-decoders), as text."""
    from bigjax import decode  # pylint: disable=g-import-not-at-top
    ids = self._ids(prompts)
    eos = self.tokenizer.eos_id
    out = decode.for_model(self.model, self.params, ids, max_new_tokens=max_new_tokens, eos_id=eos,
                           pad_id=self.tokenizer.pad_id, temperature=temperature, top_k=top_k, top_p=top_p,
                           num_beams=num_beams, seed=seed)
    skip = [len(p) for p in ids] if self.model.family == "decoder" else [1] * len(ids)
    return [self.tokenizer.decode(row[n:]) for row, n in zip(out, skip)]

  def logits(self, text: str) -> np.ndarray:
    """float32 `[tokens, vocab]` logits of a decoder over `text`'s tokens."""
    from bigjax import models  # pylint: disable=g-import-not-at-top
    ids = np.asarray(self._ids([text]), np.int32)
    return np.asarray(models.build(self.model).apply({"params": self.params}, ids))[0]

  def next_tokens(self, text: str, k: int = 10) -> list[tuple[str, float]]:
    """The `k` most likely next pieces after `text` and their probabilities."""
    logits = self.logits(text)[-1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs)[:k]
    return [(self._piece(int(i)), float(probs[i])) for i in top]

  def _piece(self, i: int) -> str:
    """A token as text: SentencePiece's piece with its word-start mark as a space, else the decoded bytes."""
    sp = getattr(self.tokenizer, "sp", None)
    if sp is not None and 0 <= i < sp.vocab_size():
      return sp.id_to_piece(i).replace("\u2581", " ")
    return self.tokenizer.decode([i]) or f"<{i}>"

  def score(self, texts: Sequence[str]) -> list[float]:
    """Mean nats per predicted token of each text under a decoder (lower is better)."""
    out = []
    for text in texts:
      ids = self._ids([text])[0]
      logits = self.logits(text).astype(np.float64)
      logp = logits - logits.max(-1, keepdims=True)
      logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
      out.append(float(-np.mean([logp[i, t] for i, t in enumerate(ids[1:])])) if len(ids) > 1 else float("nan"))
    return out


def load(workdir: str) -> Run:
  """The workdir's latest checkpoint, ready to explore (`Run`)."""
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from bigjax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  restored = workdir_lib.latest_params(workdir)
  name = workdir_lib.tokenizer_name(restored.saved)
  return Run(str(workdir), restored.saved, restored.model_config, restored.params,
             tokenizer_lib.load(name) if name else None, restored.step)


def plan(config, *, mesh: tuple[int, int, int] | None = None, topology: str | None = None):
  """(the plan's text as `bigjax plan` prints it, its figures): per-device memory before anything exists."""
  from bigjax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  num, memory, source = None, 0, ""
  if topology:
    num, memory, source = plan_lib.parse_topology(topology)
  p = plan_lib.estimate(config, mesh, num, memory, source)
  return plan_lib.report(p, config), p
