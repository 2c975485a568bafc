"""Hugging Face ⇄ bigjax weights. Reads and writes `config.json` + safetensors; torch is not needed.

  cfg, params = bigjax.convert.from_hf("path/to/hf_model_dir")
  bigjax.convert.to_hf(cfg, params, "path/to/out_dir")   # transformers' from_pretrained loads it

One module per Hugging Face architecture family, each with `config_from_hf(hf) -> ModelConfig`,
`params_from_hf(cfg, tensors, hf_config) -> params` and `to_hf(cfg, params) -> (hf_config, tensors)`. Every tensor
of a checkpoint must be used and every bigjax parameter filled: anything else is an error that names the
tensor (never a silent partial load). Params come out unscanned; `bigjax.models.to_layout` converts.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from etils import epath
import numpy as np

from bigjax.config import ConfigError, ModelConfig
from bigjax.convert import bert, gpt2, llama, t5
from bigjax.convert.common import Tensors

# model_type in config.json → the module that converts it.
_READERS = {"gpt2": gpt2, "bert": bert, "t5": t5, **{kind: llama for kind in llama.ARCHITECTURES}}


def read_safetensors(path: epath.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise ConfigError(f"{path}: no *.safetensors file (save the model with safe_serialization=True)")
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    tensors.update(load(f.read_bytes()))
  return tensors


def from_hf(path: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) from a Hugging Face model directory (config.json + *.safetensors)."""
  root = epath.Path(path)
  if not (root / "config.json").exists():
    raise ConfigError(f"{path}: not a Hugging Face model directory (no config.json)")
  hf = json.loads((root / "config.json").read_text())
  model_type = hf.get("model_type")
  if model_type not in _READERS:
    raise ConfigError(f"{path}: model_type={model_type!r} is not supported; supported: "
                      f"{', '.join(map(repr, _READERS))}")
  family = _READERS[model_type]
  cfg = family.config_from_hf(hf)
  tensors = Tensors(read_safetensors(root), model_type)
  params = family.params_from_hf(cfg, tensors, hf)
  tensors.check_all_used()
  return cfg, params


def _writer(cfg: ModelConfig) -> Callable[[ModelConfig, dict], tuple[dict[str, Any], dict[str, np.ndarray]]]:
  if cfg.family == "encoder":
    return bert.to_hf
  if cfg.family == "encoder_decoder":
    return t5.to_hf
  if cfg.positions == "rotary":
    return llama.to_hf
  return gpt2.to_hf


def to_hf(cfg: ModelConfig, params: dict, out_dir: str) -> None:
  """Writes `out_dir/config.json` and `out_dir/model.safetensors` that `transformers` loads."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  from bigjax import models  # pylint: disable=g-import-not-at-top
  params = models.unscan_params(jax_to_numpy(params))
  hf, tensors = _writer(cfg)(cfg, params)
  tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()}
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
  (out / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))


def jax_to_numpy(tree):
  import jax  # pylint: disable=g-import-not-at-top
  from bigjax import partitioning  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), partitioning.unbox(tree))


# ------------------------------------------------------------------------------------ workdirs

def to_workdir(cfg: ModelConfig, params: dict, workdir: str, source: str) -> None:
  """Writes `params` as a bigjax workdir that `train.init_from`, `bigjax decode` and `bigjax convert
  --to_hf` read: `config.json` (a run config whose model section is `cfg`) and a params-only checkpoint."""
  from bigjax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from bigjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  out = workdir_lib.path(workdir)
  if (out / "config.json").exists() or (out / "checkpoints").exists():
    raise ConfigError(f"--workdir={workdir} already holds a run; convert into a new directory")
  out.mkdir(parents=True, exist_ok=True)
  config = config_lib.default_config()
  config.model.update(cfg.to_dict())
  record = json.loads(config.to_json_best_effort())
  record["converted_from"] = source
  record["special_ids"] = hf_special_ids(source)
  ckpt = ckpt_lib.Checkpointer(str(out), async_save=False)
  ckpt.save(0, {"params": params}, {"step": 0, "converted_from": source})
  ckpt.wait()
  ckpt.close()
  workdir_lib.write_json(out / workdir_lib.CONFIG, record)


def hf_special_ids(path: str) -> dict[str, int | None]:
  """EOS, pad and decoder-start ids a Hugging Face config.json names (None where it names none or a list)."""
  cfg_path = epath.Path(path) / "config.json"
  hf = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
  pick = lambda k: hf.get(k) if isinstance(hf.get(k), int) else None
  return {"eos": pick("eos_token_id"), "pad": pick("pad_token_id"), "decoder_start": pick("decoder_start_token_id")}


def from_workdir(workdir: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) of a workdir's latest checkpoint (a training run or a converted model)."""
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  params, _, cfg, _, _, _ = workdir_lib.latest_params(workdir)
  return cfg, params
