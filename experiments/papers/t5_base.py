r"""T5-base (v1.0) pre-training with span corruption on C4, as in Raffel et al. 2019 ("Exploring the
Limits of Transfer Learning with a Unified Text-to-Text Transformer", JMLR 21(140), arXiv:1910.10683).

Run (from the repo root). The default is the paper's baseline budget (Sec. 3.1.2); `:released` is the
budget of the released T5-base checkpoint (Sec. 3.7):

  bigjax train --config experiments/papers/t5_base.py --workdir workdirs/t5_base
  bigjax train --config experiments/papers/t5_base.py:released --workdir workdirs/t5_base_released

Plan the memory first (no accelerator needed, and from the config alone: the tokenizer it names need
not exist yet, the planner takes its shapes from model.vocab_size):

  bigjax plan --config experiments/papers/t5_base.py --topology v4-8 --mesh 4,1,1
  bigjax plan --config experiments/papers/t5_base.py:released --topology v4-16 --mesh 8,1,1

The paper's hyper-parameters and this config:

| setting | paper | here |
| --- | --- | --- |
| model | 12 + 12 layers, d_model 768, 12 heads, d_kv 64, d_ff 3072, ReLU, RMS norm, relative buckets, tied output, 220M | preset `t5_base` (same, 223M counted) |
| vocabulary | SentencePiece, 32,000 pieces + 100 sentinels, 32,128 rows | the same model file (gs://t5-data/vocabs/cc_all.32000), sentinels <extra_id_i> = 32099 - i, 32,128 rows |
| data | C4 (`c4/en`, the April 2019 crawl; T5's tasks read TFDS `c4/en:2.2.0`) | `tfds:c4/en` (3.1.0 in TFDS 4.9.10) |
| objective | span corruption: 15% noise, mean span 3 (Sec. 3.3.4, the final models') | the same, 568 raw tokens -> 512 inputs, 114 targets |
| batch | 128 sequences x 512 (2^16 tokens); released: 2^11 = 2048 sequences | 128; `:released` 2048 |
| steps | baseline 2^19 = 524,288 (2^35 = 34B tokens); released: 1,000,000 (~1T tokens) | 524,288; `:released` 1,000,000 |
| optimizer | Adafactor, no momentum, update clipping 1.0, step scaled by each param's RMS | the same (`optim.name="adafactor"`: optax's, decay rate 0.8, update clipping 1.0, parameter scaling, matrices with both large dims >= 128 factored) |
| schedule | lr = 1 / sqrt(max(step, 10^4)): 0.01 constant for 10^4 steps, then inverse square root | the same (`optim.schedule="rsqrt"`, `learning_rate` 0.01, `warmup_steps` 10^4): 0.01 for 10^4 steps, then 0.01 x sqrt(10^4 / step) = 1 / sqrt(step) |
| dropout | 0.1 (pre-training and fine-tuning) | 0.1 |

What bigjax does differently, and why:

* Optimizer and schedule as the paper's: Adafactor with T5's settings on the inverse square root (T5's
  "relative step size" 1 / sqrt(max(step, 10^4)) is exactly `optim.schedule="rsqrt"` at 0.01 with 10^4
  warmup steps), no weight decay and no global-norm clipping (Adafactor clips each update's RMS at 1.0).
  Its factored statistics shard by the params' own rules; `optim.end_lr_ratio` only records where the
  schedule ends. (Before Adafactor was in bigjax, this file used AdamW at 0.01 x d_model^-0.5.)
* Factoring: T5 (Mesh TensorFlow) factored each attention matrix as [d_model, heads x d_kv]; bigjax keeps
  it as [d_model, heads, d_kv], and optax factors a tensor's two largest axes, so with
  `optim.adafactor_min_dim_to_factor` = 64 each attention kernel keeps [heads, d_kv] and [d_model, heads]
  statistics (a finer factoring than T5's [d_model] and [heads x d_kv]; all of Adafactor's state is 6.5 MiB,
  under 1% of the params' bytes, where AdamW's two moments took 1.7 GiB).
* Released T5-base was pre-trained on a multi-task mixture (C4 span corruption plus the supervised
  tasks, Sec. 3.7); here, as in T5 v1.1, C4 only. The baseline of Sec. 3.1 used i.i.d. token noise
  (mean span ~1.2), the released models span corruption with mean span 3, as here.
* Activations in bfloat16 (as in T5's Mesh TensorFlow setup), params and optimizer state in float32.

Published targets (both after fine-tuning on each task, which this file does not do):
* default (the baseline budget): Table 1 / Table 10 baseline row: GLUE 83.28, CNN/DM ROUGE-2 19.24,
  SQuAD EM 80.88, SuperGLUE 71.36, WMT En-De 26.98, En-Fr 39.82, En-Ro 27.65 BLEU (validation sets).
* `:released`: Table 14, T5-Base: GLUE 82.7, CNN/DM ROUGE-2 20.34, SQuAD v1.1 EM 85.44 / F1 92.08,
  SuperGLUE 76.2 (test sets, SQuAD validation).

Planner (measured with `bigjax plan` as above, estimate only):

  default (remat none):
    bigjax plan: encoder_decoder, 222,903,552 params; mesh (data 4, fsdp 1, tensor 1) on 4 devices of 32.00 GiB (v4-8: 4 TPU v4 chips (8 TensorCores), 32.00 GiB HBM each)
      total 22.78 GiB of 32.00 GiB; fits: 9.22 GiB to spare (29% of the device)
  released (scan_layers, remat full):
    bigjax plan: encoder_decoder, 222,903,552 params; mesh (data 8, fsdp 1, tensor 1) on 8 devices of 32.00 GiB (v4-16: 8 TPU v4 chips (16 TensorCores), 32.00 GiB HBM each)
      total 15.78 GiB of 32.00 GiB; fits: 16.22 GiB to spare (51% of the device)
"""

