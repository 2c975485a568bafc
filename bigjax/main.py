"""The `bigjax` command line.

  bigjax train --config experiments/quickstart.py --workdir DIR [--config.a.b=value ...]
      Trains (or resumes) the run a config file describes. Any config value can be overridden:
      --config.train.steps=2000 --config.data.source=/data/*.txt --config.mesh.shape="(2,2,2)".
      Running the same command again resumes from the workdir's latest checkpoint.

  bigjax convert --from_hf HF_DIR --workdir DIR      (Hugging Face → bigjax)
  bigjax convert --workdir DIR --to_hf HF_DIR        (bigjax → Hugging Face)
      Converts weights: a Hugging Face model directory (config.json + *.safetensors of GPT2LMHeadModel,
      BertModel / BertForMaskedLM / BertForSequenceClassification, T5ForConditionalGeneration or
      LlamaForCausalLM) into a new workdir that `bigjax train --config.train.init_from=DIR` fine-tunes
      from and `bigjax decode` reads; or a workdir's latest params into a directory that transformers'
      from_pretrained loads.

  bigjax decode --workdir DIR --prompt "text" [--prompt "more" ...] [--max_new_tokens 64]
         [--temperature 0 | --temperature 0.8 --top_k 40 --top_p 0.95 | --num_beams 4 --length_penalty 1]
      Generates with a KV cache from a workdir (a run or a converted model) or --hf HF_DIR. Text is
      tokenized with the workdir's tokenizer (or --tokenizer NAME); --prompt_ids "1,2,3" gives ids
      instead. Decoders continue the prompt; encoder-decoders (T5) read it and write the answer.

  bigjax eval --workdir DIR [--split validation] [--max_examples N] [--batch_size B]
         [--num_beams 4 --max_new_tokens 64 --length_penalty 1]
      Evaluates the workdir's latest checkpoint on its task's eval split (default: the run's
      data.eval_split) and writes DIR/eval_results.json: the trainer's eval loss, perplexity, bits/byte
      and token accuracy for language models; accuracy, macro P/R/F1, ROC-AUC and a confusion matrix
      (DIR/confusion_matrix.png) for classification; BLEU, ROUGE and exact match of decoded outputs
      (greedy, or beam search) for text_to_text, with the predictions in DIR/eval_predictions.jsonl.
      With --fewshot SOURCE (a decoder): in-context classification of SOURCE's records instead, for each
      k of --fewshot_k (k labelled train examples, then the query; each label scored as the continuation),
      fields --fewshot_keys TEXT,LABEL, into DIR/fewshot_results.json beside the majority baseline.

  bigjax baselines --config FILE --workdir DIR [--max_examples N]
      The baselines of a config's task on its eval split, into DIR/eval_results.json: for classification
      the majority class and TF-IDF + logistic regression (scikit-learn, trained on the train split, its
      confusion matrix in DIR/confusion_matrix.png); for text_to_text, copying the function name as the
      summary. --max_examples N keeps the first N eval examples (those `bigjax eval --max_examples N` scores).

  bigjax plan --config experiments/quickstart.py [--mesh 1,8,1] [--config.a.b=value ...]
         [--topology v5p-128 | --devices 64 --device_memory 95GiB]
      Plans memory before anything is allocated: per-device bytes of params, optimizer state, gradients,
      batch and activations (under model.remat_policy, model.scan_layers, data.batch_size) against the
      device's memory, "fits" or "does not fit" with the margin, then one JSON line of the figures.
      --mesh defaults to the config's mesh.shape (one size may be -1). Without --topology or --devices
      the devices are this machine's, and the train step is also compiled here on abstract inputs to
      print XLA's memory_analysis() beside the estimate (--nocompile skips it). Topologies: v4-N, v5p-N
      count TensorCores, 2 per chip (v4-32 = 16 chips of 32 GiB; v5p-128 = 64 chips of 95 GiB);
      v5e-N, v5litepod-N (16 GiB) and v6e-N (32 GiB) count chips; NxA100 (40 GiB), NxA100-80GB,
      NxH100 (80 GiB) count GPUs.

  bigjax quantize --workdir DIR --mode int8_weight|int8_dynamic --out NEW_DIR
      Post-training int8 with Qwix of the attention and MLP projections (and an untied output layer):
      NEW_DIR is a workdir that bigjax eval, decode and export read (its config says model.quantize); it
      prints the matmul weights' bytes before and after. NEW_DIR must be new or empty.

  bigjax export --workdir DIR --format stablehlo|saved_model|hf --out NEW_DIR [--platforms cpu,cuda,tpu]
      The workdir's latest model (LoRA adapters merged) for use without bigjax: stablehlo is jax.export's
      serialized scoring function (logits for ids and masks, any batch and length) with params.npz, reloaded
      by jax.export.deserialize; saved_model is a TensorFlow SavedModel whose serving_default signature
      takes input_ids and attention_mask (encoder-decoders: and decoder_input_ids, decoder_attention_mask);
      hf is convert --to_hf. NEW_DIR must be new or empty; export.json there says what was written.

  bigjax tokenizer train --input SOURCE --vocab_size N [--model_type unigram|bpe]
         [--text_key FIELD] [--special_pieces none|bert|t5|all] --out FILE
      Trains a SentencePiece model on a source (pydoc_prose, stdlib_code, a path/glob of text, JSONL
      or CSV files, tfds:NAME); --text_key names the text field of records. --special_pieces bert
      adds [CLS] [SEP] [MASK], t5 the sentinels <extra_id_0>..<extra_id_99>, all both.

Bad settings stop before anything compiles, with one line naming the setting (exit status 2).
"""

