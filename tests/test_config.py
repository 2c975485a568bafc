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
    ("model.rope_type", "dynamic", r"model.rope_type='dynamic': allowed values are 'default', 'linear', 'llama3', 'yarn'"),
    ("model.rope_type", "linear", r"model.rope_type='linear' scales rotary positions; model.positions is 'learned'"),
    ("model.num_kv_heads", 3, r"model.num_kv_heads=3 must divide model.num_heads=4"),
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


def test_explicit_value_beats_the_preset_even_when_it_is_the_default():
  c = config_lib.default_config()
  c.model.preset = "t5_base"  # The preset sets use_bias=False; True is ModelConfig's default.
  c.model.use_bias = True
  c.model.d_model = 256  # ModelConfig's default too; the preset's is 768.
  m = config_lib.model_config(c)
  assert (m.use_bias, m.d_model, m.num_layers, m.activation, m.positions) == (True, 256, 12, "relu", "relative")
  assert c.model.num_layers is None  # Unset until resolved.
  c.lock()  # As bigjax.main loads it.
  assert config_lib.validate(c) == m
  # Written back: config.json and every reader of config.model.X see the model that is built.
  assert (c.model.use_bias, c.model.d_model, c.model.num_layers, c.model.preset) == (True, 256, 12, "")
  assert None not in c.model.to_dict().values()
  before = c.to_json_best_effort()
  assert config_lib.validate(c) == m and c.to_json_best_effort() == before  # Idempotent.


def test_explicit_value_on_the_command_line_beats_the_preset():
  """Through ml_collections' flag parsing, as `bigjax train --config FILE --config.model.X=V` does."""
  import os
  from absl import flags
  from ml_collections import config_flags
  path = os.path.join(os.path.dirname(__file__), "..", "experiments", "t5_span.py")  # Preset t5_v1_1_small.
  argv = ["bigjax", f"--config={path}", "--config.model.use_bias=True", "--config.model.init_std=0.02",
          "--config.model.num_layers=4"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  m = config_lib.validate(fv.config)
  assert (m.use_bias, m.init_std, m.num_layers, m.d_model, m.gated_mlp) == (True, 0.02, 4, 128, True)
  assert fv.config.model.use_bias is True and fv.config.model.init_std == 0.02


def test_saved_config_json_resolves_to_the_model_it_trained():
  import json
  import ml_collections
  # A config.json from before explicit values won: every field filled, those equal to the default
  # (activation, use_bias, ...) meaning the preset's.
  old = {"model": {**config_lib.ModelConfig().to_dict(), "preset": "t5_v1_1_small", "d_model": 128,
                   "num_layers": 3, "vocab_size": 4224}, "train": {"steps": 600}}
  want = config_lib.preset("t5_v1_1_small", d_model=128, num_layers=3, vocab_size=4224)
  assert config_lib.model_config(ml_collections.ConfigDict(old)) == want
  assert config_lib.resolve_saved(old)["model"] == {**want.to_dict(), "preset": ""}
  assert config_lib.resolve_saved(old)["optim"] == {"decay_steps": 600}  # It decayed over its train.steps.
  assert old["model"]["use_bias"] is True  # resolve_saved copies.
  # What a run writes now reads back as the same model, and a run of today's code as well.
  c = config_lib.default_config()
  c.model.preset = "t5_v1_1_small"
  c.model.use_bias = True
  m = config_lib.validate(c)
  saved = json.loads(c.to_json_best_effort())
  assert config_lib.model_config(ml_collections.ConfigDict(saved)) == m
  assert config_lib.resolve_saved(saved)["model"] == saved["model"]
  # A config.json that predates a field: the field is added (the config may be locked).
  del old["model"]["remat_policy"]
  loaded = ml_collections.ConfigDict(old)
  loaded.lock()
  assert config_lib.resolve(loaded) == want and loaded.model.remat_policy == "none"


def test_decay_steps_horizon():
  c = config_lib.default_config()
  c.train.steps = 2000
  assert config_lib.resolve_decay_steps(c, None) == 2000  # A first run: its own train.steps.
  assert config_lib.resolve_decay_steps(c, {"optim": {"decay_steps": 520}, "train": {"steps": 520}}) == 520
  assert config_lib.resolve_decay_steps(c, {"optim": {"learning_rate": 1e-3}, "train": {"steps": 600}}) == 600
  assert config_lib.resolve_decay_steps(c, {}) == 2000
  c.optim.decay_steps = 1500  # Explicit: wins over what the workdir pinned.
  assert config_lib.resolve_decay_steps(c, {"optim": {"decay_steps": 520}, "train": {"steps": 520}}) == 1500
  c.optim.decay_steps = -1
  with pytest.raises(ConfigError, match=r"optim.decay_steps=-1: must be an integer >= 0"):
    config_lib.validate(c)


def test_deep_presets_are_scanned_unless_told_otherwise():
  """Presets of SCAN_FROM_LAYERS layers or more run scanned (compile time; experiments/benchmarks/compile.py);
  an explicit model.scan_layers=False wins, and a config.json of the format before explicit values won
  keeps the layout it trained with."""
  import ml_collections
  assert config_lib.SCAN_FROM_LAYERS == 24
  for name, fields in config_lib.PRESETS.items():
    assert config_lib.preset(name).scan_layers == (fields["num_layers"] >= 24), name
  c = config_lib.default_config()
  c.model.preset = "gpt2_medium"
  assert config_lib.model_config(c).scan_layers
  c.model.scan_layers = False
  assert not config_lib.model_config(c).scan_layers
  old = {"model": {**config_lib.ModelConfig().to_dict(), "preset": "bert_large", "vocab_size": 30522}}
  assert not config_lib.model_config(ml_collections.ConfigDict(old)).scan_layers
