"""Objectives: how windows of raw tokens become a model's batch. Each is a deterministic function of
(example, numpy Generator), and the pipeline seeds one Generator per example from (seed, the example's
global index), so a resumed run, or the same batch split over any number of processes, sees exactly
the examples of an uninterrupted single-process run.

Every batch has `inputs`, `targets` and `weights` (the loss is the weighted token cross-entropy);
other keys are passed to the model as keyword arguments (`decoder_input_ids` for T5).

Special ids the tokenizer lacks are appended after its vocabulary, as T5 does with its 100 extra ids:
`vocab_size(tok)` is how many ids the model then needs.

  causal_lm          GPT: predict token t+1 from tokens <= t.
  masked_lm          BERT: [CLS] window [SEP]; 15% of the window's tokens are chosen, of which 80% become
                     [MASK], 10% a random token, 10% stay; the loss is on the chosen tokens.
  span_corruption    T5 (Raffel et al. 2019, seqio): noise density 0.15, mean span length 3; each noise span
                     is replaced by a sentinel in the inputs; targets are the sentinels followed by their
                     spans, then EOS.
  prefix_lm          T5's prefix LM: each window is split at a uniformly drawn point. A decoder sees the
                     prefix both ways (`prefix_mask`) and is scored on the rest; an encoder-decoder reads the
                     prefix and writes the rest.
  text_to_text       Labelled records (input text, target text): an encoder-decoder reads the input and
                     writes the target; a decoder reads `input EOS target EOS` causally, scored on the target.
                     Training rows are packed (several examples per row, `segment_ids`, `positions`).
  classification     Labelled records (text, label) for an encoder with a classifier head: [CLS] text [SEP],
                     the label's index in `data.labels` as the target.

Window objectives (`kind = "windows"`) cut a document stream into fixed windows; record objectives
(`kind = "records"`) turn each record into one example, truncated to the lengths that fit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bigjax.config import ConfigError

OBJECTIVES = ("causal_lm", "masked_lm", "span_corruption", "prefix_lm", "text_to_text", "classification")
ALLOWED = {"decoder": ("causal_lm", "prefix_lm", "text_to_text"),
           "encoder": ("masked_lm", "classification"),
           "encoder_decoder": ("span_corruption", "prefix_lm", "text_to_text")}


@dataclasses.dataclass(frozen=True)
class CausalLM:
  seq_len: int
  name: str = "causal_lm"
  extra_ids: int = 0
  kind: str = "windows"

  @property
  def window(self) -> int:  # seq_len + 1 tokens: inputs and the targets shifted by one.
    return self.seq_len + 1

  @property
  def stride(self) -> int:
    return self.seq_len

  def example(self, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng
    return {"inputs": x[:-1], "targets": x[1:], "weights": np.ones(len(x) - 1, np.float32)}


def bert_ids(specials: tuple[int, int, int] | None, base_vocab: int) -> tuple[int, int, int]:
  """([CLS], [SEP], [MASK]): the tokenizer's pieces when it has them, else the 3 ids after its vocabulary."""
  return tuple(specials) if specials else (base_vocab, base_vocab + 1, base_vocab + 2)


