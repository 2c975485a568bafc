"""Tokenizers: SentencePiece models (trained here, shipped in `tokenizers/`) and byte-level tokens.

Both kinds share one interface: `vocab_size`, the special ids (`pad_id`, `eos_id`, `unk_id`),
`encode`/`decode` in Python, `tf_encoder()` for use inside a tf.data graph, and `byte_lengths` (the UTF-8
bytes each id stands for, which turns a loss in nats/token into bits/byte).

Id conventions follow T5: pad = 0, eos = 1, unk = 2, no bos. The byte tokenizer is ByT5's: the
same three specials, then byte b is id b + 3 (259 ids).

A SentencePiece model may also carry special pieces that objectives need (`BERT_SPECIALS`, T5's
`sentinel_pieces()`), trained in with `special_pieces=`; `piece_id` finds them (None if absent).

TensorFlow is imported only by `tf_encoder()`: decoding and few-shot scoring load tokenizers without it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, Sequence

from etils import epath
import numpy as np
import sentencepiece as spm

from bigjax.config import ConfigError
from bigjax.data import import_tensorflow

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
BERT_SPECIALS = ("[CLS]", "[SEP]", "[MASK]")
REPO_TOKENIZERS = epath.Path(__file__).resolve().parent.parent.parent / "tokenizers"


def sentinel_pieces(n: int = 100) -> list[str]:
  """T5's span-corruption sentinels `<extra_id_0>` ... `<extra_id_{n-1}>`."""
  return [f"<extra_id_{i}>" for i in range(n)]


class ByteTokenizer:
  """UTF-8 bytes as tokens: needs no training, works on any text."""

  name = "byte"
  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID
  offset = 3
  vocab_size = 256 + offset

  @property
  def fingerprint(self) -> str:
    return "byte-v1"

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    return [[b + self.offset for b in t.encode("utf-8")] for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(i - self.offset for i in ids if self.offset <= i < self.vocab_size)
    return data.decode("utf-8", errors="replace")

  def tf_encoder(self):
    """A function tf.string → int32 ids that runs inside tf.data graphs (build it eagerly)."""
    tf, _ = import_tensorflow()
    return lambda text: tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32) + self.offset

  def byte_lengths(self) -> np.ndarray:
    lengths = np.ones(self.vocab_size, np.int32)
    lengths[:self.offset] = 0
    return lengths

  def piece_id(self, piece: str) -> int | None:
    del piece  # Bytes carry no special pieces.
    return None


