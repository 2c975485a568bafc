r"""T5 chain: span-corruption pre-training on standard-library code, then fine-tuning to write a function's
one-line summary from its code (its docstring's first line), against the same model trained from scratch
and two baselines: copying the input's first line (any text-to-text task's) and copying the function name
(`copy_function_name`, this task's own in `bigjax/data/tasks.py`).

Run (from the repo root), in this order:

  bigjax train --config experiments/t5_summaries.py:pretrain --workdir workdirs/t5_summaries_pretrain
  bigjax train --config experiments/t5_summaries.py:finetune --workdir workdirs/t5_summaries
  bigjax train --config experiments/t5_summaries.py:scratch --workdir workdirs/t5_summaries_scratch
  bigjax eval --workdir workdirs/t5_summaries --max_examples 400
  bigjax eval --workdir workdirs/t5_summaries_scratch --max_examples 400
  bigjax baselines --config experiments/t5_summaries.py:finetune --workdir workdirs/t5_summaries_baselines --max_examples 400

Data (embedded, no download; `bigjax/data/tasks.py`): `stdlib_functions`, 7,429 train / 820 validation
documented stdlib functions, split by crc32 of the code; pre-training reads only the train split's code.
Fine-tuning: code (first 128 tokens, docstring removed) → summary (up to 32 tokens), packed several
examples a row in training. Eval decodes greedily (`bigjax eval`), BLEU and ROUGE against the summaries.

Stages: `pretrain` (span corruption: noise density 0.15, mean span 3), `finetune` (text-to-text from the
pre-trained model, `train.init_from`, fresh optimizer), `scratch` (the same from random weights).

Measured on a 2-core CPU (26 min 41 s in all, the test suite running beside it): span corruption eval
loss 4.004 at step 1,000 (0.756 x unigram); fine-tuned from it, on the first 400 validation functions,
BLEU 0.32, ROUGE-1 18.28, ROUGE-2 1.36, ROUGE-L 17.13, eval loss 4.41; from scratch BLEU 0.34, ROUGE-1
14.07, ROUGE-2 1.91, ROUGE-L 13.79, loss 4.29; copying the function name BLEU 0.27, ROUGE-1 18.27,
ROUGE-2 2.08, ROUGE-L 17.55; copying the first line of the code BLEU 1.93, ROUGE-1 17.79, ROUGE-2 2.35,
ROUGE-L 16.61 (the same 400). Both models write near-constant summaries at this size; pre-training
did not help here.
"""

from bigjax import config as config_lib

PRETRAIN_WORKDIR = "workdirs/t5_summaries_pretrain"
STAGES = ("pretrain", "finetune", "scratch")


def get_config(arg=None):
  stage = arg or "finetune"
  if stage not in STAGES:
    raise config_lib.ConfigError(f"experiments/t5_summaries.py:{stage}: allowed stages are {', '.join(STAGES)}")
  c = config_lib.default_config()
  c.model.preset = "t5_v1_1_small"  # Gated GELU, RMSNorm, relative buckets, untied output layer.
  c.model.vocab_size = 4224  # 4096 pieces + 100 sentinels, rounded up to a multiple of 128.
  c.model.d_model = 128
  c.model.num_layers = 3
  c.model.num_decoder_layers = 3
  c.model.num_heads = 2
  c.model.head_dim = 64
  c.model.d_ff = 384
  c.model.max_len = 128
  c.data.source = "stdlib_functions"
  c.data.text_key = "code"
  c.data.tokenizer = "code_sp4k.model"
  c.data.seq_len = 128
  c.data.batch_size = 16
  c.optim.weight_decay = 0.0
  c.train.log_every = 50
  c.train.num_samples = 0

  if stage == "pretrain":
    c.data.objective = "span_corruption"
    c.data.eval_batches = 8
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 50
    c.train.steps = 1000
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    return c

  c.data.objective = "text_to_text"
  c.data.target_key = "summary"
  c.data.target_len = 32
  c.data.eval_batches = 0  # The whole validation split (820 functions).
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  c.optim.schedule = "linear"
  c.optim.end_lr_ratio = 0.0
  c.train.steps = 600  # Packed: about 3 examples a row, so 4 epochs of 7,429 functions.
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  if stage == "finetune":
    c.train.init_from = PRETRAIN_WORKDIR
  return c
