r"""BERT-style encoder pre-trained with masked LM on the standard library's Python source, on a CPU.

Run (from the repo root):

  bigjax train --config experiments/bert_mlm.py --workdir workdirs/bert_mlm

Post-LayerNorm BERT blocks; [CLS] window [SEP] examples with 15% of tokens chosen (80% [MASK], 10%
random, 10% kept); the loss and the eval figures are over the chosen tokens only. [CLS], [SEP] and
[MASK] are the three ids after the tokenizer's 4096.
Measured on a 2-core CPU: 4 min 4 s of wall time, 1.36M params, 600 steps of 16 x 128 tokens; last
eval loss 5.396 nats per masked token against a unigram floor of 5.847 (ratio 0.923), 2.56 bits per
byte of the masked text. Masked LM learns from 15% of the tokens per step, so at this budget the model
is only starting to use context (a causal LM of the same size reaches 0.69 in the same time);
raise train.steps for a stronger encoder.
"""

from bigjax import config as config_lib


def get_config(arg=None):
  del arg
  c = config_lib.default_config()
  c.model.preset = "bert_mini"  # Post-norm, GELU, segment embeddings; sizes below make it smaller.
  c.model.vocab_size = 4112  # 4096 pieces + [CLS] [SEP] [MASK], rounded up to a multiple of 16.
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 2
  c.model.d_ff = 512
  c.model.max_len = 128

  c.data.source = "stdlib_code"
  c.data.tokenizer = "code_sp4k.model"
  c.data.seq_len = 128
  c.data.batch_size = 16
  c.data.eval_batches = 8

  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.01

  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  return c