class SentencePieceTokenizer:
  """A SentencePiece model; its file may live on local disk or gs://."""

  def __init__(self, path: str):
    self.path = path
    self._proto = epath.Path(path).read_bytes()
    self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self.name = os.path.basename(path)
    self.vocab_size = self.sp.get_piece_size()
    self.pad_id, self.eos_id, self.unk_id = self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id()
    if self.pad_id < 0 or self.eos_id < 0:
      raise ConfigError(f"data.tokenizer={path!r}: the model has no pad or eos id "
                        f"(pad={self.pad_id}, eos={self.eos_id}); train it with bigjax tokenizer train")

  @property
  def fingerprint(self) -> str:
    return "sp-" + hashlib.sha256(self._proto).hexdigest()[:16]

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    return self.sp.encode(list(texts), out_type=int)

  def decode(self, ids: Iterable[int]) -> str:
    # Ids past the tokenizer (a model vocabulary padded beyond it, sentinels appended) stand for no text.
    return self.sp.decode([int(i) for i in ids if i not in (self.pad_id, self.eos_id) and 0 <= i < self.sp.vocab_size()])

  def tf_encoder(self):
    """A function tf.string → int32 ids that runs inside tf.data graphs (build it eagerly: the
    SentencePiece op holds a resource that must not be created inside a traced function)."""
    tf, _ = import_tensorflow()
    import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
    return tf_text.SentencepieceTokenizer(model=self._proto, out_type=tf.int32).tokenize

  def piece_id(self, piece: str) -> int | None:
    """The id of `piece` when the model holds it as one piece (as it does `special_pieces`), else None."""
    i = self.sp.piece_to_id(piece)
    # piece_to_id answers unk_id for a piece the model lacks.
    return None if i == self.unk_id and piece != self.sp.id_to_piece(self.unk_id) else i

  def byte_lengths(self) -> np.ndarray:
    lengths = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      if self.sp.is_control(i) or self.sp.is_unknown(i):
        continue
      if self.sp.is_byte(i):
        lengths[i] = 1
      else:
        lengths[i] = len(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return lengths


def load(name: str):
  """`"byte"`, or a SentencePiece model path (also looked up in the repo's tokenizers/)."""
  if name == "byte":
    return ByteTokenizer()
  candidates = [epath.Path(name)]
  if "://" not in name and not os.path.isabs(name):
    candidates.append(REPO_TOKENIZERS / name)
  for p in candidates:
    if p.exists():
      return SentencePieceTokenizer(str(p))
  shipped = sorted(p.name for p in REPO_TOKENIZERS.glob("*.model")) if REPO_TOKENIZERS.exists() else []
  raise ConfigError(f"data.tokenizer={name!r}: no such file; use 'byte', a SentencePiece .model path, "
                    f"or one shipped in tokenizers/: {', '.join(shipped) or '(none)'}")


def train_sentencepiece(texts: Iterable[str], out: str, *, vocab_size: int, model_type: str = "unigram",
                        max_sentences: int = 2_000_000,
                        special_pieces: Sequence[str] = ()) -> SentencePieceTokenizer:
  """Trains a SentencePiece model on `texts` (one sentence per line) and writes `out`.

  Settings keep every byte recoverable (identity normalisation, whitespace kept, byte fallback),
  so code round-trips exactly, and the ids follow the T5 convention (pad 0, eos 1, unk 2).
  `special_pieces` (e.g. `BERT_SPECIALS`) become pieces of their own, ids 5, 6, ... in order, after
  `\n` (3) and `\t` (4). Text that spells one encodes to its id, though a text that starts with one
  still starts with SentencePiece's `▁` piece (its dummy prefix): `encode("[MASK]")` is `[▁, [MASK]]`.
  """
  if model_type not in ("unigram", "bpe"):
    raise ConfigError(f"--model_type={model_type!r}: allowed values are 'unigram', 'bpe'")
  bad = [p for p in special_pieces if not p or "\n" in p or "\t" in p]
  if bad:
    raise ConfigError(f"special_pieces holds {bad[0]!r}: a special piece must be non-empty, without "
                      "newline or tab")
  user_pieces = list(dict.fromkeys(["\n", "\t", *special_pieces]))  # Duplicates would stop the trainer.

  def lines():
    for t in texts:
      for line in t.split("\n"):
        if line.strip():
          yield line

  out_path = epath.Path(out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  import io  # pylint: disable=g-import-not-at-top
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines(), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_digits=True, byte_fallback=True,
        user_defined_symbols=user_pieces, character_coverage=0.9995,
        input_sentence_size=max_sentences, shuffle_input_sentence=True,
        max_sentence_length=16384, num_threads=os.cpu_count() or 1,
        minloglevel=2)
  except RuntimeError as e:  # Too small or too large for the text: say which setting to change.
    msg = str(e)
    if "Vocabulary size" not in msg:
      raise
    # Keep the reason; drop the C++ source location and advice about trainer flags we do not expose.
    reason = msg[msg.index("Vocabulary size"):].split(" Increase")[0]
    raise ConfigError(f"--vocab_size={vocab_size}: {reason} (it includes {len(user_pieces)} user pieces, "
                      "256 byte pieces and 3 specials)") from None
  out_path.write_bytes(model.getvalue())
  return SentencePieceTokenizer(str(out_path))
