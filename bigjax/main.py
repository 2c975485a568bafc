"""The `bigjax` command line.

  bigjax train --config experiments/quickstart.py --workdir DIR [--config.a.b=value ...]
      Trains (or resumes) the run a config file describes. Any config value can be overridden:
      --config.train.steps=2000 --config.data.source=/data/*.txt --config.mesh.shape="(2,2,2)".
      Running the same command again resumes from the workdir's latest checkpoint.

  bigjax tokenizer train --source SOURCE --vocab_size N [--model_type unigram|bpe] --out FILE
      Trains a SentencePiece model on a source (pydoc_prose, stdlib_code, a path/glob, tfds:NAME).

Bad settings stop before anything compiles, with one line naming the setting (exit status 2).
"""

from __future__ import annotations

import re
import sys

from absl import flags
from ml_collections import config_flags

from bigjax.config import ConfigError

COMMANDS = {
    "train": "train or resume a run: --config FILE --workdir DIR [--config.a.b=value ...]",
    "tokenizer": "tokenizer train: train a SentencePiece model (--source, --vocab_size, --model_type, --out)",
}

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (a Python file with get_config(arg)); append :ARG to pass "
    "ARG. Override any value with --config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run: config.json, metrics.jsonl, "
                               "TensorBoard events, checkpoints/, samples.txt. May be gs://.")
_SOURCE = flags.DEFINE_string("source", "pydoc_prose", "tokenizer train: text source "
                              "(pydoc_prose, stdlib_code, a path or glob, or tfds:NAME).")
_SPLIT = flags.DEFINE_string("split", "train", "tokenizer train: split of the source to read.")
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "tokenizer train: text feature of a tfds: source.")
_VOCAB = flags.DEFINE_integer("vocab_size", 8192, "tokenizer train: vocabulary size.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "tokenizer train: algorithm.")
_OUT = flags.DEFINE_string("out", None, "tokenizer train: where to write the .model file.")
_MAX_SENTENCES = flags.DEFINE_integer("max_sentences", 2_000_000, "tokenizer train: lines sampled for training.")


def usage() -> str:
  lines = [__doc__.strip(), "", "Commands:"]
  lines += [f"  {name:10s} {text}" for name, text in COMMANDS.items()]
  lines += ["", "Flags:", FLAGS.module_help(sys.modules[__name__])]
  return "\n".join(lines)


def fail(msg: str) -> None:
  print(f"bigjax: error: {msg}", file=sys.stderr)
  sys.exit(2)


def _parse(argv: list[str]) -> list[str]:
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help", "--helpfull") or \
      any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
    print(usage())
    sys.exit(0)
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except (KeyError, AttributeError) as e:  # An override of a key the config does not have.
    text = " ".join(re.sub(r"\\n|[\\\"']", " ", str(e.args[0] if e.args else e)).split())
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    fail(f"no such config setting: {text} (overrides given: {', '.join(overrides)})")
  except (ConfigError, TypeError, ValueError, SyntaxError, OSError) as e:
    fail(f"--config: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
  return rest


def _load_config():
  """The config, loaded (config_flags loads lazily); a broken file becomes one line."""
  try:
    config = _CONFIG.value
    if config is not None:
      list(config.keys())  # The value is a lazy proxy: touch it so that load errors surface here.
  except Exception as e:  # pylint: disable=broad-except  (any error inside the user's file)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    name = getattr(FLAGS["config"], "config_filename", None) or FLAGS["config"].serialize()
    fail(f"--config={name}: could not load: {lines[-1] if lines else type(e).__name__}")
  if config is None:
    fail("--config is required: an experiment file such as experiments/quickstart.py")
  return config


def _train(args: list[str]) -> None:
  if args:
    fail(f"unexpected arguments {args}; usage: bigjax train --config FILE --workdir DIR")
  config = _load_config()
  if not _WORKDIR.value:
    fail("--workdir is required: the directory that records (and resumes) the run")
  from bigjax import train  # pylint: disable=g-import-not-at-top  (heavy: JAX, TF)
  train.train(config, _WORKDIR.value)


def _tokenizer(args: list[str]) -> None:
  if args != ["train"]:
    fail(f"usage: bigjax tokenizer train --source SOURCE --vocab_size N --out FILE (got {args})")
  if not _OUT.value:
    fail("--out is required: the .model file to write")
  from bigjax.data import sources, tokenizer  # pylint: disable=g-import-not-at-top
  docs = sources.documents(_SOURCE.value, _SPLIT.value, text_key=_TEXT_KEY.value)
  tok = tokenizer.train_sentencepiece(sources.iter_texts(docs), _OUT.value, vocab_size=_VOCAB.value,
                                      model_type=_MODEL_TYPE.value, max_sentences=_MAX_SENTENCES.value)
  print(f"bigjax: wrote {_OUT.value} ({tok.vocab_size} ids, {tok.fingerprint})")


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  rest = _parse(argv)
  command, args = (rest[1], rest[2:]) if len(rest) > 1 else ("", [])
  if command not in COMMANDS:
    fail(f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (bigjax --help)")
  try:
    {"train": _train, "tokenizer": _tokenizer}[command](args)
  except ConfigError as e:
    fail(str(e))
  except KeyboardInterrupt:
    print("bigjax: interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  main()
