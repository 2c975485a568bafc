r"""GPT chain: causal-LM pre-training on standard-library code, then perplexity on held-out functions and
zero-/few-shot in-context classification of a function's package (no fine-tuning: each package name is
scored as the continuation of k labelled examples and the query, in `stdlib_packages`' own template from
`bigjax/data/tasks.py`: `<code>\n# package: <name>`), against two baselines.

Run (from the repo root), in this order:

  bigjax train --config experiments/gpt_code.py --workdir workdirs/gpt_code
  bigjax eval --workdir workdirs/gpt_code
  bigjax eval --workdir workdirs/gpt_code --fewshot stdlib_packages --fewshot_k 0,1,4 --max_examples 200
  bigjax baselines --config experiments/bert_packages.py:finetune --workdir workdirs/bert_packages_baselines

Data (embedded, no download; `bigjax/data/tasks.py`): the `code` of the 7,429 train-split documented
stdlib functions (`stdlib_functions`); eval on the 820 validation functions, never seen in training. The
few-shot task is `stdlib_packages` (20 packages); its demonstrations come from its train split.

Measured on a 2-core CPU (14 min 33 s in all, the test suite running beside it): eval perplexity 25.28
(1.53 bits per byte, 0.570 x the unigram loss) on the 820 held-out functions; in-context package
accuracy 0.025 / 0.035 / 0.045 with k = 0 / 1 / 4 on 200 sampled validation functions (majority class
0.150, chance 0.05, TF-IDF + logistic regression 0.868 on all 431): a model this small does not learn
in context.
"""

from bigjax import config as config_lib


def get_config(arg=None):
  del arg
  c = config_lib.default_config()
  c.model.vocab_size = 4096  # code_sp4k.model has 4096 ids.
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 2
  c.model.d_ff = 512
  c.model.max_len = 128
  c.data.source = "stdlib_functions"
  c.data.text_key = "code"
  c.data.tokenizer = "code_sp4k.model"
  c.data.seq_len = 128  # Few-shot prompts are up to 128 tokens too (each text cut to its share).
  c.data.batch_size = 16
  c.data.eval_batches = 0  # The whole validation split.
  c.optim.learning_rate = 5e-3
  c.optim.warmup_steps = 50
  c.train.steps = 1000
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.num_samples = 2
  return c
