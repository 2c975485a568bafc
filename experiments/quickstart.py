r"""Quickstart: a small GPT-style decoder on the standard library's Python source, on a CPU.

Run (from the repo root):

  bigjax train --config experiments/quickstart.py --workdir workdirs/quickstart

Train on your own text instead (byte-level tokens, no vocabulary to train first):

  bigjax train --config experiments/quickstart.py --workdir workdirs/mine \
      --config.data.source='/path/to/*.txt' --config.data.tokenizer=byte --config.model.vocab_size=259
"""

from bigjax import config as config_lib


def get_config(arg=None):
  del arg
  c = config_lib.default_config()
  # Sized for a 2-core CPU. At this width the output layer costs as much as the 4 blocks, so the
  # 4k-piece code tokenizer trains faster per byte of text than the 8k one.
  c.model.vocab_size = 4096  # code_sp4k.model has 4096 ids.
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 2
  c.model.d_ff = 512
  c.model.max_len = 256

  c.data.source = "stdlib_code"
  c.data.tokenizer = "code_sp4k.model"
  c.data.seq_len = 128
  c.data.batch_size = 16
  c.data.eval_batches = 8  # 16k eval tokens.

  c.optim.learning_rate = 5e-3  # Small models take a high peak rate.
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.1

  c.train.steps = 520  # About 4 minutes on 2 CPU cores, first-time data preparation included.
  c.train.log_every = 50
  c.train.eval_every = 260
  c.train.checkpoint_every = 260
  return c
