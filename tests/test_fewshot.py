"""bigjax.eval.fewshot: continuation scores against a token-by-token reference, prompts, demonstration draws,
a tiny decoder trained on a labelled pattern and classified in context, the templates (generic, and the
stdlib_packages task's own) and the one-line errors."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, tiny_config
from bigjax import config as config_lib
from bigjax.eval import fewshot
from bigjax import models
from bigjax import train
from bigjax.config import ConfigError
from bigjax.data import tasks
from bigjax.data import tokenizer as tokenizer_lib

PACKAGES = tasks.TASKS["stdlib_packages"].fewshot_template  # "{text}\n# package: {label}\n\n"


def reference_score(apply, params, prompt, cont, max_len):
  """log P(cont | prompt) from the full logits of the one unpadded row `prompt + cont` (the prompt cut to
  its last tokens by hand), read one continuation token at a time after a numpy log-softmax (float64)."""
  prompt = list(prompt)[len(prompt) - min(len(prompt), max_len + 1 - len(cont)):]
  seq = prompt + list(cont)
  logits = np.asarray(apply({"params": params}, np.array([seq[:-1]], np.int32)), np.float64)[0]
  total = 0.0
  for j, token in enumerate(cont):
    row = logits[len(prompt) - 1 + j]  # The position whose next token is cont[j].
    logp = row - row.max() - np.log(np.sum(np.exp(row - row.max())))
    total += logp[token]
  return total


def test_scores_equal_token_by_token_reference():
  mcfg = config_lib.ModelConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=32)
  module = models.build(mcfg)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]
  apply = jax.jit(module.apply)  # One compile per row length: the rows below have three (4, 12, 32).
  rng = np.random.default_rng(0)
  # Prompts of 1..45 tokens (the last two longer than the 32 positions allow: cut on the left),
  # continuations of 1..4; batch_size 3 leaves a padded last batch.
  shapes = [(1, 4), (4, 1), (10, 3), (12, 1), (30, 3), (45, 3), (40, 1)]
  prompts = [rng.integers(3, 50, p).tolist() for p, _ in shapes]
  conts = [rng.integers(3, 50, c).tolist() for _, c in shapes]
  got = fewshot.score_continuations(mcfg, params, prompts, conts, batch_size=3)
  want = [reference_score(apply, params, p, c, 32) for p, c in zip(prompts, conts)]
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert got.shape == (len(shapes),) and np.all(got < 0)
  # Cutting a long prompt is keeping its end: the score of the cut prompt given whole is the same.
  cut = fewshot.score_continuations(mcfg, params, [prompts[5][-(33 - 3):]], [conts[5]], batch_size=3)
  np.testing.assert_allclose(cut, got[5:6], atol=1e-5)
  # max_len below the model's: a shorter context, by the same rule (30 + 3 tokens → the last 10 + 3).
  short = fewshot.score_continuations(mcfg, params, prompts[4:5], conts[4:5], max_len=12, batch_size=3)
  np.testing.assert_allclose(short, [reference_score(apply, params, prompts[4], conts[4], 12)], atol=1e-4)
  assert not np.isclose(short[0], got[4])
  with pytest.raises(ValueError, match="need a token each"):
    fewshot.score_continuations(mcfg, params, [[]], [[5]])
  with pytest.raises(ValueError, match="outside the model's vocabulary"):
    fewshot.score_continuations(mcfg, params, [[5]], [[50]])


@pytest.mark.parametrize("rotary", [False, True])
def test_label_sets_score_their_pairs_with_the_prompt_computed_once(rotary):
  """score_label_sets (one row per query, labels as branches) equals score_continuations pair by pair:
  prompts shared, prompts that differ in their last tokens (as `_encode_pair` can split them), no shared
  prefix at all, continuations that share their first tokens, a prompt cut on the left, grouped-query heads."""
  extra = dict(positions="rotary", norm="rmsnorm", num_kv_heads=2, use_bias=False) if rotary else {}
  mcfg = config_lib.ModelConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=32,
                                **extra)
  params = jax.jit(models.build(mcfg).init)(jax.random.PRNGKey(1), np.zeros((1, 8), np.int32))["params"]
  rng = np.random.default_rng(3)
  ids = lambda n: rng.integers(3, 50, n).tolist()
  base = ids(12)
  prompts = [[base] * 3, [base[:-1], base, base[:-2]], [ids(5), ids(7), ids(3)], [ids(40)] * 3, [[7]] * 3]
  shared_start = ids(2)
  conts = [[ids(1), ids(3), ids(2)], [ids(2), ids(1), ids(4)], [shared_start + ids(1), shared_start, ids(1)],
           [ids(3), ids(1), ids(2)], [ids(1), ids(1), ids(5)]]
  got = fewshot.score_label_sets(mcfg, params, prompts, conts, batch_size=2)
  want = fewshot.score_continuations(mcfg, params, [p for ps in prompts for p in ps],
                                     [c for cs in conts for c in cs], batch_size=4).reshape(5, 3)
  assert got.shape == (5, 3)
  np.testing.assert_allclose(got, want, atol=2e-5)
  with pytest.raises(ValueError, match="query 1: 2 prompts and 3 continuations"):
    fewshot.score_label_sets(mcfg, params, [[[4]] * 3, [[4]] * 2], [[[5]] * 3] * 2)


def test_build_prompt_and_continuations():
  demos = [{"code": "def f():\n  pass", "package": "os"}, {"code": "x = 1", "package": "email"}]
  query = {"code": "import re", "package": "json"}
  # The generic default, for any task.
  prompt = fewshot.build_prompt(demos, query, text_key="code", label_key="package")
  assert prompt == ("def f():\n  pass\nLabel: os\n\n"
                    "x = 1\nLabel: email\n\n"
                    "import re\nLabel:")
  assert "json" not in prompt  # The query's own label never enters its prompt.
  assert fewshot.continuation("json") == " json\n"
  # The stdlib_packages task's own: a Python comment names the package.
  prompt = fewshot.build_prompt(demos, query, text_key="code", label_key="package", template=PACKAGES)
  assert prompt == ("def f():\n  pass\n# package: os\n\n"
                    "x = 1\n# package: email\n\n"
                    "import re\n# package:")
  assert fewshot.continuation("json", PACKAGES) == " json\n"
  assert fewshot.build_prompt([], query, text_key="code", label_key="package",
                              template=PACKAGES) == "import re\n# package:"
  template = "Text: {text}\nLabel:  {label}!\n---\n"
  assert fewshot.build_prompt(demos[1:], query, text_key="code", label_key="package", template=template) == (
      "Text: x = 1\nLabel:  email!\n---\nText: import re\nLabel:")
  assert fewshot.continuation("pos", template) == "  pos!\n"
  for bad in ("{text} only", "{label} before {text}", "{text} {label} {label}"):
    with pytest.raises(ValueError, match="template"):
      fewshot.continuation("x", bad)


def test_sentencepiece_continuation_is_split_from_the_whole_text():
  # SentencePiece puts a "▁" before every text it encodes: " os\n" alone would be ["▁", "▁os", "\n"];
  # within the prompt + continuation it is ["▁os", "\n"].
  tok = tokenizer_lib.load("code_sp4k.model")
  prompt = "x = 1\n# package:"
  p, c = fewshot._encode_pair(tok, prompt, " os\n")  # pylint: disable=protected-access
  assert p == tok.encode([prompt])[0]
  assert p + c == tok.encode([prompt + " os\n"])[0]
  assert [tok.sp.id_to_piece(i) for i in c] == ["\u2581os", "\n"]
  assert [tok.sp.id_to_piece(i) for i in tok.encode([" os\n"])[0]] == ["\u2581", "\u2581os", "\n"]


def test_demonstrations_are_deterministic_exclude_the_query_and_follow_the_seed():
  pool = [{"t": f"text {i}", "l": "a" if i % 3 else "b"} for i in range(30)]
  query = {"t": "text 7", "l": "a"}
  draw = lambda **kw: [r["t"] for r in fewshot.draw_demonstrations(pool, query, text_key="t", **kw)]
  first = draw(k=4, seed=0, index=5)
  assert first == draw(k=4, seed=0, index=5)  # Same seed and index: same demonstrations, same order.
  assert len(first) == 4 and len(set(first)) == 4
  assert draw(k=4, seed=1, index=5) != first  # The seed changes the draw, and so does the index.
  assert draw(k=4, seed=0, index=6) != first
  for seed in range(40):  # Never the query, even when the pool is nearly all copies of it.
    assert "text 7" not in draw(k=4, seed=seed, index=0)
  copies = [dict(query) for _ in range(20)] + pool[:2]
  assert sorted(r["t"] for r in fewshot.draw_demonstrations(copies, query, 5, text_key="t", seed=0, index=0)) == [
      "text 0", "text 1"]  # k asks for more than there is: all the others, no more.
  assert draw(k=0, seed=0, index=0) == []
  assert len(draw(k=29, seed=3, index=2)) == 29 and len(draw(k=40, seed=3, index=2)) == 29


LABELS = ("alpha", "omega")


def _pattern_records(n, rng):
  """Code-like lines whose label is the function they call: `x3 = omega(42)` → omega."""
  out = []
  for i in range(n):
    label = LABELS[rng.integers(2)]
    out.append({"code": f"x{i % 10} = {label}({rng.integers(10, 100)})", "package": label})
  return out


@pytest.fixture(scope="module")
def pattern_run(tmp_path_factory):
  """A tiny rotary decoder trained 100 steps on `<code>\\n# package: <label>\\n\\n` lines, and the task."""
  root = tmp_path_factory.mktemp("fewshot")
  rng = np.random.default_rng(0)
  train_records, val_records = _pattern_records(400, rng), _pattern_records(40, rng)
  corpus = root / "corpus.txt"
  corpus.write_text("".join(PACKAGES.format(text=r["code"], label=r["package"])
                            for r in train_records))
  task = root / "task"
  task.mkdir()
  for split, records in (("train", train_records), ("validation", val_records)):
    (task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  workdir = str(root / "workdir")
  # Rotary positions: "the label after the latest `= `" is a relative-position pattern, learnt in 100
  # steps; with learned positions the same model copies a demonstration's label about half the time.
  cfg = tiny_config(str(corpus), **{"train.steps": 100, "train.eval_every": 100, "train.checkpoint_every": 100,
                                    "train.log_every": 100, "train.num_samples": 0, "data.seq_len": 64,
                                    "optim.learning_rate": 1e-2, "model.positions": "rotary",
                                    "train.async_checkpoints": False})
  train.train(cfg, workdir)
  return workdir, str(task / "*.jsonl")


def test_trained_decoder_classifies_in_context(pattern_run):
  workdir, task = pattern_run
  result = fewshot.evaluate(workdir, task, text_key="code", label_key="package", ks=(1, 4),
                            max_text_tokens=16, template=PACKAGES)
  assert result["labels"] == list(LABELS) and result["count"] == 40 and result["context"] == 64
  assert result["majority"]["accuracy"] <= 0.6  # The prior is about even: chance is 0.5.
  one, four = result["k"][1], result["k"][4]
  assert one["demonstrations_mean"] == 1 and one["accuracy"] >= 0.8, fewshot.summary(result)
  assert "roc_auc" in one and one["confusion"] and one["count"] == 40
  # 4 demonstrations of 33 tokens do not fit 64 positions beside the query: fewer are used, and said.
  assert four["demonstrations_requested"] == 4 and 1 <= four["demonstrations_mean"] < 4
  assert four["accuracy"] >= 0.8
  # The per-token option ranks the same here (both labels' continuations are 7 bytes) and
  # max_examples samples the eval records.
  small = fewshot.evaluate(workdir, task, text_key="code", label_key="package", ks=(1,), max_examples=10,
                           max_text_tokens=16, normalize="per_token", template=PACKAGES)
  assert small["count"] == 10 and small["k"][1]["accuracy"] >= 0.7
  assert "majority" in fewshot.summary(small)


def test_unconditional_scores_divide_by_the_answer_context(pattern_run):
  mcfg, params, tok, saved = fewshot.load_decoder(pattern_run[0])
  assert saved["step"] == 100 and mcfg.family == "decoder"
  records = [{"code": f"x{i} = {label}({10 + i})", "package": label} for i, label in enumerate(LABELS * 2)]
  pred, probs, info = fewshot.classify(mcfg, params, tok, records, records, text_key="code", label_key="package",
                                       labels=LABELS, k=1, normalize="unconditional", template=PACKAGES,
                                       return_info=True)
  _, probs_apart, info_apart = fewshot.classify(  # Each pair on its own row: the same numbers.
      mcfg, params, tok, records, records, text_key="code", label_key="package", labels=LABELS, k=1,
      normalize="unconditional", template=PACKAGES, share_prompts=False, return_info=True)
  np.testing.assert_allclose(info["log_probs"], info_apart["log_probs"], atol=1e-5)
  np.testing.assert_allclose(probs, probs_apart, atol=1e-5)
  context = tok.encode(["\n# package:"])[0]  # The template's query part with an empty text.
  alone = fewshot.score_continuations(mcfg, params, [context, context], tok.encode([" alpha\n", " omega\n"]))
  np.testing.assert_allclose(info["unconditional"], alone, atol=1e-5)
  np.testing.assert_allclose(info["scores"], info["log_probs"] - alone[None, :], atol=1e-5)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0)
  np.testing.assert_array_equal(info["tokens"], 7)
  assert pred == [LABELS[i] for i in np.argmax(info["scores"], axis=1)]
  assert info["demonstrations"] == [1, 1, 1, 1]  # Never the query itself: one of the other three.


def test_errors_are_one_line_config_errors(pattern_run, tmp_path):
  workdir, task = pattern_run
  with pytest.raises(ConfigError, match=r"1 validation label\(s\) are not among the 1 labels, e.g. 'omega'"):
    fewshot.evaluate(workdir, task, text_key="code", label_key="package", labels=["alpha"], ks=(0,))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "train.jsonl").write_text('{"code": "x = 1", "package": "alpha"}\n')
  (empty / "validation.jsonl").write_text("")
  with pytest.raises(ConfigError, match="no records"):
    fewshot.evaluate(workdir, str(empty / "*.jsonl"), text_key="code", label_key="package", ks=(0,))
  encoder = tmp_path / "encoder"
  encoder.mkdir()
  cfg = config_lib.default_config()
  cfg.model.family = "encoder"
  (encoder / "config.json").write_text(cfg.to_json_best_effort())
  with pytest.raises(ConfigError, match="model.family='encoder'.*needs a decoder") as e:
    fewshot.evaluate(str(encoder), task, text_key="code", label_key="package")
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="no config.json"):
    fewshot.evaluate(str(tmp_path / "nowhere"), task, text_key="code", label_key="package")


def bigjax(*args):
  return subprocess.run([sys.executable, "-m", "bigjax.main", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def test_cli_asks_an_unknown_source_for_its_fields_then_uses_the_generic_template(pattern_run):
  workdir, task = pattern_run
  r = bigjax("eval", "--workdir", workdir, "--fewshot", task)
  errors = [line for line in r.stderr.splitlines() if line.startswith("bigjax: error:")]
  assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert f"--fewshot={task}: no few-shot fields" in errors[0] and "--fewshot_keys TEXT,LABEL" in errors[0]
  r = bigjax("eval", "--workdir", workdir, "--fewshot", task, "--fewshot_keys", "code")
  assert r.returncode == 2 and "--fewshot_keys=code: give two field names" in r.stderr, r.stderr[-2000:]
  r = bigjax("eval", "--workdir", workdir, "--fewshot", task, "--fewshot_keys", "code,package",
             "--fewshot_template", "{label} then {text}")
  assert r.returncode == 2 and "--fewshot_template='{label} then {text}': needs one {text}" in r.stderr
  r = bigjax("eval", "--workdir", workdir, "--fewshot", task, "--fewshot_keys", "code,package", "--fewshot_k", "1",
             "--max_examples", "4")
  assert r.returncode == 0, r.stderr[-3000:]
  with open(f"{workdir}/fewshot_results.json") as f:
    saved = json.load(f)
  assert saved["template"] == fewshot.DEFAULT_TEMPLATE and saved["count"] == 4
  assert (saved["text_key"], saved["label_key"]) == ("code", "package")


class _Asked(Exception):
  pass


def _asked(monkeypatch, *args):
  """The arguments `bigjax eval --fewshot ...` passes to fewshot.evaluate (which stops it there)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from bigjax import main  # pylint: disable=g-import-not-at-top
  asked = {}

  def evaluate(workdir, source, **kwargs):
    asked.update(kwargs, workdir=workdir, source=source)
    raise _Asked  # Before any model is read: only the arguments matter here.

  monkeypatch.setattr(fewshot, "evaluate", evaluate)
  try:
    with pytest.raises(_Asked):
      main.main(["bigjax", "eval", "--workdir", "w", *args])
  finally:
    flags.FLAGS.unparse_flags()
  return asked


def test_cli_gives_stdlib_packages_its_own_template_and_fields(monkeypatch):
  # As before the task table: "# package:", code → package.
  asked = _asked(monkeypatch, "--fewshot", "stdlib_packages")
  assert asked["source"] == "stdlib_packages" and asked["template"] == "{text}\n# package: {label}\n\n"
  assert (asked["text_key"], asked["label_key"]) == ("code", "package")
  # The flags still win; \\n on the command line is a newline.
  asked = _asked(monkeypatch, "--fewshot", "stdlib_packages", "--fewshot_keys", "summary,package",
                 "--fewshot_template", "Code: {text}\\nPackage: {label}\\n\\n")
  assert asked["template"] == "Code: {text}\nPackage: {label}\n\n" and asked["text_key"] == "summary"
