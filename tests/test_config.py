"""Config validation: bad values stop with a message naming the setting."""

import pytest

from bigjax import config as config_lib
from bigjax.config import ConfigError


def test_defaults_and_quickstart_validate():
  import importlib.util, os
  config_lib.validate(config_lib.default_config())
  path = os.path.join(os.path.dirname(__file__), "..", "experiments", "quickstart.py")
  spec = importlib.util.spec_from_file_location("quickstart", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  m = config_lib.validate(mod.get_config())
  assert m.family == "decoder"


@pytest.mark.parametrize("key,value,match", [
    ("data.seq_len", 4096, r"data.seq_len=4096 is longer than model.max_len=1024"),
    ("model.family", "rnn", r"model.family='rnn': allowed values are 'encoder', 'decoder', 'encoder_decoder'"),
    ("model.num_heads", 3, r"model.d_model=256 is not divisible by model.num_heads=3"),
    ("model.dtype", "float8", r"model.dtype='float8'"),
    ("train.steps", 0, r"train.steps=0: must be a positive integer"),
    ("mesh.shape", (-1, -1, 1), r"mesh.shape=\(-1, -1, 1\)"),
    ("model.preset", "gpt5", r"model.preset='gpt5' is not a preset; known: gpt2_small"),
    ("optim.end_lr_ratio", 2.0, r"optim.end_lr_ratio=2.0"),
])
def test_bad_values_name_the_setting(key, value, match):
  c = config_lib.default_config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)


def test_preset_with_explicit_overrides():
  c = config_lib.default_config()
  c.model.preset = "gpt2_small"
  c.model.num_layers = 2
  m = config_lib.model_config(c)
  assert (m.vocab_size, m.d_model, m.num_heads, m.num_layers, m.max_len) == (50257, 768, 12, 2, 1024)
  with pytest.raises(ConfigError, match="model.bogus is not a model setting"):
    config_lib.ModelConfig.from_dict({"bogus": 1})
