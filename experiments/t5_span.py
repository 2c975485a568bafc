r"""T5 v1.1-style encoder-decoder pre-trained with span corruption on the standard library's Python
source, on a CPU.

Run (from the repo root):

  bigjax train --config experiments/t5_span.py --workdir workdirs/t5_span

Span corruption as in the T5 paper: noise density 0.15, mean span 3; each span becomes a sentinel
(<extra_id_i> = the 100 ids after the tokenizer's 4096, from the top down) in the 128-token encoder
input, and the decoder writes the sentinels and their spans (29 target tokens).
Measured on a 2-core CPU (fresh TFDS data dir, so corpus preparation is included): 3 min 45 s of wall
time, 2.56M params, 600 steps of 16 x 128 encoder tokens; last eval loss 4.295 nats per target token
against a unigram floor of 5.551 (ratio 0.774; sentinels at their sampled frequency), 2.78 bits per
byte of the text the targets stand for.
"""

from bigjax import config as config_lib


def get_config(arg=None):
  del arg
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

  c.data.source = "stdlib_code"
  c.data.tokenizer = "code_sp4k.model"
  c.data.seq_len = 128  # Encoder input; 141 raw tokens make one example.
  c.data.batch_size = 16
  c.data.eval_batches = 8

  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.0

  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  return c
