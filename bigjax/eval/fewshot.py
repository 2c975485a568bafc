"""Zero- and few-shot classification in context with a trained decoder, as GPT-2 and GPT-3 evaluate.

No training: each label is a continuation of a prompt, and the label whose continuation the language
model finds most likely is the prediction. The prompt is k demonstrations drawn from the train split,
then the query, in a template; the generic one (`DEFAULT_TEMPLATE`, for any task) is

    <text of demonstration 1>
    Label: positive
                                    ← one blank line between demonstrations
    <text of the query>
    Label:                          ← the prompt ends here; each label's continuation is " {label}\\n"

and a task may have its own (`bigjax.data.tasks.TASKS`: `stdlib_packages` writes "# package:", a Python
comment, where this writes "Label:").

Pieces, each usable on its own:
  score_continuations   log P(continuation | prompt) in nats, summed over the continuation's tokens, in
                        padded batches of one jitted forward pass each
  score_label_sets      the same for every label of each query, the prompt computed once per query (its
                        labels' continuations as branches of one row): what `classify` uses
  build_prompt          the prompt text and the continuation text of each label, from a template
  classify              predictions and label probabilities for records, k demonstrations each
  evaluate              a decoder workdir on a labelled task, for several k, beside the majority baseline

Choices (GPT-3, section 2 and appendix G, unless said):
  * Demonstrations are drawn uniformly at random, without replacement, from the train records whose
    label is a candidate label (not stratified: they follow the label prior), by a generator seeded
    with `(seed, crc32 of the query's text)`: an eval record sees the same demonstrations in every run,
    for every model, whichever other records are evaluated with it (`max_examples`). A train record
    whose text equals the query's is never drawn.
  * Scores: `normalize="sum"` (default) is the continuation's total log-probability; `"per_token"`
    divides it by the continuation's token count (GPT-3's choice for most multiple-choice tasks,
    which removes the bias against labels of many tokens). `probs` is the softmax of the scores over
    the candidate labels (with "sum", the model's distribution restricted to the labels; with
    "per_token", a normalised score). `"unconditional"` subtracts the label's log-probability after
    the answer context alone (the template's query part with an empty text, "\nLabel:"): log
    P(label | prompt) / P(label | answer context), GPT-3's choice for ARC, OpenBookQA and RACE, which
    removes the model's prior preference for some labels (as contextual calibration does, Zhao et al.
    2021). The prediction is the argmax (ties: the earlier label).
  * Every text (demonstrations and query) is cut to its first `max_text_tokens` tokens, so that k
    demonstrations fit the context; the default gives each of the k + 1 texts an equal share of the
    context. When the prompt is still too long, demonstrations are dropped, first one first (the one
    farthest from the query) until it fits; the number actually used is reported. A query that does not
    fit even alone loses its beginning (`score_continuations` keeps the end of a prompt).
  * The prompt and a continuation are tokenized together and split where their tokens stop agreeing
    with the prompt's own: SentencePiece adds a "▁" at the start of every string it encodes, so encoding
    " email\\n" alone would score a token the model never sees mid-text.
"""

from __future__ import annotations

import collections
import functools
import zlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.eval import metrics
from bigjax.config import ConfigError, ModelConfig

# A demonstration: the text, then a line naming its label, then a blank line. The query is the same
# with the label (and everything after it) left out; see `build_prompt`. Templates are `str.format`
# patterns with one {text} before one {label} (other braces written doubled). Generic, for any task: a
# task's own template is in `bigjax.data.tasks.TASKS`.
DEFAULT_TEMPLATE = "{text}\nLabel: {label}\n\n"
NORMALIZATIONS = ("sum", "per_token", "unconditional")
_LENGTH_BUCKET = 32  # Padded lengths are multiples of this (few compiled shapes, little padding).


# ----------------------------------------------------------------------------------------- scoring

@functools.lru_cache(maxsize=8)
def _scorer(mcfg: ModelConfig):
  """The jitted `(params, inputs, targets, weights) -> [rows]` summed target log-probabilities."""
  from bigjax import models  # pylint: disable=g-import-not-at-top
  module = models.build(mcfg)

  def score(params, inputs, targets, weights):
    logits = module.apply({"params": params}, inputs, deterministic=True)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(picked * weights, axis=-1)

  return jax.jit(score)


