"""Knowledge distillation (Hinton et al. 2015): a teacher's softened predictions inside the student's step.

`train.teacher` (a bigjax workdir, LoRA merged, or a Hugging Face directory) gives a frozen model of the
same family and output vocabulary (or labels) as the student, of any shape. Each train step runs it on
the same batch, without gradients, its params sharded by the same logical rules as the student's
(`train.teacher_dtype` casts them, e.g. "bfloat16" to halve their memory), and the loss becomes

    alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · cross-entropy

per target token, summed with the objective's weights (masked LM: the chosen tokens; span corruption: the
targets; classification: one per row) over the batch's weight total: `train.distill_alpha`,
`train.distill_temperature` (T). The T² keeps the soft term's gradients on the scale of the hard term's.
The logged `loss` is that objective; `xent` and `kl` its two parts; eval reports plain cross-entropy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bigjax.config import ConfigError, ModelConfig


class Teacher(NamedTuple):
  cfg: ModelConfig
  module: Any
  params: Any  # On the mesh, sharded by the rules.
  alpha: float
  temperature: float
  source: str


def kl_and_xent(student_logits, teacher_logits, targets, weights, temperature: float):
  """(sum over weighted tokens of KL(teacher_T ‖ student_T), of cross-entropy), float32."""
  import optax  # pylint: disable=g-import-not-at-top
  s = student_logits.astype(jnp.float32)
  t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  log_q = jax.nn.log_softmax(s / temperature, axis=-1)
  log_p = jax.nn.log_softmax(t / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  xent = optax.softmax_cross_entropy_with_integer_labels(s, targets)
  return jnp.sum(kl * weights), jnp.sum(xent * weights)


def _check_same_outputs(student: ModelConfig, teacher: ModelConfig, source: str) -> None:
  if teacher.family != student.family:
    raise ConfigError(f"train.teacher={source!r} is a model.family={teacher.family!r} model; the student is "
                      f"{student.family!r}: distillation needs the same family (the same kind of outputs)")
  if student.family == "encoder" and teacher.encoder_head != student.encoder_head:
    raise ConfigError(f"train.teacher={source!r} has encoder_head={teacher.encoder_head!r}, the student "
                      f"{student.encoder_head!r}")
  if student.family == "encoder" and student.encoder_head == "classifier":
    if teacher.num_labels != student.num_labels:
      raise ConfigError(f"train.teacher={source!r} has model.num_labels={teacher.num_labels}, the student "
                        f"{student.num_labels}: they must predict the same labels")
  elif teacher.vocab_size != student.vocab_size:
    raise ConfigError(f"train.teacher={source!r} has model.vocab_size={teacher.vocab_size}, the student "
                      f"{student.vocab_size}: teacher and student must share the tokenizer and vocabulary")


def load(config, student: ModelConfig, mesh, rules) -> Teacher | None:
  """The run's teacher (None without `train.teacher`), checked against the student and placed on `mesh`."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from bigjax import convert, decode, models, partitioning, steps  # pylint: disable=g-import-not-at-top
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  source = config.train.get("teacher", "")
  if not source:
    return None
  alpha, temperature = float(config.train.distill_alpha), float(config.train.distill_temperature)
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f"train.distill_alpha={alpha}: must be in [0, 1]")
  if temperature <= 0:
    raise ConfigError(f"train.distill_temperature={temperature}: must be > 0")
  dtype = config.train.get("teacher_dtype", "")
  if dtype not in ("", "float32", "bfloat16", "float16"):
    raise ConfigError(f"train.teacher_dtype={dtype!r}: allowed values are '' (the teacher's own), 'float32', "
                      "'bfloat16', 'float16'")
  saved = workdir_lib.read_config(epath.Path(source), "train.teacher")
  if saved is None:
    raise ConfigError(f"train.teacher={source!r}: neither a bigjax workdir nor a Hugging Face model directory "
                      "(no config.json)")
  if "model_type" in saved:
    cfg, params = convert.from_hf(source)
  else:
    theirs = workdir_lib.tokenizer_name(saved)
    if theirs and theirs != config.data.tokenizer:
      raise ConfigError(f"train.teacher={source!r} was trained with data.tokenizer={theirs!r}, but this run uses "
                        f"data.tokenizer={config.data.tokenizer!r}: teacher and student must share the tokenizer")
    restored = workdir_lib.latest_params(source, setting="train.teacher")
    cfg, params = restored.model_config, restored.params
  _check_same_outputs(student, cfg, source)
  if dtype:
    cfg, params = decode.in_dtype(cfg, params, dtype)
  cfg = dataclasses.replace(cfg, dropout_rate=0.0)  # The teacher never drops out.
  rules, _ = partitioning.fit_kv_heads(rules, cfg, mesh)
  shardings = steps.abstract_state(cfg, mesh, rules).shardings.params
  params = jax.tree_util.tree_map(lambda x, s: jax.device_put(jnp.asarray(x), s), params, shardings)
  return Teacher(cfg, models.build(cfg), params, alpha, temperature, source)