from bigjax import config as config_lib

D_MODEL = 768
ADAFACTOR_LR = 1e-2  # T5: 1 / sqrt(max(step, 10^4)) is 0.01 for the first 10^4 steps.
RSQRT_WARMUP = 10_000


def get_config(arg=None):
  """`arg` None or "baseline": 2^19 steps of 128 sequences. "released": 1M steps of 2048 sequences."""
  budget = arg or "baseline"
  if budget not in ("baseline", "released"):
    raise ValueError(f"t5_base.py: unknown arg {arg!r}; use baseline (default) or released")
  c = config_lib.default_config()
  c.model.preset = "t5_base"  # v1.0: ReLU MLP, tied output (scaled by d_model^-0.5), relative buckets.
  c.model.vocab_size = 32128  # 32,000 pieces + 100 sentinels, padded to a multiple of 128.
  c.model.dropout_rate = 0.1
  c.model.dtype = "bfloat16"  # Activations; params and optimizer state stay float32.

  c.data.source = "tfds:c4/en"
  c.data.text_key = "text"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.tokenizer = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"  # T5's own vocabulary.
  c.data.objective = "span_corruption"  # 15% noise, mean span 3; 512 input and 114 target tokens.
  c.data.seq_len = 512
  c.data.eval_batches = 16

  c.optim.name = "adafactor"  # optax's, with the defaults T5 trained with (bigjax.config: adafactor_*).
  c.optim.learning_rate = ADAFACTOR_LR  # With the rsqrt schedule: 1 / sqrt(max(step, 10^4)).
  c.optim.warmup_steps = RSQRT_WARMUP
  c.optim.weight_decay = 0.0  # T5 has none.
  c.optim.clip_norm = 0.0  # Adafactor clips each update's RMS (optim.adafactor_clipping = 1.0) instead.
  # Attention kernels are [d_model, heads, d_kv] here; factoring their two largest axes needs d_kv (64) >= this.
  c.optim.adafactor_min_dim_to_factor = 64

  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000

  c.mesh.shape = (-1, 1, 1)  # Data parallel: 223M params fit whole on every chip.

  if budget == "baseline":
    c.data.batch_size = 128
    c.train.steps = 2**19
  else:
    c.data.batch_size = 2048
    c.train.steps = 1_000_000
    # 256 rows per chip of a v4-16: remat full (only each block's input kept) brings the step from
    # ~170 GiB to under 20 GiB a chip (bigjax plan).
    c.model.scan_layers = True
    c.model.remat_policy = "full"
  c.optim.schedule = "rsqrt"
  c.optim.end_lr_ratio = (RSQRT_WARMUP / c.train.steps) ** 0.5  # Where T5's rsqrt schedule ends (not used by it).
  return c
