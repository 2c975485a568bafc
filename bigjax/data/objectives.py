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
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bigjax.config import ConfigError

OBJECTIVES = ("causal_lm", "masked_lm", "span_corruption")


@dataclasses.dataclass(frozen=True)
class CausalLM:
  seq_len: int
  name: str = "causal_lm"
  extra_ids: int = 0

  @property
  def window(self) -> int:  # seq_len + 1 tokens: inputs and the targets shifted by one.
    return self.seq_len + 1

  @property
  def stride(self) -> int:
    return self.seq_len

  def example(self, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng
    return {"inputs": x[:-1], "targets": x[1:], "weights": np.ones(len(x) - 1, np.float32)}


@dataclasses.dataclass(frozen=True)
class MaskedLM:
  seq_len: int
  base_vocab: int  # The tokenizer's ids; [CLS], [SEP], [MASK] follow them.
  mask_rate: float = 0.15
  name: str = "masked_lm"
  extra_ids: int = 3

  @property
  def cls_id(self) -> int:
    return self.base_vocab

  @property
  def sep_id(self) -> int:
    return self.base_vocab + 1

  @property
  def mask_id(self) -> int:
    return self.base_vocab + 2

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
  name: str = "span_corruption"
  extra_ids: int = 100  # T5's sentinels: <extra_id_i> = base_vocab + 99 - i.

  def __post_init__(self):
    tokens, _, _ = span_corruption_lengths(self.seq_len, self.noise_density, self.mean_span)
    noise = int(round(tokens * self.noise_density))
    if int(round(noise / self.mean_span)) < 1:  # Not even one noise span would fit.
      raise ConfigError(f"data.seq_len={self.seq_len} is too short for span corruption (noise density "
                        f"{self.noise_density}, mean span {self.mean_span}); use at least 16")
    if int(round(noise / self.mean_span)) > self.extra_ids:
      raise ConfigError(f"data.seq_len={self.seq_len} makes more noise spans than the {self.extra_ids} "
                        "sentinel ids; lower data.seq_len")

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
    return self.base_vocab + self.extra_ids - 1 - i

  def example(self, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    _, in_len, tgt_len = span_corruption_lengths(self.seq_len, self.noise_density, self.mean_span)
    mask = random_spans_mask(len(x), self.noise_density, self.mean_span, rng)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    sentinels = self.base_vocab + self.extra_ids - np.cumsum(starts)  # Span i → base + extra - 1 - i.
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


def batch(objective, windows: np.ndarray, rngs) -> dict[str, np.ndarray]:
  """Applies `objective` to each row of `windows` `[b, window]` with its own Generator; stacks the rows."""
  rows = [objective.example(x, rng) for x, rng in zip(windows, rngs)]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def make(name: str, seq_len: int, tok) -> CausalLM | MaskedLM | SpanCorruption:
  """The objective `data.objective` names, for a tokenizer."""
  if name == "causal_lm":
    return CausalLM(seq_len)
  if name == "masked_lm":
    if seq_len < 4:
      raise ConfigError(f"data.seq_len={seq_len} is too short for masked_lm ([CLS], [SEP] and a token); use >= 4")
    return MaskedLM(seq_len, tok.vocab_size)
  if name == "span_corruption":
    return SpanCorruption(seq_len, tok.vocab_size, tok.eos_id, tok.pad_id)
  raise ConfigError(f"data.objective={name!r}: allowed values are {', '.join(map(repr, OBJECTIVES))}")


def vocab_size(objective, tok) -> int:
  """Ids the model needs: the tokenizer's plus the objective's special ids."""
  return tok.vocab_size + objective.extra_ids


def default_for(family: str) -> str:
  return {"decoder": "causal_lm", "encoder": "masked_lm", "encoder_decoder": "span_corruption"}[family]


def check_family(name: str, family: str) -> None:
  allowed = {"decoder": ("causal_lm",), "encoder": ("masked_lm",), "encoder_decoder": ("span_corruption",)}
  if name not in allowed[family]:
    raise ConfigError(f"data.objective={name!r} does not train model.family={family!r}; use "
                      f"{', '.join(map(repr, allowed[family]))}")

