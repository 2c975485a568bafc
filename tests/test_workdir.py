"""bigjax.workdir: one loader for a workdir's params (any layout, any shardings) that every command uses,
atomic writes, config.json checks."""

import json
import os

import chex
import flax
import jax
import pytest

from conftest import tiny_config
from bigjax import config as config_lib
from bigjax import partitioning
from bigjax import steps
from bigjax import train
from bigjax import workdir
from bigjax.config import ConfigError


def flat(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")


@pytest.fixture(scope="module")
def runs(text_file, tmp_path_factory):
  """The same tiny decoder trained unscanned and scanned (3 steps each)."""
  out = {}
  for scan in (False, True):
    w = str(tmp_path_factory.mktemp(f"scan{int(scan)}"))
    train.train(tiny_config(text_file, **{"train.steps": 3, "train.eval_every": 3, "train.num_samples": 0,
                                          "model.scan_layers": scan}), w)
    out[scan] = w
  return out


def _mcfg(text_file, **kw):
  return config_lib.validate(tiny_config(text_file, **kw))


def test_latest_params_in_either_layout_equal_the_checkpoint(text_file, runs):
  for saved_scan in (False, True):
    own = workdir.latest_params(runs[saved_scan])
    assert own.step == 3 and own.model_config.scan_layers == saved_scan and not own.fresh and not own.unused
    for want_scan in (False, True):
      got = workdir.latest_params(runs[saved_scan], _mcfg(text_file, **{"model.scan_layers": want_scan}))
      # The caller's layout: the tree and every shape of that model's params.
      chex.assert_trees_all_equal_shapes_and_dtypes(
          got.params, steps.abstract_params(_mcfg(text_file, **{"model.scan_layers": want_scan})))
      # Converting back gives exactly the stored arrays.
      from bigjax.models import layout
      back = layout.scan_params(jax.device_get(got.params)) if saved_scan and not want_scan else (
          layout.unscan_params(jax.device_get(got.params)) if want_scan and not saved_scan else got.params)
      chex.assert_trees_all_equal(jax.device_get(back), jax.device_get(own.params))


def test_latest_params_land_on_the_callers_shardings(text_file, runs):
  mcfg = _mcfg(text_file)
  mesh = partitioning.make_mesh((2, 2, 2), 0)
  abstract = steps.abstract_state(mcfg, mesh, partitioning.RULES)
  for saved_scan in (False, True):  # Straight into the shardings, or converted and then placed.
    got = workdir.latest_params(runs[saved_scan], mcfg, abstract.shardings.params)
    for leaf, sh in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(abstract.shardings.params)):
      assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)
  one = workdir.latest_params(runs[False], mcfg)
  assert all(len(x.devices()) == 1 for x in jax.tree_util.tree_leaves(one.params))


def test_subset_for_a_new_head_and_errors(text_file, runs, tmp_path):
  # A model with another vocabulary: the embedding is named and both shapes given.
  with pytest.raises(ConfigError, match=r"token_embed/embedding of shape \(264, 32\).*has \(300, 32\)"):
    workdir.latest_params(runs[False], _mcfg(text_file, **{"model.vocab_size": 300}))
  # One layer more: strictly an error; as a subset, the extra block is fresh and the rest loaded.
  deeper = _mcfg(text_file, **{"model.num_layers": 3})
  with pytest.raises(ConfigError, match=r"lacks .*block_2"):
    workdir.latest_params(runs[False], deeper)
  got = workdir.latest_params(runs[False], deeper, subset=True)
  assert got.fresh and all("block_2" in n for n in got.fresh) and not got.unused
  assert set(flat(got.params)) == set(flat(workdir.latest_params(runs[False]).params))
  with pytest.raises(ConfigError, match="no config.json"):
    workdir.latest_params(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(json.loads(open(os.path.join(runs[False], "config.json")).read())))
  with pytest.raises(ConfigError, match="no complete checkpoint"):
    workdir.latest_params(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ConfigError, match="config.json is unreadable"):
    workdir.read_config(str(tmp_path))


def test_every_command_reads_params_through_latest_params(text_file, runs, tmp_path, monkeypatch):
  """train (init_from), eval, few-shot, decode and convert all restore a workdir's params with the one loader."""
  calls = []
  real = workdir.latest_params

  def spy(path, *args, **kwargs):
    calls.append(os.path.basename(str(path)))
    return real(path, *args, **kwargs)
  monkeypatch.setattr(workdir, "latest_params", spy)
  src = runs[False]
  name = os.path.basename(src)

  train.train(tiny_config(text_file, **{"train.steps": 1, "train.init_from": src, "train.num_samples": 0}),
              str(tmp_path / "tuned"))
  assert calls == [name]
  from bigjax.eval import evaluate
  evaluate.evaluate(src, max_examples=8, write=False)
  assert calls[-1] == name and len(calls) == 2
  from bigjax.eval import fewshot
  fewshot.load_decoder(src)
  assert len(calls) == 3
  from bigjax import decode
  decode.main(workdir=src, hf=None, prompts=[], prompt_ids=["5,6,7"], tokenizer=None, max_new_tokens=2,
              temperature=0.0, top_k=0, top_p=1.0, num_beams=1, length_penalty=1.0, seed=0)
  assert len(calls) == 4
  from bigjax import convert
  convert.from_workdir(src)
  assert calls == [name] * 5


def test_atomic_writes_leave_no_partial_file(tmp_path, monkeypatch):
  target = tmp_path / "eval_results.json"
  workdir.write_json(target, {"a": 1})

  def fail(self, data):  # The disk fills half-way through the write: the old file must stand.
    with open(str(self), "wb") as f:
      f.write(data[:len(data) // 2])
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(type(workdir.path(str(tmp_path))), "write_bytes", fail)
  with pytest.raises(OSError):
    workdir.write_json(target, {"a": 2})
  monkeypatch.undo()
  assert json.loads(target.read_text()) == {"a": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["eval_results.json"]


def test_resuming_with_another_optimizer_is_refused(tmp_path, text_file):
  """The optimizer's state is in the checkpoints: optim.name is pinned (a config.json from before the setting
  existed had AdamW, its default)."""
  import json  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from bigjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from bigjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  def config(**kw):
    c = tiny_config(text_file, **{"optim.decay_steps": 6, **kw})  # The trainer pins the horizon first.
    config_lib.resolve(c)  # As the trainer has it when it checks.
    return c
  saved = json.loads(config().to_json_best_effort())
  workdir_lib.check_pinned(str(tmp_path), config(), saved)  # The same run: fine.
  with pytest.raises(ConfigError, match=r"holds a run with optim.name='adamw', but this config has "
                                        r"optim.name='adafactor'"):
    workdir_lib.check_pinned(str(tmp_path), config(**{"optim.name": "adafactor"}), saved)
  del saved["optim"]["name"]  # Older than the setting: it trained with AdamW.
  workdir_lib.check_pinned(str(tmp_path), config(), saved)
