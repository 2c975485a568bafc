r"""LoRA fine-tuning of a Llama-line checkpoint on a JSONL text-to-text task (input field → target field).

  bigjax train --config experiments/llama_lora.py --workdir workdirs/lora \
      --config.train.init_from=path/to/hf_model_dir --config.model.preset=llama3_2_1b \
      --config.data.source='path/to/task/*.jsonl' --config.data.tokenizer=path/to/tokenizer.model
  bigjax convert --workdir workdirs/lora --to_hf out/lora_merged     # adapters merged: from_pretrained loads it

`train.init_from` takes the Hugging Face directory (converted on load) or a `bigjax convert --from_hf`
workdir; the model section must describe the same architecture (a preset, or the fields). Only the
adapters train (rank 16 on every attention and MLP projection here); the base weights stay bitwise as
loaded and the optimizer keeps state for the adapters only. The tokenizer must be a SentencePiece model
(Llama 2, Mistral and Gemma ship one as tokenizer.model; Llama 3's and Qwen's BPE tokenizers are not
SentencePiece and are not read by bigjax's pipeline yet).

`get_config("8b")` is the Llama-3.1-8B run to plan on accelerators (bfloat16 weights and compute, 4,096
tokens per row, remat full, scanned):

  bigjax plan --config experiments/llama_lora.py:8b --topology v5e-8 --mesh 1,8,1
  bigjax plan --config experiments/llama_lora.py:8b --topology 8xH100 --mesh 1,8,1
"""

from bigjax import config as config_lib


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.preset = "llama3_2_1b"
  c.data.objective = "text_to_text"
  c.data.source = ""  # Given on the command line: a JSONL glob with train / validation in the file names.
  c.data.text_key = "input"
  c.data.target_key = "target"
  c.data.seq_len = 512
  c.data.batch_size = 16
  c.train.lora_rank = 16
  c.train.lora_alpha = 32.0
  c.train.lora_targets = "attention|mlp"
  c.train.lora_dropout = 0.05
  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.0
  c.train.steps = 1000
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.train.num_samples = 0
  if arg == "8b":
    c.model.preset = "llama3_1_8b"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat_policy = "full"
    c.data.seq_len = 4096
    c.data.batch_size = 8
  return c
