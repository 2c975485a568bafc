r"""GPT-2 small (117M as published, 124M counted exactly) pre-training, after Radford et al. 2019
("Language Models are Unsupervised Multitask Learners"), with the optimizer settings the paper leaves
out taken from GPT-3 (Brown et al. 2020, Table 2.1 and Appendix B) and nanoGPT's GPT-2 reproduction.

Run (from the repo root; the tokenizer first):

  bigjax tokenizer train --input tfds:c4/webtextlike --vocab_size 50257 --model_type bpe \
      --out tokenizers/webtextlike_bpe50k.model
  bigjax train --config experiments/papers/gpt2_small.py --workdir workdirs/gpt2_small

Plan the memory first (no accelerator needed, and from the config alone: the tokenizer it names need
not exist yet, the planner takes its shapes from model.vocab_size):

  bigjax plan --config experiments/papers/gpt2_small.py --topology v4-32 --mesh 16,1,1

Hyper-parameters, and where each comes from:

| setting | value | source |
| --- | --- | --- |
| model | 12 layers, d_model 768, 12 heads, d_ff 3072, pre-LN + final LN, GELU, tied output, residual init / sqrt(2L) | GPT-2 paper Sec. 2.3, Table 2; preset `gpt2_small` |
| context, vocabulary | 1024 tokens, 50,257 byte-level BPE | GPT-2 paper Sec. 2.3 |
| batch | 512 sequences x 1024 = 524,288 tokens | GPT-2 paper Sec. 2.3 ("a larger batchsize of 512") |
| data | WebText, 40 GB, 8M documents (not released) | GPT-2 paper Sec. 2.1 |
| learning rate | 6e-4 peak | not in the GPT-2 paper (tuned per model, value not given); GPT-3 Table 2.1 (125M model, batch 0.5M tokens); nanoGPT's default |
| schedule | warmup 2,000 steps, cosine to 6e-5 at step 600,000 | nanoGPT (see below); GPT-3 App. B also ends at 10% |
| Adam | beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1, global-norm clip 1.0 | GPT-3 App. B; nanoGPT |
| dropout | 0.0 | nanoGPT's pre-training setting (neither paper states one) |
| steps | 600,000 (315B tokens) | nanoGPT; GPT-3 trained its 125M model on 300B tokens |

nanoGPT is `train.py` with `config/train_gpt2.py` (github.com/karpathy/nanoGPT): warmup_iters 2000,
lr_decay_iters = max_iters = 600000, min_lr 6e-5, batches of 12 x 1024 x 40 = 491,520 tokens. GPT-3's
App. B warms up over 375M tokens (~715 steps of this batch) and decays over 260B tokens, then holds 10%.

What bigjax does differently, and why:

* Data: WebText was never released, and OpenWebText (Gokaslan & Cohen 2019, the usual stand-in) is not
  in TFDS (the installed tensorflow_datasets 4.9.10 has no `openwebtext` builder). The one WebText-like
  corpus there is `c4/webtextlike`: the C4 pages whose URLs are in OpenWebText's Reddit-link list (T5
  paper Sec. 3.4; ~17 GB, under half of WebText's 40 GB), so that is the source here. To use
  OpenWebText, export it to text files and pass `--config.data.source='/data/openwebtext/*.txt'` (one
  document per file) with a tokenizer trained on it.
* Tokenizer: bigjax reads SentencePiece models, not GPT-2's byte-level BPE (vocab.json + merges.txt),
  so the vocabulary is a 50,257-piece SentencePiece BPE with byte fallback trained on the same data:
  byte-complete like GPT-2's, same embedding size, different pieces. Losses are therefore not comparable
  token for token with GPT-2's; compare bits per byte (logged at every eval).
* No batch-size ramp (GPT-3 App. B ramps it over the first 4-12B tokens; GPT-2 and nanoGPT do not).
* Activations in bfloat16, params and optimizer state in float32 (TPU practice; not stated).

Published target (GPT-2 paper Table 3, the 117M row, zero-shot): LAMBADA perplexity 35.13 and accuracy
45.99, CBT-CN 87.65, CBT-NE 83.4, WikiText-2 perplexity 29.41, PTB 65.85, enwik8 1.16 bits/byte,
text8 1.17 bits/char, WikiText-103 perplexity 37.50, 1BW 75.20. Cross-check of a reproduction
(nanoGPT README, on OpenWebText with GPT-2's tokenizer, so not this setup's numbers): OpenAI's 124M
checkpoint has validation loss 3.12 there; nanoGPT's 600k-step run reaches about 2.85.

Planner (measured with `bigjax plan` as above, estimate only):

  scan_layers, remat dots_no_batch:
    bigjax plan: decoder, 124,439,808 params; mesh (data 16, fsdp 1, tensor 1) on 16 devices of 32.00 GiB (v4-32: 16 TPU v4 chips (32 TensorCores), 32.00 GiB HBM each)
      total 22.74 GiB of 32.00 GiB; fits: 9.26 GiB to spare (29% of the device)
  (The smallest slice that fits with the whole batch in one step: on v4-16, 64 rows a chip, the step
  needs 43.5 GiB a chip with this remat and 34.5 GiB with remat full.)
"""

from bigjax import config as config_lib


def get_config(arg=None):
  del arg
  c = config_lib.default_config()
  c.model.preset = "gpt2_small"  # 12 x 768, 12 heads, d_ff 3072, learned positions, tied output.
  c.model.vocab_size = 50257  # GPT-2's vocabulary size (the preset's too).
  c.model.max_len = 1024
  c.model.dropout_rate = 0.0
  c.model.dtype = "bfloat16"  # Activations; params and optimizer state stay float32.
  # 32 rows x 1024 positions per chip of a v4-32: keeping every layer's attention scores would need
  # ~80 GiB a chip (bigjax plan); recomputing attention in the backward pass needs 23 GiB.
  c.model.scan_layers = True
  c.model.remat_policy = "dots_no_batch"

  c.data.source = "tfds:c4/webtextlike"  # WebText is not public; the closest TFDS corpus (see above).
  c.data.text_key = "text"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.tokenizer = "webtextlike_bpe50k.model"  # Made by the first command above (tokenizers/).
  c.data.objective = "causal_lm"
  c.data.seq_len = 1024
  c.data.batch_size = 512
  c.data.eval_batches = 16

  c.optim.learning_rate = 6e-4
  c.optim.warmup_steps = 2_000
  c.optim.end_lr_ratio = 0.1  # 6e-5 at the last step.
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.optim.clip_norm = 1.0

  c.train.steps = 600_000
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 5_000
  c.train.sample_len = 128

  c.mesh.shape = (-1, 1, 1)  # Data parallel: 124M params fit whole on every chip.
  return c