from __future__ import annotations

import time

STARTED = time.time()  # The command's start, for the trainer's start-up line (before the heavy imports).

import re  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags
from ml_collections import config_flags

from bigjax.config import ConfigError

COMMANDS = {
    "train": "train or resume a run: --config FILE --workdir DIR [--config.a.b=value ...]",
    "convert": "Hugging Face ⇄ bigjax weights: --from_hf HF_DIR --workdir DIR, or --workdir DIR --to_hf HF_DIR",
    "decode": "generate text: --workdir DIR (or --hf HF_DIR) --prompt TEXT [sampling or beam flags]",
    "eval": "evaluate a workdir's latest checkpoint on its eval split: --workdir DIR [--split S] "
            "[--max_examples N] → DIR/eval_results.json",
    "baselines": "baselines of a config's task on its eval split: --config FILE --workdir DIR [--max_examples N]",
    "plan": "per-device memory of a config on a mesh, before allocating: --config FILE [--mesh d,f,t] "
            "[--topology NAME | --devices N --device_memory SIZE]",
    "quantize": "post-training int8 (Qwix): --workdir DIR --mode int8_weight|int8_dynamic --out NEW_DIR",
    "export": "a workdir's model for use without bigjax: --workdir DIR --format stablehlo|saved_model|hf --out NEW_DIR",
    "tokenizer": "tokenizer train: train a SentencePiece model (--input, --vocab_size, --model_type, --out)",
}

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (a Python file with get_config(arg)); append :ARG to pass "
    "ARG. Override any value with --config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run: config.json, metrics.jsonl, "
                               "TensorBoard events, checkpoints/, samples.txt. May be gs://.")
_INPUT = flags.DEFINE_string("input", "pydoc_prose", "tokenizer train: text source (pydoc_prose, "
                             "stdlib_code, a path or glob of text, JSONL or CSV files, or tfds:NAME).")
_SPLIT = flags.DEFINE_string("split", "train", "tokenizer train: split of the source to read; eval: the split to "
                             "evaluate (default there: the run's data.eval_split).")
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "tokenizer train: the text field of JSONL/CSV records "
                                "or the text feature of a tfds: source.")