def context_length(mcfg: ModelConfig, max_len: int | None = None) -> int:
  """The positions a scored sequence may use: `max_len`, else the model's `max_len`."""
  return int(max_len) if max_len else mcfg.max_len


def _checked_pair(mcfg: ModelConfig, prompt, cont, limit: int, where: str) -> tuple[list[int], int]:
  """(prompt + continuation ids, the prompt's length) after the checks every scored pair passes, the prompt
  cut from the left to fit `limit` positions (it keeps ≥ 1 token: len(cont) <= limit)."""
  prompt, cont = [int(t) for t in prompt], [int(t) for t in cont]
  if not prompt or not cont:
    raise ValueError(f"{where}: the prompt and the continuation need a token each (got {len(prompt)} and {len(cont)})")
  if len(cont) > limit:
    raise ValueError(f"{where}: the continuation has {len(cont)} tokens; at most max_len={limit} fit")
  bad = [t for t in prompt + cont if not 0 <= t < mcfg.vocab_size]
  if bad:
    raise ValueError(f"{where}: id {bad[0]} is outside the model's vocabulary (0..{mcfg.vocab_size - 1})")
  prompt = prompt[-(limit + 1 - len(cont)):]
  return prompt + cont, len(prompt)


def score_continuations(mcfg: ModelConfig, params, prompts_ids: Sequence[Sequence[int]],
                        continuations_ids: Sequence[Sequence[int]], *, batch_size: int = 16,
                        max_len: int | None = None, pad_id: int = 0) -> np.ndarray:
  """`[n]` float64: log P(continuation_i | prompt_i) in nats, summed over the continuation's tokens.

  Each row is `prompt + continuation` (ids), fed to the decoder without its last token; the log-softmax
  at each position is read for the next token, and only the continuation's tokens are summed. The model
  positions used are `len(prompt) + len(continuation) - 1`; when that exceeds `max_len` (default: the
  model's `max_len`, the size of a learned position table), the prompt is cut from the left, keeping its
  end. Rows are padded on the right to a multiple of 32 tokens and batched `batch_size` at a time (the
  last batch padded with empty rows), one jitted forward pass per batch; the causal mask alone keeps a
  real token from seeing the padding after it, so no attention mask is needed.

  A prompt must hold at least one token (there is no BOS to predict the first token from) and a
  continuation at least one and at most `max_len` tokens; ids must be in the model's vocabulary.
  """
  if mcfg.family != "decoder":
    raise ConfigError(f"score_continuations needs model.family='decoder', not {mcfg.family!r}")
  if len(prompts_ids) != len(continuations_ids):
    raise ValueError(f"{len(prompts_ids)} prompts but {len(continuations_ids)} continuations")
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size}: must be positive")
  limit = context_length(mcfg, max_len)
  rows = [_checked_pair(mcfg, prompt, cont, limit, f"example {i}")
          for i, (prompt, cont) in enumerate(zip(prompts_ids, continuations_ids))]
  out = np.zeros(len(rows), np.float64)
  score = _scorer(mcfg)
  # Similar lengths together: less padding, and each padded length compiles once.
  order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    longest = max(len(rows[i][0]) - 1 for i in chunk)
    width = min(limit, -(-longest // _LENGTH_BUCKET) * _LENGTH_BUCKET)
    inputs = np.full((batch_size, width), pad_id, np.int32)
    targets = np.zeros((batch_size, width), np.int32)
    weights = np.zeros((batch_size, width), np.float32)
    for r, i in enumerate(chunk):
      seq, p = rows[i]
      inputs[r, :len(seq) - 1] = seq[:-1]
      targets[r, :len(seq) - 1] = seq[1:]
      weights[r, p - 1:len(seq) - 1] = 1.0  # Positions whose next token is a continuation token.
    sums = np.asarray(score(params, inputs, targets, weights), np.float64)
    out[chunk] = sums[:len(chunk)]
  return out


@functools.lru_cache(maxsize=8)
def _branch_scorer(mcfg: ModelConfig):
  """The jitted `(params, inputs, positions, branch_ids, read_at, read_ids) -> [rows, reads]` log-probabilities
  of `read_ids` as the next token after row positions `read_at`."""
  from bigjax import models  # pylint: disable=g-import-not-at-top
  module = models.build(mcfg)

  def score(params, inputs, positions, branch_ids, read_at, read_ids):
    logits = module.apply({"params": params}, inputs, positions=positions, branch_ids=branch_ids,
                          deterministic=True)
    logits = jnp.take_along_axis(logits, read_at[..., None], axis=1).astype(jnp.float32)  # [rows, reads, vocab]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, read_ids[..., None], axis=-1)[..., 0]

  return jax.jit(score)


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
  n = min(len(s) for s in seqs)
  for i in range(n):
    if any(s[i] != seqs[0][i] for s in seqs[1:]):
      return i
  return n


def score_label_sets(mcfg: ModelConfig, params, prompts_ids: Sequence[Sequence[Sequence[int]]],
                     continuations_ids: Sequence[Sequence[Sequence[int]]], *, batch_size: int = 16,
                     max_len: int | None = None, pad_id: int = 0) -> np.ndarray:
  """`[n, labels]` float64: `score_continuations` of every (prompt, continuation) pair of query i, with the
  tokens the pairs of a query share computed once.

  `prompts_ids[i][j]` and `continuations_ids[i][j]` are label j's pair for query i (the same number of
  labels for every query). Each query is one row: the tokens every pair's input starts with (the
  demonstrations and the query, usually) once, then each pair's remaining tokens as a branch of its own
  (`Decoder(branch_ids=...)`: a branch sees the shared tokens and itself, never another branch), at the
  positions it has in its own sequence. The numbers equal `score_continuations` on the pairs one by one,
  prompts cut from the left the same way (up to float summation order); the work is one prompt per
  query instead of one per label.
  """
  if mcfg.family != "decoder":
    raise ConfigError(f"score_label_sets needs model.family='decoder', not {mcfg.family!r}")
  if len(prompts_ids) != len(continuations_ids):
    raise ValueError(f"{len(prompts_ids)} prompt sets but {len(continuations_ids)} continuation sets")
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size}: must be positive")
  if not prompts_ids:
    return np.zeros((0, 0), np.float64)
  n_labels = len(prompts_ids[0])
  limit = context_length(mcfg, max_len)
  groups = []  # Per query: (row ids, positions, branch ids, [(row index, target id, label)]).
  for i, (prompts, conts) in enumerate(zip(prompts_ids, continuations_ids)):
    if len(prompts) != n_labels or len(conts) != n_labels or not n_labels:
      raise ValueError(f"query {i}: {len(prompts)} prompts and {len(conts)} continuations; every query needs "
                       f"the same number of labels as the first ({n_labels}, at least one)")
    seqs = [_checked_pair(mcfg, prompt, cont, limit, f"query {i}, label {j}")
            for j, (prompt, cont) in enumerate(zip(prompts, conts))]
    inputs = [seq[:-1] for seq, _ in seqs]
    shared = _common_prefix(inputs)
    ids, positions, branches = list(inputs[0][:shared]), list(range(shared)), [0] * shared
    reads = []
    for j, ((seq, p), inp) in enumerate(zip(seqs, inputs)):
      start = len(ids)
      ids += inp[shared:]
      positions += range(shared, len(inp))
      branches += [j + 1] * (len(inp) - shared)
      where = lambda t, start=start: t if t < shared else start + t - shared  # Row index of input token t.
      reads += [(where(t), seq[t + 1], j) for t in range(p - 1, len(seq) - 1)]
    groups.append((ids, positions, branches, reads))

  out = np.zeros((len(groups), n_labels), np.float64)
  score = _branch_scorer(mcfg)
  bucket = lambda n: -(-n // _LENGTH_BUCKET) * _LENGTH_BUCKET
  order = sorted(range(len(groups)), key=lambda i: len(groups[i][0]))
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    width = bucket(max(len(groups[i][0]) for i in chunk))
    n_reads = bucket(max(len(groups[i][3]) for i in chunk))
    inputs = np.full((batch_size, width), pad_id, np.int32)
    positions = np.zeros((batch_size, width), np.int32)
    branches = np.full((batch_size, width), -1, np.int32)  # Padding: a branch nobody reads.
    read_at = np.zeros((batch_size, n_reads), np.int32)
    read_ids = np.zeros((batch_size, n_reads), np.int32)
    for r, i in enumerate(chunk):
      ids, pos, br, reads = groups[i]
      inputs[r, :len(ids)], positions[r, :len(ids)], branches[r, :len(ids)] = ids, pos, br
      read_at[r, :len(reads)] = [a for a, _, _ in reads]
      read_ids[r, :len(reads)] = [t for _, t, _ in reads]
    picked = np.asarray(score(params, inputs, positions, branches, read_at, read_ids), np.float64)
    for r, i in enumerate(chunk):
      reads = groups[i][3]
      np.add.at(out[i], [j for _, _, j in reads], picked[r, :len(reads)])
  return out


# ------------------------------------------------------------------------------------------ prompts

def _split_template(template: str) -> tuple[str, str]:
  """(the query part with its trailing spaces removed, the continuation pattern with them)."""
  if (template.count("{text}") != 1 or template.count("{label}") != 1
      or template.index("{text}") > template.index("{label}")):
    raise ValueError(f"template={template!r}: needs one {{text}} and then one {{label}}")
  head, tail = template.split("{label}")
  query = head.rstrip(" \t")
  # The continuation: the spaces before the label, the label, and what follows it up to its first
  # newline (the newline ends the label, so "os" does not win on the prefix of "os_path").
  end = tail.split("\n")[0] + ("\n" if "\n" in tail else "")
  return query, head[len(query):] + "{label}" + end


def build_prompt(examples: Sequence[Mapping[str, Any]], query: Mapping[str, Any], *, text_key: str,
                 label_key: str, template: str = DEFAULT_TEMPLATE) -> str:
  """The prompt: each example as `template.format(text=..., label=...)`, then the query's text in the
  template up to its `{label}`, without trailing spaces (default: "<text>\\nLabel:").

  The candidate continuations are `continuation(label, template)` (default: " <label>\\n").
  `query[label_key]` is not read: the query's label never enters its prompt.
  """
  head, _ = _split_template(template)
  parts = [template.format(text=ex[text_key], label=ex[label_key]) for ex in examples]
  return "".join(parts) + head.format(text=query[text_key])


def continuation(label: str, template: str = DEFAULT_TEMPLATE) -> str:
  """The text scored for `label` after a prompt of `build_prompt` (default: " <label>\\n")."""
  return _split_template(template)[1].format(label=label)


def _encode_pair(tokenizer, prompt: str, cont: str, prompt_ids: list[int] | None = None
                 ) -> tuple[list[int], list[int]]:
  """(prompt ids, continuation ids) of `prompt + cont` tokenized as one text, split after the longest
  run of tokens it shares with the prompt alone (`prompt_ids`, if already encoded; see the module
  docstring)."""
  whole = tokenizer.encode([prompt + cont])[0]
  alone = tokenizer.encode([prompt])[0] if prompt_ids is None else prompt_ids
  n = 0
  while n < min(len(whole), len(alone)) and whole[n] == alone[n]:
    n += 1
  n = max(1, min(n, len(whole) - 1))
  return whole[:n], whole[n:]


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
  ids = tokenizer.encode([text])[0]
  return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


# ---------------------------------------------------------------------------------- demonstrations

def draw_demonstrations(pool: Sequence[Mapping[str, Any]], query: Mapping[str, Any], k: int, *,
                        text_key: str, seed: int, index: int,
                        text_counts: Mapping[str, int] | None = None) -> list[Mapping[str, Any]]:
  """`min(k, available)` records of `pool`, uniformly without replacement, in the order drawn, never
  one whose text equals the query's. Seeded by `(seed, index)`: the same index draws the same records.
  `text_counts` (how many pool records hold each text) saves a scan of the pool per query."""
  if k <= 0 or not pool:
    return []
  text = query[text_key]
  copies = (text_counts.get(text, 0) if text_counts is not None
            else sum(1 for r in pool if r[text_key] == text))
  rng = np.random.default_rng([seed, index])
  # k + copies draws hold at least k records that are not the query (when the pool has k).
  drawn = rng.choice(len(pool), size=min(len(pool), k + copies), replace=False)
  return [pool[i] for i in drawn if pool[i][text_key] != text][:k]


# ---------------------------------------------------------------------------------- classification

def classify(mcfg: ModelConfig, params, tokenizer, train_records: Sequence[Mapping[str, Any]],
             eval_records: Sequence[Mapping[str, Any]], *, text_key: str, label_key: str,
             labels: Sequence[str], k: int = 0, seed: int = 0, max_text_tokens: int | None = None,
             normalize: str = "sum", template: str = DEFAULT_TEMPLATE, max_len: int | None = None,
             batch_size: int = 16, share_prompts: bool = True, return_info: bool = False):
  """(predictions [n] label strings, probs [n, len(labels)]) for `eval_records`, k demonstrations each.

  Demonstrations come from the `train_records` whose label is in `labels` (see `draw_demonstrations`).
  `max_text_tokens` caps each text (demonstrations and query); None gives each of the k + 1 texts an
  equal share of the context `max_len` (default: the model's) after the template's own tokens.
  Demonstrations that still do not fit are dropped, the first first. `normalize`: "sum", "per_token"
  or "unconditional" (see the module docstring). `share_prompts` (default) scores all labels of a query in
  one row with `score_label_sets` (the prompt computed once); False scores each pair on its own row with
  `score_continuations` (the reference: same numbers, labels times the work).

  With `return_info=True` a third value: {"demonstrations": [n] ints used per record, "scores":
  [n, labels] the normalised scores, "log_probs": [n, labels] summed nats, "tokens": [n, labels]
  continuation lengths, "unconditional": [labels] log P(label | answer context) or None,
  "max_text_tokens": the cap used, "truncated_prompts": records whose prompt was cut even with no
  demonstration}.
  """
  if normalize not in NORMALIZATIONS:
    raise ValueError(f"normalize={normalize!r}: allowed values are {', '.join(NORMALIZATIONS)}")
  if k < 0:
    raise ValueError(f"k={k}: must be >= 0")
  labels = [str(label) for label in labels]
  if not labels or len(set(labels)) != len(labels):
    raise ValueError(f"labels must be distinct and not empty; got {labels!r}")
  limit = context_length(mcfg, max_len)
  conts = [continuation(label, template) for label in labels]
  pool = [r for r in train_records if str(r[label_key]) in set(labels)]
  text_counts = collections.Counter(r[text_key] for r in pool)
  if max_text_tokens is None:
    longest = max(labels, key=lambda label: len(tokenizer.encode([label])[0]))
    frame = len(tokenizer.encode([template.format(text="", label=longest)])[0])
    max_text_tokens = max(1, (limit - (k + 1) * frame) // (k + 1))
  cut = lambda r: {text_key: _truncate(tokenizer, str(r[text_key]), max_text_tokens),
                   label_key: str(r[label_key])}

  prompt_ids, cont_ids, used, truncated = [], [], [], 0
  for query in eval_records:
    demos = draw_demonstrations(pool, query, k, text_key=text_key, seed=seed,
                                index=zlib.crc32(str(query[text_key]).encode("utf-8")), text_counts=text_counts)
    demos, q = [cut(r) for r in demos], cut(query)
    while True:
      prompt = build_prompt(demos, q, text_key=text_key, label_key=label_key, template=template)
      alone = tokenizer.encode([prompt])[0]
      pairs = [_encode_pair(tokenizer, prompt, c, alone) for c in conts]
      fits = max(len(p) + len(c) for p, c in pairs) - 1 <= limit
      if fits or not demos:
        break
      demos = demos[1:]
    truncated += not fits
    used.append(len(demos))
    prompt_ids.append([p for p, _ in pairs])
    cont_ids.append([c for _, c in pairs])

  def scores_of(prompts, conts):  # [queries, labels] summed nats.
    if share_prompts:
      return score_label_sets(mcfg, params, prompts, conts, batch_size=batch_size, max_len=limit)
    flat = score_continuations(mcfg, params, [p for ps in prompts for p in ps], [c for cs in conts for c in cs],
                               batch_size=batch_size, max_len=limit)
    return flat.reshape(len(prompts), len(labels))

  log_probs = scores_of(prompt_ids, cont_ids)
  tokens = np.array([[len(ids) for ids in cs] for cs in cont_ids], np.int64)
  unconditional, scores = None, log_probs
  if normalize == "per_token":
    scores = log_probs / tokens
  elif normalize == "unconditional":
    context = _split_template(template)[0].format(text="")
    pairs = [_encode_pair(tokenizer, context, c) for c in conts]
    unconditional = scores_of([[p for p, _ in pairs]], [[c for _, c in pairs]])[0]
    scores = log_probs - unconditional[None, :]
  probs = np.exp(scores - scores.max(axis=1, keepdims=True, initial=-np.inf))
  probs /= probs.sum(axis=1, keepdims=True)
  predictions = [labels[i] for i in np.argmax(scores, axis=1)]
  if not return_info:
    return predictions, probs
  return predictions, probs, {"demonstrations": used, "scores": scores, "log_probs": log_probs,
                              "tokens": tokens, "unconditional": unconditional,
                              "max_text_tokens": max_text_tokens, "truncated_prompts": truncated}


# -------------------------------------------------------------------------------------- evaluation

def _read_records(source: str, split: str, keys: Sequence[str], key_settings: dict[str, str]) -> list[dict]:
  from bigjax.data import sources  # pylint: disable=g-import-not-at-top
  ds = sources.records(source, split, keys, key_settings=key_settings)
  return [{k: v.decode("utf-8") if isinstance(v, bytes) else str(v) for k, v in r.items()}
          for r in ds.as_numpy_iterator()]


def load_decoder(workdir: str):
  """(ModelConfig, params, tokenizer, saved config dict) of a decoder workdir's latest checkpoint."""
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from bigjax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  saved = workdir_lib.require_config(workdir)
  mcfg = workdir_lib.model_config(saved)
  if mcfg.family != "decoder":
    raise ConfigError(f"--workdir={workdir} holds a model.family={mcfg.family!r} model; in-context "
                      "classification needs a decoder (model.family='decoder')")
  tok_name = workdir_lib.tokenizer_name(saved)
  if not tok_name:
    raise ConfigError(f"--workdir={workdir}: its config.json names no tokenizer of ours (a converted model?); "
                      "fine-tune it first, or use a workdir trained with data.tokenizer")
  tokenizer = tokenizer_lib.load(tok_name)
  params, step, *_ = workdir_lib.latest_params(workdir, mcfg)
  return mcfg, params, tokenizer, dict(saved, step=step)


def evaluate(workdir: str, task_source: str, *, text_key: str, label_key: str,
             labels: Sequence[str] | None = None, ks: Sequence[int] = (0, 1, 4), split: str = "validation",
             max_examples: int = 0, seed: int = 0, normalize: str = "sum",
             max_text_tokens: int | None = None, template: str = DEFAULT_TEMPLATE,
             batch_size: int = 16) -> dict[str, Any]:
  """In-context classification of `task_source`'s `split` by the decoder in `workdir`, for each k in `ks`.

  Reads `workdir`'s config.json, its latest checkpoint's params and its `data.tokenizer`; the train and
  `split` records of `task_source` (anything `bigjax.data.sources.records` reads) with `text_key` and
  `label_key`. `labels` (default: the train split's labels, sorted) are the candidates, and every eval
  label must be one of them; train records with other labels are never demonstrations. `max_examples`
  (0 = all) evaluates a seeded random sample of the eval records, kept in their order. The context is
  the model's `max_len`, or for learned positions the training `data.seq_len` when shorter (positions
  past it were never trained).

  Returns {"workdir", "step", "task_source", "split", "labels", "count", "context", "normalize",
  "majority": metrics.classification of the majority baseline (its probs: the train label prior),
  "k": {k: metrics.classification(...) + {"demonstrations_requested", "demonstrations_mean",
  "demonstrations_min", "max_text_tokens", "truncated_prompts"}}}.
  Raises ConfigError (one line) for a workdir that is not a decoder, an empty task, or eval labels
  outside `labels`.
  """
  from bigjax.eval import baselines  # pylint: disable=g-import-not-at-top
  if normalize not in NORMALIZATIONS:
    raise ConfigError(f"normalize={normalize!r}: allowed values are {', '.join(NORMALIZATIONS)}")
  if any(int(k) < 0 for k in ks):
    raise ConfigError(f"ks={list(ks)}: the numbers of demonstrations must be >= 0")
  mcfg, params, tokenizer, saved = load_decoder(workdir)
  settings = {text_key: "text_key", label_key: "label_key"}
  train = _read_records(task_source, "train", [text_key, label_key], settings)
  evals = _read_records(task_source, split, [text_key, label_key], settings)
  if not train or not evals:
    empty = "train" if not train else split
    raise ConfigError(f"task_source={task_source!r}: the {empty} split holds no records")
  if labels is None:
    labels = sorted({r[label_key] for r in train})
  labels = [str(label) for label in labels]
  if len(set(labels)) != len(labels) or not labels:
    raise ConfigError(f"labels={labels!r}: must be distinct and not empty")
  unknown = sorted({r[label_key] for r in evals} - set(labels))
  if unknown:
    raise ConfigError(f"label_key={label_key!r}: {len(unknown)} {split} label(s) are not among the "
                      f"{len(labels)} labels, e.g. {', '.join(map(repr, unknown[:5]))}; pass labels= "
                      "with every eval label, or drop those records from the task")
  if max_examples and max_examples < len(evals):
    keep = np.sort(np.random.default_rng(seed).choice(len(evals), size=max_examples, replace=False))
    evals = [evals[i] for i in keep]
  context = mcfg.max_len
  if mcfg.positions == "learned":
    context = min(context, int(saved.get("data", {}).get("seq_len", context)))
  y_true = [r[label_key] for r in evals]
  train_labels = [r[label_key] for r in train if r[label_key] in set(labels)]
  if not train_labels:
    raise ConfigError(f"task_source={task_source!r}: no train record has one of the labels {labels[:5]!r}")
  base_pred, base_probs = baselines.majority(train_labels, len(evals), labels=labels)
  result = {"workdir": str(workdir), "step": saved["step"], "task_source": task_source, "split": split,
            "labels": labels, "count": len(evals), "context": context, "normalize": normalize,
            "majority": metrics.classification(y_true, base_pred, base_probs, labels), "k": {}}
  for k in ks:
    k = int(k)
    pred, probs, info = classify(mcfg, params, tokenizer, train, evals, text_key=text_key,
                                 label_key=label_key, labels=labels, k=k, seed=seed,
                                 max_text_tokens=max_text_tokens, normalize=normalize, template=template,
                                 max_len=context, batch_size=batch_size, return_info=True)
    out = metrics.classification(y_true, pred, probs, labels)
    out.update(demonstrations_requested=k, demonstrations_mean=float(np.mean(info["demonstrations"])),
               demonstrations_min=int(np.min(info["demonstrations"])),
               max_text_tokens=int(info["max_text_tokens"]), truncated_prompts=int(info["truncated_prompts"]))
    result["k"][k] = out
  return result


def summary(result: Mapping[str, Any]) -> str:
  """A few lines: accuracy and macro-F1 per k beside the majority baseline and chance."""
  lines = [f"{result['workdir']} step {result['step']} on {result['task_source']} ({result['split']}, "
           f"{result['count']} examples, {len(result['labels'])} labels, context {result['context']}, "
           f"scores {result['normalize']})",
           f"  majority  accuracy {result['majority']['accuracy']:.3f}  macro-F1 {result['majority']['f1']:.3f}"
           f"   (chance {1 / len(result['labels']):.3f})"]
  for k, m in result["k"].items():
    lines.append(f"  k={k:<3d}     accuracy {m['accuracy']:.3f}  macro-F1 {m['f1']:.3f}   demonstrations "
                 f"{m['demonstrations_mean']:.2f} of {k} on average, texts ≤ {m['max_text_tokens']} tokens")
  return "\n".join(lines)

