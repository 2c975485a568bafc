r"""Hugging Face parity: worst |Δlogit| between transformers models and their bigjax conversions.

  python experiments/benchmarks/parity.py

For each family a random-weight transformers model (norm weights and biases perturbed, so every tensor
matters) is saved, converted with `bigjax.convert.from_hf`, and both compute logits on a batch with
right padding; the figure is the largest |difference| over real (unpadded) positions, in fp32. Then
`to_hf` writes the converted params back and transformers' logits from that directory are compared
with the original's (`round_trip`). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import json
import os
import tempfile

import jax.numpy as jnp
import numpy as np


def main():
  import torch  # pylint: disable=g-import-not-at-top
  import transformers as tf  # pylint: disable=g-import-not-at-top
  from bigjax import convert, models  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  cases = {
      "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(n_embd=96, n_head=3, n_layer=4, vocab_size=300, n_positions=64,
                                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
      "bert_mlm": (tf.BertForMaskedLM, tf.BertConfig(vocab_size=300, hidden_size=96, num_hidden_layers=4,
                                                     num_attention_heads=3, intermediate_size=200,
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
      "bert_classifier": (tf.BertForSequenceClassification, tf.BertConfig(
          vocab_size=300, hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=200,
          num_labels=5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
      "t5_v1_0": (tf.T5ForConditionalGeneration, tf.T5Config(vocab_size=300, d_model=96, d_kv=24, d_ff=200,
                                                             num_layers=3, num_decoder_layers=4, num_heads=5,
                                                             dropout_rate=0.0)),
      "t5_v1_1": (tf.T5ForConditionalGeneration, tf.T5Config(vocab_size=300, d_model=96, d_kv=16, d_ff=200,
                                                             num_layers=3, num_heads=4, dropout_rate=0.0,
                                                             feed_forward_proj="gated-gelu",
                                                             tie_word_embeddings=False)),
      "llama": (tf.LlamaForCausalLM, tf.LlamaConfig(vocab_size=300, hidden_size=96, intermediate_size=200,
                                                    num_hidden_layers=4, num_attention_heads=3,
                                                    num_key_value_heads=3, max_position_embeddings=64)),
      "llama3_gqa": (tf.LlamaForCausalLM, tf.LlamaConfig(
          vocab_size=300, hidden_size=96, intermediate_size=200, num_hidden_layers=4, num_attention_heads=6,
          num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
          rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
      "mistral": (tf.MistralForCausalLM, tf.MistralConfig(
          vocab_size=300, hidden_size=96, intermediate_size=200, num_hidden_layers=4, num_attention_heads=6,
          num_key_value_heads=2, head_dim=24, max_position_embeddings=64, sliding_window=16)),
      "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config(
          vocab_size=300, hidden_size=96, intermediate_size=200, num_hidden_layers=4, num_attention_heads=9,
          num_key_value_heads=3, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True)),
      "qwen3": (tf.Qwen3ForCausalLM, tf.Qwen3Config(
          vocab_size=300, hidden_size=96, intermediate_size=200, num_hidden_layers=4, num_attention_heads=6,
          num_key_value_heads=2, head_dim=32, max_position_embeddings=64)),
      "gemma": (tf.GemmaForCausalLM, tf.GemmaConfig(
          vocab_size=300, hidden_size=96, intermediate_size=200, num_hidden_layers=4, num_attention_heads=3,
          num_key_value_heads=1, head_dim=64, max_position_embeddings=64)),
  }
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 300, (4, 40))
  mask = np.ones((4, 40), np.int64)
  mask[1, 30:] = 0
  mask[2, 7:] = 0
  dec = rng.integers(3, 300, (4, 24))
  dec_mask = np.ones((4, 24), np.int64)
  dec_mask[3, 10:] = 0
  results = {}
  for name, (cls, hf_cfg) in cases.items():
    model = cls(hf_cfg).eval()
    with torch.no_grad():
      for pname, p in model.named_parameters():
        if "norm" in pname.lower() or pname.endswith("bias"):
          p.add_(0.1 * torch.randn_like(p))
      if name == "t5_v1_1":  # A real v1.1 output layer: not the shared embedding.
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    t5 = name.startswith("t5")
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if t5:
      kw.update(decoder_input_ids=torch.tensor(dec), decoder_attention_mask=torch.tensor(dec_mask))
    real = (dec_mask if t5 else mask).astype(bool)
    with tempfile.TemporaryDirectory() as tmp:
      model.save_pretrained(os.path.join(tmp, "hf"))
      cfg, params = convert.from_hf(os.path.join(tmp, "hf"))
      module = models.build(cfg)
      args = (jnp.asarray(ids), jnp.asarray(dec)) if t5 else (jnp.asarray(ids),)
      extra = {"decoder_attention_mask": jnp.asarray(dec_mask)} if t5 else {}
      ours = np.asarray(module.apply({"params": params}, *args, attention_mask=jnp.asarray(mask), **extra))
      with torch.no_grad():
        theirs = model(**kw).logits.numpy()
        convert.to_hf(cfg, params, os.path.join(tmp, "back"))
        again = cls.from_pretrained(os.path.join(tmp, "back")).eval()(**kw).logits.numpy()
    pick = (lambda x: x) if name == "bert_classifier" else (lambda x: x[real])
    results[f"{name}_max_abs_dlogit"] = float(np.max(np.abs(pick(ours) - pick(theirs))))
    results[f"{name}_round_trip_max_abs_dlogit"] = float(np.max(np.abs(pick(again) - pick(theirs))))
    results[f"{name}_logit_scale"] = float(np.std(pick(theirs)))
    print(f"{name:16s} worst |Δlogit| {results[f'{name}_max_abs_dlogit']:.2e} (logit std "
          f"{results[f'{name}_logit_scale']:.2f}), round trip {results[f'{name}_round_trip_max_abs_dlogit']:.2e}",
          flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
