r"""Distillation into a student of half the width, beside the same student trained without a teacher.

Run (from the repo root), after the teachers' own runs:

  bigjax train --config experiments/quickstart.py --workdir workdirs/quickstart        # the decoder teacher
  bigjax train --config experiments/distill.py:gpt --workdir workdirs/distill_gpt
  bigjax train --config experiments/distill.py:gpt_alone --workdir workdirs/distill_gpt_alone

  bigjax train --config experiments/bert_mlm.py --workdir workdirs/bert_mlm            # the encoder teacher
  bigjax train --config experiments/distill.py:bert --workdir workdirs/distill_bert
  bigjax train --config experiments/distill.py:bert_alone --workdir workdirs/distill_bert_alone

  bigjax train --config experiments/t5_span.py --workdir workdirs/t5_span              # the encoder-decoder teacher
  bigjax train --config experiments/distill.py:t5 --workdir workdirs/distill_t5
  bigjax train --config experiments/distill.py:t5_alone --workdir workdirs/distill_t5_alone

The student is its teacher's config with d_model and d_ff halved (128 → 64, 512 → 256 (T5: 384 → 192); the same depth,
heads, data, steps and schedule), distilled with alpha 0.5 at temperature 2 (BERT: 1) (`bigjax/distill.py`); the
`_alone` student trains on the same batches with cross-entropy only. `--config.train.teacher=DIR` points at
another teacher. Measured figures are in the README (Compression).
"""

import importlib.util
import os


def _sibling(name):
  """experiments/NAME.py as a module (experiment files are loaded by path, not as a package)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  family, _, alone = (arg or "gpt").partition("_")
  teachers = {"gpt": ("quickstart", "workdirs/quickstart"), "bert": ("bert_mlm", "workdirs/bert_mlm"),
              "t5": ("t5_span", "workdirs/t5_span")}
  if family not in teachers or alone not in ("", "alone"):
    raise ValueError(f"experiments/distill.py:{arg}: use gpt, bert or t5, each alone or not (e.g. t5_alone)")
  c = _sibling(teachers[family][0]).get_config()
  c.model.d_model //= 2
  c.model.d_ff //= 2
  if not alone:
    c.train.teacher = teachers[family][1]
    c.train.distill_alpha = 0.5
    # Measured on bert_mlm: T 2 gave no gain over the student alone (5.5895 vs 5.5842), T 1 did (5.5391).
    c.train.distill_temperature = 1.0 if family == "bert" else 2.0
  return c