_VOCAB = flags.DEFINE_integer("vocab_size", 8192, "tokenizer train: vocabulary size.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "tokenizer train: algorithm.")
_OUT = flags.DEFINE_string("out", None, "tokenizer train: where to write the .model file; export: the new "
                           "directory to write (it must not exist or be empty).")
_MAX_SENTENCES = flags.DEFINE_integer("max_sentences", 2_000_000, "tokenizer train: lines sampled for training.")
_SPECIAL_PIECES = flags.DEFINE_enum("special_pieces", "none", ["none", "bert", "t5", "all"],
                                    "tokenizer train: pieces for objectives: bert = [CLS] [SEP] [MASK], "
                                    "t5 = <extra_id_0>..<extra_id_99>, all = both.")
_FROM_HF = flags.DEFINE_string("from_hf", None, "convert: Hugging Face model directory to read.")
_TO_HF = flags.DEFINE_string("to_hf", None, "convert: directory to write a Hugging Face model into.")
_MESH = flags.DEFINE_string("mesh", None, "plan: (data, fsdp, tensor) sizes as d,f,t, one may be -1 "
                            "(default: the config's mesh.shape).")
_DEVICES = flags.DEFINE_integer("devices", 0, "plan: how many devices to plan for (with --device_memory; "
                                "default: this machine's).")
_DEVICE_MEMORY = flags.DEFINE_string("device_memory", None, "plan: memory per device, e.g. 16GiB or 80GB "
                                     "(default: this machine's device, or the --topology's).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "plan: a TPU slice or GPU host that gives the devices and their "
                                "memory: v4-N, v5p-N (N TensorCores, 2 per chip), v5e-N, v5litepod-N, v6e-N (N "
                                "chips), NxA100, NxA100-80GB, NxH100 (N GPUs).")
_COMPILE = flags.DEFINE_boolean("compile", True, "plan: on this machine's devices, also compile the train step "
                                "on abstract inputs and print XLA's memory_analysis() beside the estimate.")
_FORMAT = flags.DEFINE_string("format", None, "export: stablehlo (jax.export + params.npz), saved_model (TensorFlow, "
                               "serving_default) or hf (transformers).")
_MODE = flags.DEFINE_string("mode", None, "quantize: int8_weight (int8 weights, per-channel scales) or int8_dynamic "
                             "(and int8 activations, scaled per row on the fly).")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "export: platforms the StableHLO is lowered for.")