@dataclasses.dataclass(frozen=True)
class MaskedLM:
  seq_len: int
  base_vocab: int  # The tokenizer's ids (random replacements are drawn from them).
  mask_rate: float = 0.15
  # ([CLS], [SEP], [MASK]) ids when the tokenizer has those pieces; None appends them after its ids.
  specials: tuple[int, int, int] | None = None
  name: str = "masked_lm"
  kind: str = "windows"

  @property
  def extra_ids(self) -> int:
    return 0 if self.specials else 3

  @property
  def cls_id(self) -> int:
    return bert_ids(self.specials, self.base_vocab)[0]

  @property
  def sep_id(self) -> int:
    return bert_ids(self.specials, self.base_vocab)[1]

  @property
  def mask_id(self) -> int:
    return bert_ids(self.specials, self.base_vocab)[2]

  @property
  def window(self) -> int:
    return self.seq_len - 2  # Room for [CLS] and [SEP].

  @property
  def stride(self) -> int:
    return self.window

  def example(self, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(x)
    # Exactly round(15%) of the window's tokens are chosen (at least one).
    chosen = np.zeros(n, bool)
    chosen[rng.permutation(n)[:max(1, int(round(self.mask_rate * n)))]] = True
    action = rng.random(n)
    masked = np.where(chosen & (action < 0.8), self.mask_id, x)
    randomised = chosen & (action >= 0.8) & (action < 0.9)
    masked = np.where(randomised, rng.integers(0, self.base_vocab, n), masked)
    wrap = lambda v: np.concatenate([[self.cls_id], v, [self.sep_id]]).astype(np.int32)
    return {"inputs": wrap(masked), "targets": wrap(x), "weights": np.pad(chosen, 1).astype(np.float32)}


def span_corruption_lengths(inputs_length: int, noise_density: float, mean_span: float) -> tuple[int, int, int]:
  """(raw tokens, inputs length, targets length) such that the inputs fit `inputs_length` (seqio's rule)."""

  def lengths(tokens: int) -> tuple[int, int]:
    noise = int(round(tokens * noise_density))
    spans = int(round(noise / mean_span))
    return tokens - noise + spans + 1, noise + spans + 1

  tokens = inputs_length - 1
  while lengths(tokens + 1)[0] <= inputs_length:
    tokens += 1
  return (tokens, *lengths(tokens))


def random_spans_mask(length: int, noise_density: float, mean_span: float, rng: np.random.Generator) -> np.ndarray:
  """Boolean noise mask of `length` tokens: round(density * length) noise tokens in round(noise / mean)
  spans, span and gap lengths drawn as random compositions, starting with a non-noise gap (seqio)."""
  noise = min(max(int(round(length * noise_density)), 1), length - 1)
  spans = max(int(round(noise / mean_span)), 1)

  def composition(total: int, parts: int) -> np.ndarray:
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False)) if parts > 1 else np.zeros(0, int)
    return np.diff(np.concatenate([[0], cuts, [total]]))

  noise_lens, gap_lens = composition(noise, spans), composition(length - noise, spans)
  mask = np.zeros(length, bool)
  pos = 0
  for gap, span in zip(gap_lens, noise_lens):
    pos += gap
    mask[pos:pos + span] = True
    pos += span
  return mask


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
  seq_len: int  # Encoder input length (including EOS).
  base_vocab: int
  eos_id: int
  pad_id: int
  noise_density: float = 0.15
  mean_span: float = 3.0
  # Ids of <extra_id_0>, <extra_id_1>, ... when the tokenizer has those pieces; None appends T5's 100
  # sentinels after its ids, in T5's order: <extra_id_i> = base_vocab + 99 - i.
  sentinels: tuple[int, ...] | None = None
  name: str = "span_corruption"
  kind: str = "windows"

  @property
  def extra_ids(self) -> int:
    return 0 if self.sentinels else 100

  @property
  def num_sentinels(self) -> int:
    return len(self.sentinels) if self.sentinels else 100

  def __post_init__(self):
    tokens, _, _ = span_corruption_lengths(self.seq_len, self.noise_density, self.mean_span)
    noise = int(round(tokens * self.noise_density))
    if int(round(noise / self.mean_span)) < 1:  # Not even one noise span would fit.
      raise ConfigError(f"data.seq_len={self.seq_len} is too short for span corruption (noise density "
                        f"{self.noise_density}, mean span {self.mean_span}); use at least 16")
    if int(round(noise / self.mean_span)) > self.num_sentinels:
      raise ConfigError(f"data.seq_len={self.seq_len} makes {int(round(noise / self.mean_span))} noise spans, "
                        f"more than the {self.num_sentinels} sentinel ids; lower data.seq_len")

  @property
  def window(self) -> int:
    return span_corruption_lengths(self.seq_len, self.noise_density, self.mean_span)[0]

  @property
  def stride(self) -> int:
    return self.window

  @property
  def target_len(self) -> int:
    return span_corruption_lengths(self.seq_len, self.noise_density, self.mean_span)[2]

  def sentinel(self, i: int) -> int:
    return self.sentinels[i] if self.sentinels else self.base_vocab + 99 - i

  def example(self, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    _, in_len, tgt_len = span_corruption_lengths(self.seq_len, self.noise_density, self.mean_span)
    mask = random_spans_mask(len(x), self.noise_density, self.mean_span, rng)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    table = np.asarray([self.sentinel(i) for i in range(self.num_sentinels)], np.int32)
    sentinels = table[np.maximum(np.cumsum(starts) - 1, 0)]  # Span i → <extra_id_i>.
    inp = np.where(starts, sentinels, x)[~mask | starts]
    # Targets: each noise token, preceded by its span's sentinel where a span starts.
    slot = np.arange(mask.sum()) + np.cumsum(starts[mask])
    tgt = np.zeros(len(slot) + starts.sum(), np.int32)
    tgt[slot] = x[mask]
    tgt[slot[starts[mask]] - 1] = sentinels[starts]
    inputs = np.full(in_len, self.pad_id, np.int32)
    targets = np.full(tgt_len, self.pad_id, np.int32)
    inputs[:len(inp) + 1] = np.append(inp, self.eos_id)
    targets[:len(tgt) + 1] = np.append(tgt, self.eos_id)
    # The decoder reads the targets shifted right, starting from the pad id (T5's decoder start).
    return {"inputs": inputs, "decoder_input_ids": np.concatenate([[self.pad_id], targets[:-1]]).astype(np.int32),
            "targets": targets, "weights": (targets != self.pad_id).astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class PrefixLM:
  """T5's prefix LM on windows of text. For a decoder, the window is `seq_len + 1` tokens split at
  s ~ U[1, seq_len - 1]: inputs 0..s-1 are the prefix (seen both ways), and the loss covers the targets
  from x[s] on. For an encoder-decoder, `seq_len - 1` tokens split at s ~ U[1, seq_len - 3]: the
  encoder reads x[:s] EOS and the decoder writes x[s:] EOS (both fit `seq_len`)."""

  seq_len: int
  encoder_decoder: bool
  eos_id: int = 1
  pad_id: int = 0
  name: str = "prefix_lm"
  extra_ids: int = 0
  kind: str = "windows"

  def __post_init__(self):
    if self.seq_len < 4:
      raise ConfigError(f"data.seq_len={self.seq_len} is too short for prefix_lm (a prefix, a target and EOS); "
                        "use >= 4")

  @property
  def window(self) -> int:
    return self.seq_len - 1 if self.encoder_decoder else self.seq_len + 1

  @property
  def stride(self) -> int:
    return self.window if self.encoder_decoder else self.seq_len

  def example(self, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(x)
    s = int(rng.integers(1, n - 1))  # At least one token on each side.
    if not self.encoder_decoder:
      i = np.arange(n - 1)
      return {"inputs": x[:-1], "targets": x[1:], "weights": (i >= s - 1).astype(np.float32),
              "prefix_mask": (i < s).astype(np.int32)}
    inputs, targets = _pad(np.append(x[:s], self.eos_id), self.seq_len, self.pad_id), \
        _pad(np.append(x[s:], self.eos_id), self.seq_len, self.pad_id)
    return {"inputs": inputs, "attention_mask": (np.arange(self.seq_len) <= s).astype(np.int32),
            "decoder_input_ids": _shift_right(targets, self.pad_id), "targets": targets,
            "weights": (np.arange(self.seq_len) <= n - s).astype(np.float32)}


def _pad(x: np.ndarray, length: int, pad_id: int, dtype=np.int32) -> np.ndarray:
  out = np.full(length, pad_id, dtype)
  out[:len(x)] = x
  return out


def _shift_right(targets: np.ndarray, start_id: int) -> np.ndarray:
  """The decoder's inputs: the targets shifted right behind the start id (T5 starts from pad)."""
  return np.concatenate([[start_id], targets[:-1]]).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TextToText:
  """Labelled records (input ids, target ids) → examples; rows may hold several (packing).

  Encoder-decoder: inputs = input[:seq_len - 1] EOS, targets = target[:target_len - 1] EOS.
  Decoder: one sequence `input' EOS target' EOS` of at most seq_len + 1 tokens, scored on target' EOS;
  the target keeps up to max(seq_len // 2, what the input leaves) tokens, the input the rest.
  """

  seq_len: int
  target_len: int
  encoder_decoder: bool
  eos_id: int = 1
  pad_id: int = 0
  name: str = "text_to_text"
  extra_ids: int = 0
  kind: str = "records"
  packable: bool = True

  def __post_init__(self):
    if self.seq_len < 2 or (self.encoder_decoder and self.target_len < 2):
      raise ConfigError(f"data.seq_len={self.seq_len}, data.target_len={self.target_len}: text_to_text needs "
                        "at least 2 tokens for the input and for the target (a token and EOS)")

  @property
  def capacity(self) -> tuple[int, ...]:
    return (self.seq_len, self.target_len) if self.encoder_decoder else (self.seq_len,)

  def _split(self, n_in: int, n_tgt: int) -> tuple[int, int]:
    """Tokens of the input and of the target kept (EOS markers not counted)."""
    if self.encoder_decoder:
      return min(n_in, self.seq_len - 1), min(n_tgt, self.target_len - 1)
    t = min(n_tgt, max(self.seq_len // 2, self.seq_len - 1 - n_in))
    return min(n_in, self.seq_len - 1 - t), t

  def lengths(self, n_in: np.ndarray, n_tgt: np.ndarray) -> np.ndarray:
    """`[n, streams]` tokens each example takes in a row (per stream: encoder, decoder)."""
    kept = np.asarray([self._split(int(a), int(b)) for a, b in zip(n_in, n_tgt)], np.int64).reshape(-1, 2)
    if self.encoder_decoder:
      return kept + 1
    return (kept.sum(1) + 1)[:, None]

  def _pieces(self, inp: np.ndarray, tgt: np.ndarray) -> dict[str, np.ndarray]:
    a, t = self._split(len(inp), len(tgt))
    if self.encoder_decoder:
      targets = np.append(tgt[:t], self.eos_id).astype(np.int32)
      return {"inputs": np.append(inp[:a], self.eos_id).astype(np.int32), "targets": targets,
              "decoder_input_ids": _shift_right(targets, self.pad_id), "weights": np.ones(t + 1, np.float32)}
    z = np.concatenate([inp[:a], [self.eos_id], tgt[:t], [self.eos_id]]).astype(np.int32)
    return {"inputs": z[:-1], "targets": z[1:], "weights": (np.arange(len(z) - 1) >= a).astype(np.float32)}

  def row(self, examples: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several examples in one row: `segment_ids` 1, 2, ... (0 = padding), positions restart at 0."""
    pieces = [self._pieces(inp, tgt) for inp, tgt in examples]
    streams = [(("inputs",), self.seq_len, "segment_ids"),
               (("decoder_input_ids", "targets", "weights"), self.target_len, "decoder_segment_ids")] \
        if self.encoder_decoder else [(("inputs", "targets", "weights"), self.seq_len, "segment_ids")]
    out = {}
    for keys, length, seg_key in streams:
      sizes = [len(p[keys[0]]) for p in pieces]
      if sum(sizes) > length:
        raise ValueError(f"examples of {sizes} tokens do not fit a row of {length}")
      for k in keys:
        joined = np.concatenate([p[k] for p in pieces])
        out[k] = _pad(joined, length, 0, np.float32) if k == "weights" else _pad(joined, length, self.pad_id)
      out[seg_key] = _pad(np.repeat(np.arange(1, len(pieces) + 1), sizes), length, 0)
      if not self.encoder_decoder:
        out["positions"] = _pad(np.concatenate([np.arange(n) for n in sizes]), length, 0)
    return out

  def example(self, inp: np.ndarray, tgt: np.ndarray) -> dict[str, np.ndarray]:
    return self.row([(inp, tgt)])


@dataclasses.dataclass(frozen=True)
class Classification:
  """Labelled records (text ids, label index) for an encoder: [CLS] text [SEP], padded to seq_len.
  [CLS]/[SEP] are the same ids masked_lm uses, so a fine-tuned MLM model reads them as in pre-training."""

  seq_len: int
  base_vocab: int
  num_labels: int
  pad_id: int = 0
  specials: tuple[int, int, int] | None = None
  name: str = "classification"
  kind: str = "records"
  packable: bool = False  # One [CLS] per row: the classifier pools the first position.

  @property
  def extra_ids(self) -> int:
    return 0 if self.specials else 3

  @property
  def capacity(self) -> tuple[int, ...]:
    return (self.seq_len,)

  def lengths(self, n_in: np.ndarray, n_tgt: np.ndarray) -> np.ndarray:
    del n_tgt
    return np.minimum(np.asarray(n_in, np.int64) + 2, self.seq_len)[:, None]

  def example(self, inp: np.ndarray, label: int) -> dict[str, np.ndarray]:
    cls_id, sep_id, _ = bert_ids(self.specials, self.base_vocab)
    x = np.concatenate([[cls_id], inp[:self.seq_len - 2], [sep_id]]).astype(np.int32)
    return {"inputs": _pad(x, self.seq_len, self.pad_id),
            "attention_mask": (np.arange(self.seq_len) < len(x)).astype(np.int32),
            "targets": np.int32(label), "weights": np.float32(1.0)}

  def row(self, examples: list[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    assert len(examples) == 1, "classification rows hold one example"
    return self.example(*examples[0])


def batch(objective, windows: np.ndarray, rngs) -> dict[str, np.ndarray]:
  """Applies `objective` to each row of `windows` `[b, window]` with its own Generator; stacks the rows."""
  rows = [objective.example(x, rng) for x, rng in zip(windows, rngs)]
  return stack(rows)


def stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _tokenizer_ids(tok, pieces, what: str, setting: str) -> tuple[int, ...] | None:
  """The ids of `pieces` in the tokenizer, or None if it has none of them (they are then appended)."""
  ids = [tok.piece_id(p) if hasattr(tok, "piece_id") else None for p in pieces]
  if all(i is None for i in ids):
    return None
  missing = [p for p, i in zip(pieces, ids) if i is None]
  if missing:
    raise ConfigError(f"{setting}: the tokenizer has some of the {what} pieces but not {', '.join(missing[:3])}"
                      f"{' ...' if len(missing) > 3 else ''}; train it with all of them "
                      "(bigjax tokenizer train --special_pieces ...) or with none (they are then appended)")
  return tuple(ids)


BERT_PIECES = ("[CLS]", "[SEP]", "[MASK]")


class ShapeTokenizer:
  """A stand-in tokenizer for when only batch shapes matter (`bigjax plan` of a config whose tokenizer
  is not trained yet): no objective's shapes depend on the tokenizer, only the ids in them do. It has the
  model's `vocab_size` ids, T5's pad, eos and unk ids, and holds every special piece an objective asks for
  among its top ids (BERT's [CLS] [SEP] [MASK]; T5's sentinels, <extra_id_0> the last), so none is appended."""

  name = "shape-only"
  pad_id, eos_id, unk_id = 0, 1, 2

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  @property
  def fingerprint(self) -> str:
    return f"shape-only-{self.vocab_size}"

  def piece_id(self, piece: str) -> int | None:
    if piece in BERT_PIECES:
      return max(self.vocab_size - len(BERT_PIECES) + BERT_PIECES.index(piece), 0)
    if piece.startswith("<extra_id_") and piece.endswith(">") and piece[10:-1].isdigit():
      return max(self.vocab_size - 1 - int(piece[10:-1]), 0)
    return None


def make(name: str, seq_len: int, tok, *, family: str = "", target_len: int = 0, num_labels: int = 0,
         setting: str = "data.tokenizer"):
  """The objective `data.objective` names, for a tokenizer (and, where it matters, the model family)."""
  if name == "causal_lm":
    return CausalLM(seq_len)
  if name in ("masked_lm", "classification"):
    if seq_len < 4:
      raise ConfigError(f"data.seq_len={seq_len} is too short for {name} ([CLS], [SEP] and a token); use >= 4")
    specials = _tokenizer_ids(tok, BERT_PIECES, "BERT", setting)
    if name == "masked_lm":
      return MaskedLM(seq_len, tok.vocab_size, specials=specials)
    return Classification(seq_len, tok.vocab_size, num_labels, tok.pad_id, specials=specials)
  if name == "span_corruption":
    sentinels = _tokenizer_ids(tok, [f"<extra_id_{i}>" for i in range(100)], "T5 sentinel", setting)
    return SpanCorruption(seq_len, tok.vocab_size, tok.eos_id, tok.pad_id, sentinels=sentinels)
  if name == "prefix_lm":
    return PrefixLM(seq_len, family == "encoder_decoder", tok.eos_id, tok.pad_id)
  if name == "text_to_text":
    return TextToText(seq_len, target_len or seq_len, family == "encoder_decoder", tok.eos_id, tok.pad_id)
  raise ConfigError(f"data.objective={name!r}: allowed values are {', '.join(map(repr, OBJECTIVES))}")


def vocab_size(objective, tok) -> int:
  """Ids the model needs: the tokenizer's plus the objective's special ids."""
  return tok.vocab_size + objective.extra_ids


def default_for(family: str) -> str:
  return ALLOWED[family][0]


def check_family(name: str, family: str) -> None:
  if name not in OBJECTIVES:
    raise ConfigError(f"data.objective={name!r}: allowed values are {', '.join(map(repr, OBJECTIVES))}")
  if name not in ALLOWED[family]:
    raise ConfigError(f"data.objective={name!r} does not train model.family={family!r}; use "
                      f"{', '.join(map(repr, ALLOWED[family]))}")
