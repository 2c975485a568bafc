r"""BERT-base pre-training as in Devlin et al. 2018 ("BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", arXiv:1810.04805, Appendix A.2).

Run (from the repo root; the tokenizer first, then the two phases of the paper):

  bigjax tokenizer train --input tfds:wikipedia/20230601.en --vocab_size 30522 --model_type bpe \
      --special_pieces bert --out tokenizers/wiki_en_bpe30k.model
  bigjax train --config experiments/papers/bert_base.py --workdir workdirs/bert_base
  bigjax train --config experiments/papers/bert_base.py:phase2 --workdir workdirs/bert_base_phase2

Plan the memory first (no accelerator needed, and from the config alone: the tokenizer it names need
not exist yet, the planner takes its shapes from model.vocab_size):

  bigjax plan --config experiments/papers/bert_base.py --topology v4-8 --mesh 4,1,1
  bigjax plan --config experiments/papers/bert_base.py:phase2 --topology v4-8 --mesh 4,1,1

The paper's hyper-parameters (A.2) and this config:

| setting | paper | here |
| --- | --- | --- |
| model | 12 layers, d_model 768, 12 heads, d_ff 3072, GELU, post-LN, 110M params | preset `bert_base` (same) |
| vocabulary | 30,522 WordPiece (uncased) | 30,522 SentencePiece BPE pieces, [CLS] [SEP] [MASK] among them |
| data | BooksCorpus (800M words) + English Wikipedia (2,500M words) | `tfds:wikipedia/20230601.en` only |
| objective | MLM 15% (80% [MASK], 10% random, 10% kept) + next-sentence prediction | MLM 15% (80/10/10), no NSP |
| batch | 256 sequences | 256 sequences |
| length | 128 tokens for 90% of the steps, then 512 for 10% | phase 1: 128 (900k steps), `:phase2`: 512 (100k steps) |
| steps | 1,000,000 | 900,000 + 100,000 |
| optimizer | Adam, lr 1e-4, beta1 0.9, beta2 0.999, L2 weight decay 0.01 (decoupled in its code) | AdamW 1e-4, 0.9, 0.999, weight decay 0.01 |
| epsilon, clipping | 1e-6, global norm 1.0 (google-research/bert optimization.py) | 1e-6, 1.0 |
| schedule | 10k warmup steps, then linear decay to 0 at step 1M | 10k warmup, then linear (`optim.schedule="linear"`) to the paper's values at each phase end |
| dropout | 0.1 on all layers | 0.1 (embeddings, attention probabilities, sublayer outputs) |

What bigjax does differently, and why:

* Schedule: linear in two pieces, one per phase. Each phase ends where the paper's linear schedule is at
  that step: phase 1 decays to 1e-5 at step 900k (the paper's lr there: 1e-4 x (1 - 900k/1M)); phase 2
  starts at 1e-5 and decays to 0 at its step 100k. The paper's line starts its decay at step 0 under the
  warmup (0.99e-4 at step 10k), bigjax's at the end of warmup (1e-4): at most 1e-6 apart.
* Two runs, not one: `data.seq_len` is fixed for a workdir, so phase 2 is a new workdir that starts from
  phase 1's params (`train.init_from`). Adam's moments and the step count start afresh there (the
  paper does not say whether its 512-token phase kept them); phase 2 has no warmup of its own, only
  Adam's bias correction.
* No next-sentence prediction and no sentence pairs: each example is [CLS] + 126 (phase 2: 510)
  consecutive tokens of the stream + [SEP], segment ids all 0. (RoBERTa, Liu et al. 2019, found that
  dropping NSP on contiguous text matches or beats it.)
* Data: BooksCorpus is not in TFDS (nor freely redistributable), so the corpus is Wikipedia alone:
  no fiction, and none of the paper's 800M BooksCorpus words (the 2023 dump is itself larger than the
  2018 one the paper used). `tfds:wikipedia/20230601.en` has one split, `train`, and bigjax refuses TFDS slices such as
  `train[99%:]`, so the eval split is `train` too: its eval loss is not held out.
* Tokenizer: SentencePiece BPE trained on the same Wikipedia, cased (identity normalisation, byte
  fallback), instead of the uncased WordPiece vocabulary; same size, so the same embedding table.
* Weight decay: never applied to embeddings here (BERT's AdamWeightDecayOptimizer decays them, and
  excludes only LayerNorm and biases); BERT's Adam has no bias correction, optax's has.
* Activations in bfloat16, params and optimizer state in float32 (the usual TPU setting; the paper does
  not say).

Published target (BERT-base, Table 1, GLUE test server): average 79.6 (WNLI excluded), MNLI-m/mm
84.6/83.4, QQP 71.2, QNLI 90.5, SST-2 93.5, CoLA 52.1, STS-B 85.8, MRPC 88.9, RTE 66.4; SQuAD v1.1 dev
(Table 2) EM 80.8, F1 88.5. Those need fine-tuning after pre-training (not in this file).

Planner (measured with `bigjax plan` as above, estimate only):

  phase 1 (128, remat none):
    bigjax plan: encoder, 109,514,298 params; mesh (data 4, fsdp 1, tensor 1) on 4 devices of 32.00 GiB (v4-8: 4 TPU v4 chips (8 TensorCores), 32.00 GiB HBM each)
      total 9.13 GiB of 32.00 GiB; fits: 22.87 GiB to spare (71% of the device)
  phase 2 (512, scan_layers, remat dots_no_batch):
    bigjax plan: encoder, 109,514,298 params; mesh (data 4, fsdp 1, tensor 1) on 4 devices of 32.00 GiB (v4-8: 4 TPU v4 chips (8 TensorCores), 32.00 GiB HBM each)
      total 17.01 GiB of 32.00 GiB; fits: 14.99 GiB to spare (47% of the device)
"""