_HF = flags.DEFINE_string("hf", None, "decode: a Hugging Face model directory to decode with (instead of --workdir).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "decode: prompt text (repeat for a batch).")
_PROMPT_IDS = flags.DEFINE_multi_string("prompt_ids", [], "decode: prompt as comma-separated token ids.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "decode: tokenizer (a SentencePiece .model or 'byte'); "
                                 "default: the workdir's data.tokenizer, or the HF directory's spiece.model.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "decode: tokens to generate after each prompt; eval "
                                "(text_to_text): the most each prediction may take (default there: the run's "
                                "data.target_len, or data.seq_len / 2 for a decoder).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "decode: sampling temperature (0 = greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "decode: sample among the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "decode: sample from the smallest set with this much probability.")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", 1, "decode, eval: beam search with this many beams (1 = no beam).")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 1.0, "decode, eval: beam score = log p / length**this.")
_SEED = flags.DEFINE_integer("seed", 0, "decode: sampling seed.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "decode: the weights, activations and KV cache "
                           "in this dtype (default: the model's; bfloat16 halves the bytes each token reads).")
_KV_CACHE = flags.DEFINE_enum("kv_cache_dtype", None, ["int8"], "decode: store the KV cache as int8 with a float32 "
                              "scale per position and head (a quarter of float32's bytes).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 0, "eval: evaluate the first N examples of the split "
                                     "(0 = all of it).")
_FEWSHOT = flags.DEFINE_string("fewshot", None, "eval: a labelled source (e.g. stdlib_packages) to classify in "
                                "context with a decoder, instead of the run's own eval.")
_FEWSHOT_K = flags.DEFINE_list("fewshot_k", ["0", "1", "4"], "eval --fewshot: demonstrations per query, a list.")
_FEWSHOT_KEYS = flags.DEFINE_list("fewshot_keys", None, "eval --fewshot: the text and label fields, TEXT,LABEL "
                                  "(default: the task's own, for a source in bigjax.data.tasks.TASKS).")
_FEWSHOT_TEMPLATE = flags.DEFINE_string("fewshot_template", None, "eval --fewshot: the prompt of one demonstration, "
                                        "{text} then {label}, \\n for a newline (default: the task's own, else "
                                        "'{text}\\nLabel: {label}\\n\\n').")
_EVAL_BATCH = flags.DEFINE_integer("batch_size", 0, "eval: examples per eval batch (0 = the run's data.batch_size).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "train: HOST:PORT of process 0 in a multi-process "
                                   "run (with --num_processes and --process_id); unset under SLURM, mpirun and "
                                   "multi-host Cloud TPU, which give it themselves.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "train: how many processes the run has (each "
                                      "starts the same command with its own --process_id).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "train: this process's index, 0 to --num_processes - 1 "
                                   "(0 writes metrics, samples and config.json).")


# The flags each command reads (for `bigjax COMMAND --help`).
_COMMAND_FLAGS = {
    "train": ("config", "workdir", "coordinator_address", "num_processes", "process_id"),
    "convert": ("from_hf", "to_hf", "workdir"),
    "decode": ("workdir", "hf", "prompt", "prompt_ids", "tokenizer", "max_new_tokens", "temperature", "top_k",
               "top_p", "num_beams", "length_penalty", "seed", "dtype", "kv_cache_dtype"),
    "eval": ("workdir", "split", "max_examples", "batch_size", "num_beams", "max_new_tokens", "length_penalty",
             "fewshot", "fewshot_k", "fewshot_keys"),
    "baselines": ("config", "workdir", "max_examples"),
    "plan": ("config", "mesh", "devices", "device_memory", "topology", "compile"),
    "export": ("workdir", "format", "out", "platforms"),
    "quantize": ("workdir", "mode", "out"),
    "tokenizer": ("input", "split", "text_key", "vocab_size", "model_type", "special_pieces", "out",
                  "max_sentences"),
}


def usage(command: str | None = None) -> str:
  if command in COMMANDS:
    blocks = __doc__.strip().split("\n\n")
    text = [b for b in blocks if b.lstrip().startswith(f"bigjax {command}")]
    flag_lines = [f"  --{name}: {FLAGS[name].help}" for name in _COMMAND_FLAGS[command]]
    return "\n\n".join(text) + "\n\nFlags:\n" + "\n".join(flag_lines)
  lines = [__doc__.strip(), "", "Commands (bigjax COMMAND --help for one):"]
  lines += [f"  {name:10s} {text}" for name, text in COMMANDS.items()]
  lines += ["", "Flags:", FLAGS.module_help(sys.modules[__name__])]
  return "\n".join(lines)


def fail(msg: str) -> None:
  print(f"bigjax: error: {msg}", file=sys.stderr)
  sys.exit(2)


def _parse(argv: list[str]) -> list[str]:
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help", "--helpfull") or \
      any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
    print(usage(argv[1] if len(argv) > 1 else None))
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


def _use_compilation_cache() -> None:
  """JAX's persistent compilation cache, on for every command that compiles: a second run of the same
  program loads it instead of compiling. JAX_COMPILATION_CACHE_DIR (and JAX's other cache settings) win;
  else ~/.cache/bigjax/jax (XDG_CACHE_HOME respected), caching every program that took 0.1 s or more."""
  import os  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  jax.config.update("jax_compilation_cache_dir", os.path.join(base, "bigjax", "jax"))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def _train(args: list[str]) -> None:
  if args:
    fail(f"unexpected arguments {args}; usage: bigjax train --config FILE --workdir DIR")
  config = _load_config()
  if not _WORKDIR.value:
    fail("--workdir is required: the directory that records (and resumes) the run")
  from bigjax import partitioning  # pylint: disable=g-import-not-at-top  (heavy: JAX)
  from bigjax import train  # pylint: disable=g-import-not-at-top  (heavy: JAX; TensorFlow only to tokenize)
  _use_compilation_cache()
  # Before anything else touches JAX: the processes of a multi-host run join here.
  train.log("bigjax: " + partitioning.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                                             _PROCESS_ID.value))
  with partitioning.on_lost_process():  # One of several processes dying ends the others with one line.
    train.train(config, _WORKDIR.value, started=STARTED)


def _convert(args: list[str]) -> None:
  if args:
    fail(f"unexpected arguments {args}; usage: bigjax convert --from_hf HF_DIR --workdir DIR "
         "| --workdir DIR --to_hf HF_DIR")
  if not _WORKDIR.value or bool(_FROM_HF.value) == bool(_TO_HF.value):
    fail("convert needs --workdir DIR and exactly one of --from_hf HF_DIR (into the workdir) or "
         "--to_hf HF_DIR (out of it)")
  from bigjax import convert  # pylint: disable=g-import-not-at-top
  if _FROM_HF.value:
    cfg, params = convert.from_hf(_FROM_HF.value)
    convert.to_workdir(cfg, params, _WORKDIR.value, source=_FROM_HF.value)
    print(f"bigjax: converted {_FROM_HF.value} ({cfg.family}, {_count(params):,} params) into {_WORKDIR.value}; "
          f"fine-tune with --config.train.init_from={_WORKDIR.value}")
  else:
    cfg, params = convert.from_workdir(_WORKDIR.value)
    convert.to_hf(cfg, params, _TO_HF.value)
    print(f"bigjax: wrote {_TO_HF.value} ({cfg.family}, {_count(params):,} params) from {_WORKDIR.value}")


def _quantize(args: list[str]) -> None:
  if args:
    fail(f"unexpected arguments {args}; usage: bigjax quantize --workdir DIR --mode MODE --out NEW_DIR")
  from bigjax import quantize  # pylint: disable=g-import-not-at-top
  if not _WORKDIR.value or not _MODE.value or not _OUT.value:
    fail(f"quantize needs --workdir DIR, --mode ({'|'.join(quantize.MODES)}) and --out NEW_DIR")
  r = quantize.quantize_workdir(_WORKDIR.value, _MODE.value, _OUT.value)
  print(f"bigjax: quantized {_WORKDIR.value} (step {r['step']}) as {r['mode']} into {_OUT.value}: {r['layers']} "
        f"matmul weights {r['float_bytes']:,} → {r['int8_bytes']:,} bytes ({r['float_bytes'] / r['int8_bytes']:.2f}x "
        f"smaller); all params {r['total_float_bytes']:,} → {r['total_bytes']:,} bytes")


def _export(args: list[str]) -> None:
  if args:
    fail(f"unexpected arguments {args}; usage: bigjax export --workdir DIR --format FORMAT --out NEW_DIR")
  from bigjax import export  # pylint: disable=g-import-not-at-top
  if not _WORKDIR.value or not _FORMAT.value or not _OUT.value:
    fail(f"export needs --workdir DIR, --format ({'|'.join(export.FORMATS)}) and --out NEW_DIR")
  record = export.export(_WORKDIR.value, _FORMAT.value, _OUT.value, platforms=tuple(_PLATFORMS.value))
  print(f"bigjax: exported {_WORKDIR.value} (step {record['step']}, {record['family']}) as {record['format']} into "
        f"{_OUT.value}: inputs {', '.join(record['inputs'])} → {record['output']}")


def _count(params) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return sum(x.size for x in jax.tree_util.tree_leaves(params))


def _decode(args: list[str]) -> None:
  if args:
    fail(f"unexpected arguments {args}; usage: bigjax decode --workdir DIR --prompt TEXT")
  if bool(_WORKDIR.value) == bool(_HF.value):
    fail("decode needs exactly one of --workdir DIR (a run or a converted model) or --hf HF_DIR")
  if not _PROMPT.value and not _PROMPT_IDS.value:
    fail("decode needs --prompt TEXT (or --prompt_ids 1,2,3)")
  if _MAX_NEW.value <= 0 or _NUM_BEAMS.value <= 0:
    fail(f"--max_new_tokens={_MAX_NEW.value} and --num_beams={_NUM_BEAMS.value} must be positive")
  if not 0.0 < _TOP_P.value <= 1.0 or _TOP_K.value < 0 or _TEMPERATURE.value < 0:
    fail(f"--top_p={_TOP_P.value} must be in (0, 1], --top_k={_TOP_K.value} and "
         f"--temperature={_TEMPERATURE.value} >= 0")
  if _NUM_BEAMS.value > 1 and _TEMPERATURE.value > 0:
    fail("--num_beams > 1 is deterministic beam search; leave --temperature at 0")
  from bigjax import decode  # pylint: disable=g-import-not-at-top
  _use_compilation_cache()
  decode.main(workdir=_WORKDIR.value, hf=_HF.value, prompts=_PROMPT.value, prompt_ids=_PROMPT_IDS.value,
              tokenizer=_TOKENIZER.value, max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
              top_k=_TOP_K.value, top_p=_TOP_P.value, num_beams=_NUM_BEAMS.value,
              length_penalty=_LENGTH_PENALTY.value, seed=_SEED.value, dtype=_DTYPE.value,
              kv_cache_dtype=_KV_CACHE.value)


def _eval(args: list[str]) -> None:
  if args:
    fail(f"unexpected arguments {args}; usage: bigjax eval --workdir DIR [--split SPLIT] [--max_examples N]")
  if not _WORKDIR.value:
    fail("--workdir is required: the run to evaluate")
  if _FEWSHOT.value:
    _fewshot()
    return
  from bigjax.eval import evaluate  # pylint: disable=g-import-not-at-top  (heavy: JAX, TF)
  _use_compilation_cache()
  # --split and --max_new_tokens have other commands' defaults: here, unset means the run's own.
  evaluate.main(workdir=_WORKDIR.value, split=_SPLIT.value if FLAGS["split"].present else None,
                max_examples=_MAX_EXAMPLES.value, batch_size=_EVAL_BATCH.value, num_beams=_NUM_BEAMS.value,
                max_new_tokens=_MAX_NEW.value if FLAGS["max_new_tokens"].present else 0,
                length_penalty=_LENGTH_PENALTY.value)


def _fewshot() -> None:
  """The task table (`bigjax.data.tasks`) gives a known source its fields and template; any other source
  names its fields with --fewshot_keys and is prompted with the generic template unless --fewshot_template."""
  try:
    ks = [int(k) for k in _FEWSHOT_K.value]
  except ValueError:
    fail(f"--fewshot_k={','.join(_FEWSHOT_K.value)}: give whole numbers such as 0,1,4")
  if any(k < 0 for k in ks):
    fail(f"--fewshot_k={','.join(_FEWSHOT_K.value)}: the numbers of demonstrations must be >= 0")
  from bigjax.data import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.for_source(_FEWSHOT.value)
  keys = _FEWSHOT_KEYS.value or task.fewshot_keys
  if not keys:
    known = ", ".join(name for name, t in tasks.TASKS.items() if t.fewshot_keys)
    fail(f"--fewshot={_FEWSHOT.value}: no few-shot fields are known for this source (known: {known}); give "
         "them with --fewshot_keys TEXT,LABEL")
  if len(keys) != 2:
    fail(f"--fewshot_keys={','.join(keys)}: give two field names, TEXT,LABEL")
  template = _FEWSHOT_TEMPLATE.value
  if template is not None:
    template = template.replace("\\n", "\n").replace("\\t", "\t")
  from bigjax import workdir  # pylint: disable=g-import-not-at-top
  from bigjax.eval import fewshot  # pylint: disable=g-import-not-at-top  (heavy: JAX, TF)
  template = template or task.fewshot_template or fewshot.DEFAULT_TEMPLATE
  try:
    fewshot.continuation("x", template)
  except ValueError:
    fail(f"--fewshot_template={template!r}: needs one {{text}} and then one {{label}}")
  text_key, label_key = keys
  out = fewshot.evaluate(_WORKDIR.value, _FEWSHOT.value, text_key=text_key, label_key=label_key, ks=ks,
                         split=_SPLIT.value if FLAGS["split"].present else "validation",
                         max_examples=_MAX_EXAMPLES.value, batch_size=_EVAL_BATCH.value or 16, template=template)
  out.update(template=template, text_key=text_key, label_key=label_key)  # What was asked, beside the answer.
  path = workdir.path(_WORKDIR.value) / "fewshot_results.json"
  workdir.write_json(path, out)
  print(fewshot.summary(out))
  print(f"bigjax: wrote {path}")


def _baselines(args: list[str]) -> None:
  if args:
    fail(f"unexpected arguments {args}; usage: bigjax baselines --config FILE --workdir DIR")
  config = _load_config()
  if not _WORKDIR.value:
    fail("--workdir is required: where eval_results.json of the baselines goes")
  from bigjax.eval import baselines  # pylint: disable=g-import-not-at-top  (heavy: TF, scikit-learn)
  out = baselines.run(config, _WORKDIR.value, max_examples=_MAX_EXAMPLES.value)
  for name, m in out["baselines"].items():
    shown = {k: m[k] for k in ("accuracy", "f1", "roc_auc", "bleu", "rouge1", "rouge2", "rougeL") if k in m}
    print(f"{name}: " + " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
  print(f"bigjax: {out['examples']} {out['split']} examples of {out['task']}; wrote {_WORKDIR.value}/eval_results.json")


def _plan(args: list[str]) -> None:
  if args:
    fail(f"unexpected arguments {args}; usage: bigjax plan --config FILE [--mesh d,f,t] "
         "[--topology NAME | --devices N --device_memory SIZE]")
  config = _load_config()
  from bigjax import plan  # pylint: disable=g-import-not-at-top  (heavy: JAX)
  _use_compilation_cache()  # The memory analysis compiles the step when the mesh fits here.
  plan.main(config, mesh=_MESH.value, devices=_DEVICES.value, device_memory=_DEVICE_MEMORY.value,
            topology=_TOPOLOGY.value, compile_here=_COMPILE.value)


def _tokenizer(args: list[str]) -> None:
  if args != ["train"]:
    fail(f"usage: bigjax tokenizer train --input SOURCE --vocab_size N --out FILE (got {args})")
  if not _OUT.value:
    fail("--out is required: the .model file to write")
  from bigjax.data import sources, tokenizer  # pylint: disable=g-import-not-at-top
  specials = {"none": [], "bert": list(tokenizer.BERT_SPECIALS), "t5": tokenizer.sentinel_pieces(),
              "all": list(tokenizer.BERT_SPECIALS) + tokenizer.sentinel_pieces()}[_SPECIAL_PIECES.value]
  docs = sources.documents(_INPUT.value, _SPLIT.value, text_key=_TEXT_KEY.value)
  tok = tokenizer.train_sentencepiece(sources.iter_texts(docs), _OUT.value, vocab_size=_VOCAB.value,
                                      model_type=_MODEL_TYPE.value, max_sentences=_MAX_SENTENCES.value,
                                      special_pieces=specials)
  extra = f", {len(specials)} special pieces" if specials else ""
  print(f"bigjax: wrote {_OUT.value} ({tok.vocab_size} ids{extra}, {tok.fingerprint})")


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  rest = _parse(argv)
  command, args = (rest[1], rest[2:]) if len(rest) > 1 else ("", [])
  if command not in COMMANDS:
    fail(f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (bigjax --help)")
  try:
    {"train": _train, "convert": _convert, "decode": _decode, "eval": _eval, "baselines": _baselines, "plan": _plan,
     "export": _export, "quantize": _quantize, "tokenizer": _tokenizer}[command](args)
  except ConfigError as e:
    fail(str(e))
  except KeyboardInterrupt:
    print("bigjax: interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  main()