from bigjax import config as config_lib

PAPER_STEPS = 1_000_000  # Devlin et al.: 1M steps of 256 sequences.
PHASE1_STEPS = 900_000  # 90% of the steps at length 128 ...
PHASE2_STEPS = PAPER_STEPS - PHASE1_STEPS  # ... and the last 10% at 512.
PEAK_LR = 1e-4
# The paper's linear decay (to 0 at 1M steps) at the end of phase 1: 1e-4 x (1 - 0.9) = 1e-5.
PHASE1_END_LR = PEAK_LR * PHASE2_STEPS / PAPER_STEPS


def get_config(arg=None):
  """`arg` None or "phase1": 900k steps at length 128. "phase2": 100k steps at 512 from phase 1's params."""
  phase = arg or "phase1"
  if phase not in ("phase1", "phase2"):
    raise ValueError(f"bert_base.py: unknown arg {arg!r}; use phase1 (default) or phase2")
  c = config_lib.default_config()
  c.model.preset = "bert_base"  # 12 x 768, 12 heads, d_ff 3072, post-LN, GELU (erf), segment embeddings.
  c.model.vocab_size = 30522  # The paper's vocabulary size (the preset's too).
  c.model.max_len = 512  # Learned positions for 512 tokens in both phases (phase 1 uses the first 128).
  c.model.dropout_rate = 0.1
  c.model.dtype = "bfloat16"  # Activations; params and optimizer state stay float32.

  c.data.source = "tfds:wikipedia/20230601.en"  # BooksCorpus is not in TFDS: Wikipedia alone.
  c.data.text_key = "text"
  c.data.train_split = "train"
  c.data.eval_split = "train"  # Wikipedia has no other split (not held out; see the docstring).
  c.data.tokenizer = "wiki_en_bpe30k.model"  # Made by the first command above (tokenizers/).
  c.data.objective = "masked_lm"  # 15% chosen: 80% [MASK], 10% random, 10% kept.
  c.data.batch_size = 256
  c.data.eval_batches = 16

  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-6
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0

  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000
  c.train.num_samples = 0  # An encoder writes no samples.

  c.mesh.shape = (-1, 1, 1)  # Data parallel: 110M params fit whole on every chip.

  c.optim.schedule = "linear"
  if phase == "phase1":
    c.data.seq_len = 128
    c.optim.learning_rate = PEAK_LR
    c.optim.warmup_steps = 10_000
    c.optim.end_lr_ratio = PHASE1_END_LR / PEAK_LR  # 0.1: where the paper's linear decay is at 900k.
    c.train.steps = PHASE1_STEPS
  else:
    c.data.seq_len = 512
    c.optim.learning_rate = PHASE1_END_LR  # Picks up where phase 1 ended ...
    c.optim.warmup_steps = 0
    c.optim.end_lr_ratio = 0.0  # ... and decays to 0 at the paper's step 1M.
    c.train.steps = PHASE2_STEPS
    c.train.init_from = "workdirs/bert_base"  # Phase 1's workdir (params only; a fresh optimizer).
    # 64 rows x 512 positions per chip of a v4-8 keep 28 GiB of activations without remat (bigjax
    # plan); recomputing attention in the backward pass brings the step to 17 GiB.
    c.model.scan_layers = True  # init_from converts phase 1's unscanned params on load.
    c.model.remat_policy = "dots_no_batch"
  return c
